package paymentsim

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// outcomes posts n new charges of amount (one key and order each) in sequence and returns
// their status codes.
func outcomes(t *testing.T, s *Server, n int, amount int64) []int {
	t.Helper()
	codes := make([]int, n)
	for i := range codes {
		codes[i] = post(t, s, fmt.Sprintf("order-%d", i+1), body(int64(i+1), amount)).code
	}
	return codes
}

func TestRandomBehavioursAreReproducible(t *testing.T) {
	cfg := Config{FailRate: 0.3, DeclineRate: 0.3, LatencyJitter: time.Microsecond, Seed: 42}
	first := outcomes(t, newServer(t, cfg), 300, 20000)
	if diff := cmp.Diff(first, outcomes(t, newServer(t, cfg), 300, 20000)); diff != "" {
		t.Errorf("same seed, different outcomes (-first +second):\n%s", diff)
	}
	cfg.Seed = 43
	if cmp.Equal(first, outcomes(t, newServer(t, cfg), 300, 20000)) {
		t.Errorf("seeds 42 and 43 gave the same 300 outcomes: the seed is not used")
	}
}

func TestRandomRates(t *testing.T) {
	const n = 2000
	tests := []struct {
		name       string
		cfg        Config
		code       int    // the answer whose share is measured
		wantLedger string // what such an answer leaves in the ledger: "" for nothing
	}{
		{"fail rate", Config{FailRate: 0.3, Seed: 1}, http.StatusServiceUnavailable, ""},
		{"decline rate", Config{DeclineRate: 0.3, Seed: 1}, http.StatusPaymentRequired, "declined card_declined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, tt.cfg)
			codes := outcomes(t, s, n, 20000)
			hits := 0
			for i, code := range codes {
				want := []string{"approved "}
				switch code {
				case tt.code:
					hits++
					want = nil
					if tt.wantLedger != "" {
						want = []string{tt.wantLedger}
					}
				case http.StatusCreated:
				default:
					t.Fatalf("request %d = %d, want %d or 201", i+1, code, tt.code)
				}
				if diff := cmp.Diff(want, statuses(ledger(t, s, int64(i+1)))); diff != "" {
					t.Fatalf("ledger of order %d after %d (-want +got):\n%s", i+1, code, diff)
				}
			}
			if share := float64(hits) / n; share < 0.2 || share > 0.4 {
				t.Errorf("%d of %d requests got %d (%.2f), want about 0.3", hits, n, tt.code, share)
			}
		})
	}
}

func TestRandomDeclineIsDecidedOnce(t *testing.T) {
	s := newServer(t, Config{DeclineRate: 1})
	first := post(t, s, "order-1", body(1, 20000))
	if first.code != http.StatusPaymentRequired || first.payment.Reason != "card_declined" {
		t.Fatalf("POST = %d %+v, want 402 card_declined", first.code, first.payment)
	}
	s.cfg.DeclineRate = 0 // even if the odds change, the key keeps its answer
	if again := post(t, s, "order-1", body(1, 20000)); again.code != http.StatusPaymentRequired || again.payment.ID != first.payment.ID {
		t.Errorf("retry = %d %+v, want the same decline %s", again.code, again.payment, first.payment.ID)
	}
}

func TestRandomFailureHitsReplaysButChargesOnce(t *testing.T) {
	s := newServer(t, Config{FailRate: 0.5, Seed: 7})
	codes := map[int]int{}
	for range 100 {
		codes[post(t, s, "order-1", body(1, 20000)).code]++
	}
	if codes[http.StatusServiceUnavailable] == 0 || codes[http.StatusCreated] == 0 || len(codes) != 2 {
		t.Errorf("answers = %v, want a mix of 503 and 201 only", codes)
	}
	if got := ledger(t, s, 1); len(got) != 1 {
		t.Errorf("ledger = %+v, want one charge", got)
	}
}

func TestDeterministicAmountsIgnoreRandomBehaviours(t *testing.T) {
	s := newServer(t, Config{FailRate: 1, DeclineRate: 1, SlowDelay: time.Millisecond})
	tests := []struct {
		amount int64
		codes  []int
		reason string
	}{
		{1951, []int{402, 402}, "insufficient_funds"},
		{1963, []int{503, 503, 201, 201}, ""},
		{1971, []int{201, 201}, ""},
		{20000, []int{402}, "card_declined"}, // for contrast: approve is where the rates apply
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(tt.amount), func(t *testing.T) {
			for n, want := range tt.codes {
				a := post(t, s, fmt.Sprintf("order-%d", i+1), body(int64(i+1), tt.amount))
				if a.code != want || (want < 500 && a.payment.Reason != tt.reason) {
					t.Errorf("attempt %d = %d %q, want %d %q", n+1, a.code, a.payment.Reason, want, tt.reason)
				}
			}
		})
	}
}

func TestLatency(t *testing.T) {
	s := newServer(t, Config{Latency: 20 * time.Millisecond, LatencyJitter: 10 * time.Millisecond})
	start := time.Now()
	if a := post(t, s, "order-1", body(1, 20000)); a.code != http.StatusCreated {
		t.Fatalf("POST = %d, want 201", a.code)
	}
	if elapsed := time.Since(start); elapsed < 20*time.Millisecond {
		t.Errorf("answered after %s, want at least Latency 20ms", elapsed)
	}
}
