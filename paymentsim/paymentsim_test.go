package paymentsim

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func post(t *testing.T, h http.Handler, key, body string) (int, Payment) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(body))
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var p Payment
	json.Unmarshal(rec.Body.Bytes(), &p)
	return rec.Code, p
}

func ledger(t *testing.T, h http.Handler, orderID string) []Payment {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/payments?orderId="+orderID, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /payments = %d %s", rec.Code, rec.Body)
	}
	var out []Payment
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func newSim() *Server { return New(slog.New(slog.NewTextHandler(io.Discard, nil))) }

func TestSameKeyChargesOnce(t *testing.T) {
	s := newSim()
	body := `{"orderId":1,"amount":20000,"currency":"USD"}`
	var wg sync.WaitGroup
	ids := make([]string, 20)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, p := post(t, s, "order-1", body)
			if code != http.StatusCreated || p.Status != StatusApproved {
				t.Errorf("POST = %d %+v, want 201 approved", code, p)
			}
			ids[i] = p.ID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("payment ids differ across retries of one key: %v", ids)
		}
	}
	if got := ledger(t, s, "1"); len(got) != 1 || got[0].IdempotencyKey != "order-1" || got[0].Amount != 20000 {
		t.Errorf("ledger = %+v, want one charge of 20000 with key order-1", got)
	}
	if got := ledger(t, s, "2"); len(got) != 0 {
		t.Errorf("ledger for another order = %+v, want empty", got)
	}
}

func TestRejects(t *testing.T) {
	s := newSim()
	post(t, s, "k", `{"orderId":1,"amount":100,"currency":"USD"}`)
	tests := []struct {
		name, key, body string
		want            int
	}{
		{"no key", "", `{"orderId":1,"amount":100,"currency":"USD"}`, 400},
		{"zero amount", "k2", `{"orderId":1,"amount":0,"currency":"USD"}`, 400},
		{"unknown field", "k3", `{"orderId":1,"amount":1,"currency":"USD","x":1}`, 400},
		{"key reused for another request", "k", `{"orderId":1,"amount":999,"currency":"USD"}`, 422},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, _ := post(t, s, tt.key, tt.body); code != tt.want {
				t.Errorf("POST = %d, want %d", code, tt.want)
			}
		})
	}
	if got := ledger(t, s, "1"); len(got) != 1 {
		t.Errorf("ledger has %d charges, want 1: rejected requests must not charge", len(got))
	}
}
