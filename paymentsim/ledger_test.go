package paymentsim

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLedgerSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	cfg := Config{LedgerPath: path}

	before := newServer(t, cfg)
	approved := post(t, before, "order-1", body(1, 1000))
	declined := post(t, before, "order-2", body(2, 1951))
	if approved.code != http.StatusCreated || declined.code != http.StatusPaymentRequired {
		t.Fatalf("POSTs = %d, %d; want 201, 402", approved.code, declined.code)
	}
	if err := before.Close(); err != nil {
		t.Fatal(err)
	}

	after := newServer(t, cfg)
	for _, tt := range []struct {
		key, body string
		want      answer
	}{
		{"order-1", body(1, 1000), approved},
		{"order-2", body(2, 1951), declined},
	} {
		got := post(t, after, tt.key, tt.body)
		tt.want.replayed = true
		if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(answer{})); diff != "" {
			t.Errorf("%s after a restart (-before +after):\n%s", tt.key, diff)
		}
	}
	if got := ledger(t, after, 1); len(got) != 1 || got[0] != approved.payment {
		t.Errorf("ledger of order 1 after a restart = %+v, want [%+v]", got, approved.payment)
	}
	if a := post(t, after, "order-3", body(3, 1000)); a.payment.ID == approved.payment.ID || a.payment.ID == declined.payment.ID {
		t.Errorf("new charge after a restart got id %s, already used", a.payment.ID)
	}
	if a := post(t, after, "order-1", body(1, 9999)); a.code != http.StatusUnprocessableEntity {
		t.Errorf("reused key after a restart = %d, want 422", a.code)
	}
}

const (
	line1 = `{"id":"pay_1","orderId":1,"amount":1000,"currency":"USD","status":"approved","idempotencyKey":"order-1","createdAt":"2025-01-01T00:00:00Z"}`
	line2 = `{"id":"pay_2","orderId":2,"amount":1951,"currency":"USD","status":"declined","reason":"insufficient_funds","idempotencyKey":"order-2","createdAt":"2025-01-01T00:00:01Z"}`
)

func TestLedgerFileRecovery(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string // keys loaded; nil with wantErr
		wantErr string
	}{
		{"empty", "", nil, ""},
		{"whole lines", line1 + "\n" + line2 + "\n", []string{"order-1", "order-2"}, ""},
		{"torn last line", line1 + "\n" + line2[:40], []string{"order-1"}, ""},
		{"torn last line with trailing blank lines", line1 + "\n" + line2[:40] + "\n\n", []string{"order-1"}, ""},
		{"last line missing its newline", line1 + "\n" + line2, []string{"order-1", "order-2"}, ""},
		{"blank lines", "\n" + line1 + "\n\n" + line2 + "\n", []string{"order-1", "order-2"}, ""},
		{"corrupt middle line", line1 + "\n" + line2[:40] + "\n" + line2 + "\n", nil, "line 2"},
		{"entry without a key in the middle", strings.Replace(line1, "order-1", "", 1) + "\n" + line2 + "\n", nil, "line 1"},
		{"key charged twice", line1 + "\n" + strings.Replace(line2, "order-2", "order-1", 1) + "\n", nil, "charged twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger.jsonl")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := Config{LedgerPath: path}
			if tt.wantErr != "" {
				s, err := New(cfg, discard())
				if err == nil {
					s.Close()
					t.Fatalf("New = nil error, want one mentioning %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("New = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			s := newServer(t, cfg)
			if diff := cmp.Diff(tt.want, keys(s)); diff != "" {
				t.Fatalf("loaded keys (-want +got):\n%s", diff)
			}
			// A charge after recovery lands on a line of its own: the file reloads whole.
			if a := post(t, s, "order-9", body(9, 1000)); a.code != http.StatusCreated {
				t.Fatalf("POST after recovery = %d, want 201", a.code)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			again := newServer(t, cfg)
			if diff := cmp.Diff(append(tt.want, "order-9"), keys(again)); diff != "" {
				t.Errorf("keys after a second restart (-want +got):\n%s", diff)
			}
		})
	}
}

func keys(s *Server) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, p := range s.ledger {
		out = append(out, p.IdempotencyKey)
	}
	return out
}
