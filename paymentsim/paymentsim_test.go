package paymentsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newServer returns a simulator closed at the end of the test; a test may close it sooner.
func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			t.Error(err)
		}
	})
	return s
}

func body(orderID, amount int64) string {
	return fmt.Sprintf(`{"orderId":%d,"amount":%d,"currency":"USD"}`, orderID, amount)
}

// answer is one response to POST /payments.
type answer struct {
	code     int
	payment  Payment
	replayed bool
}

func post(t *testing.T, h http.Handler, key, body string) answer {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(body))
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	a := answer{code: rec.Code, replayed: rec.Header().Get("Idempotent-Replayed") == "true"}
	if rec.Code == http.StatusCreated || rec.Code == http.StatusPaymentRequired {
		if err := json.Unmarshal(rec.Body.Bytes(), &a.payment); err != nil {
			t.Fatalf("POST = %d with unreadable body %q", rec.Code, rec.Body)
		}
	}
	return a
}

func ledger(t *testing.T, h http.Handler, orderID int64) []Payment {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, fmt.Sprintf("/payments?orderId=%d", orderID), nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /payments = %d %s", rec.Code, rec.Body)
	}
	var out []Payment
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func statuses(ps []Payment) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Status+" "+p.Reason)
	}
	return out
}

func TestBehaviours(t *testing.T) {
	tests := []struct {
		name       string
		amount     int64
		codes      []int    // the answers to successive attempts with one key
		wantLedger []string // status and reason of the order's entries afterwards
	}{
		{"00 approves", 20000, []int{201, 201, 201}, []string{"approved "}},
		{"50 approves", 1950, []int{201, 201}, []string{"approved "}},
		{"unlisted suffix approves", 1999, []int{201, 201}, []string{"approved "}},
		{"51 insufficient funds", 1951, []int{402, 402}, []string{"declined insufficient_funds"}},
		{"52 card declined", 1952, []int{402, 402}, []string{"declined card_declined"}},
		{"61 is 500 every time", 1961, []int{500, 500, 500, 500}, nil},
		{"62 is 503 every time", 1962, []int{503, 503, 503, 503}, nil},
		{"63 is 503 twice then approves", 1963, []int{503, 503, 201, 201}, []string{"approved "}},
		{"71 is slow and approves", 1971, []int{201, 201}, []string{"approved "}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{SlowDelay: 20 * time.Millisecond}
			s := newServer(t, cfg)
			orderID := int64(i + 1)
			var first *Payment
			for n, want := range tt.codes {
				start := time.Now()
				a := post(t, s, "order-1", body(orderID, tt.amount))
				if a.code != want {
					t.Fatalf("attempt %d: POST = %d, want %d", n+1, a.code, want)
				}
				if BehaviourFor(tt.amount).Kind == KindSlow && time.Since(start) < cfg.SlowDelay {
					t.Errorf("attempt %d answered after %s, want at least SlowDelay %s", n+1, time.Since(start), cfg.SlowDelay)
				}
				if want >= 500 {
					continue
				}
				if first == nil {
					first = &a.payment
					if a.replayed {
						t.Errorf("attempt %d: first charge marked Idempotent-Replayed", n+1)
					}
					continue
				}
				if diff := cmp.Diff(*first, a.payment); diff != "" {
					t.Errorf("attempt %d: replay differs from the first answer (-first +replay):\n%s", n+1, diff)
				}
				if !a.replayed {
					t.Errorf("attempt %d: replay not marked Idempotent-Replayed", n+1)
				}
			}
			got := ledger(t, s, orderID)
			if diff := cmp.Diff(tt.wantLedger, statuses(got)); diff != "" {
				t.Errorf("ledger (-want +got):\n%s", diff)
			}
			if first != nil && len(got) == 1 {
				if diff := cmp.Diff(*first, got[0]); diff != "" {
					t.Errorf("ledger entry differs from the answer (-answer +ledger):\n%s", diff)
				}
			}
		})
	}
}

func TestSlowGivenUpChargesNothing(t *testing.T) {
	s := newServer(t, Config{SlowDelay: time.Hour})
	req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(body(1, 1971)))
	req.Header.Set("Idempotency-Key", "order-1")
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Millisecond)
	defer cancel()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req.WithContext(ctx))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("POST = %d, want 503 once the request is canceled", rec.Code)
	}
	if got := ledger(t, s, 1); len(got) != 0 {
		t.Errorf("ledger = %+v, want empty: 71 charges only when it answers", got)
	}
}

// serve runs s on a real HTTP server and counts the handlers still running, so a test can
// tell that one returned when its client went away.
func serve(t *testing.T, s *Server) (url string, running *atomic.Int64) {
	t.Helper()
	running = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		running.Add(1)
		defer running.Add(-1)
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, running
}

func postTo(client *http.Client, url, key, body string) (answer, error) {
	req, err := http.NewRequest(http.MethodPost, url+"/payments", strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Idempotency-Key", key)
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	if a.code == http.StatusCreated || a.code == http.StatusPaymentRequired {
		if err := json.Unmarshal(data, &a.payment); err != nil {
			return answer{}, fmt.Errorf("POST = %d with unreadable body %q", a.code, data)
		}
	}
	return a, nil
}

// eventually polls cond for up to 5s: for what a server does just after a client's
// timeout, with no event to wait on.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting until %s", what)
		}
	}
}

func TestTimeoutAfterCharge(t *testing.T) {
	// Long enough to tell a wait from none, short enough that a handler ignoring its
	// context fails the test instead of hanging it (httptest's Close waits for handlers).
	s := newServer(t, Config{TimeoutDelay: 20 * time.Second})
	url, running := serve(t, s)

	impatient := &http.Client{Timeout: 250 * time.Millisecond}
	_, err := postTo(impatient, url, "order-1", body(1, 1972))
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Fatalf("POST err = %v, want the client's timeout", err)
	}
	eventually(t, "the charge is in the ledger", func() bool { return len(ledger(t, s, 1)) == 1 })
	eventually(t, "the handler returns after its client went away", func() bool { return running.Load() == 0 })

	// The retry with the same key is answered at once (well within TimeoutDelay) with the
	// charge the first attempt made.
	a, err := postTo(&http.Client{Timeout: 5 * time.Second}, url, "order-1", body(1, 1972))
	if err != nil {
		t.Fatal(err)
	}
	got := ledger(t, s, 1)
	if a.code != http.StatusCreated || !a.replayed || len(got) != 1 || a.payment.ID != got[0].ID {
		t.Errorf("retry = %d %+v (replayed %t), ledger %+v: want the recorded charge, replayed", a.code, a.payment, a.replayed, got)
	}
}

func TestTimeoutAfterChargeAnswersAPatientClient(t *testing.T) {
	s := newServer(t, Config{TimeoutDelay: 30 * time.Millisecond})
	url, _ := serve(t, s)
	start := time.Now()
	a, err := postTo(&http.Client{Timeout: 10 * time.Second}, url, "order-1", body(1, 1972))
	if err != nil {
		t.Fatal(err)
	}
	if a.code != http.StatusCreated || a.payment.Status != StatusApproved || a.replayed {
		t.Errorf("POST = %d %+v (replayed %t), want 201 approved", a.code, a.payment, a.replayed)
	}
	if elapsed := time.Since(start); elapsed < 30*time.Millisecond {
		t.Errorf("answered after %s, want at least TimeoutDelay", elapsed)
	}
}

func TestResetThenApprove(t *testing.T) {
	tests := []struct {
		name      string
		keepAlive bool
	}{
		{"fresh connection", false},
		// What the worker meets: net/http retries a request with an Idempotency-Key by
		// itself when a reused connection fails before the answer starts, which must not
		// hide the reset.
		{"reused connection", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, Config{})
			url, _ := serve(t, s)
			transport := &http.Transport{DisableKeepAlives: !tt.keepAlive}
			t.Cleanup(transport.CloseIdleConnections)
			client := &http.Client{Timeout: 10 * time.Second, Transport: transport}
			if tt.keepAlive {
				resp, err := client.Get(url + "/healthz")
				if err != nil {
					t.Fatal(err)
				}
				io.ReadAll(resp.Body) // read to the end, or the connection is not reused
				resp.Body.Close()
			}

			if a, err := postTo(client, url, "order-1", body(1, 1973)); err == nil {
				t.Fatalf("first POST = %d, want a connection error", a.code)
			}
			if got := ledger(t, s, 1); len(got) != 0 {
				t.Fatalf("ledger after the reset = %+v, want empty", got)
			}
			first, err := postTo(client, url, "order-1", body(1, 1973))
			if err != nil || first.code != http.StatusCreated || first.replayed {
				t.Fatalf("second POST = %+v, %v; want 201, a new charge", first, err)
			}
			again, err := postTo(client, url, "order-1", body(1, 1973))
			if err != nil || again.code != http.StatusCreated || again.payment.ID != first.payment.ID {
				t.Fatalf("third POST = %+v, %v; want 201 replaying %s", again, err, first.payment.ID)
			}
			if got := ledger(t, s, 1); len(got) != 1 {
				t.Errorf("ledger = %+v, want one charge", got)
			}
		})
	}
}

func TestSameKeyChargesOnce(t *testing.T) {
	for _, amount := range []int64{20000, 1951, 1963, 1972} {
		t.Run(fmt.Sprint(amount), func(t *testing.T) {
			s := newServer(t, Config{TimeoutDelay: 10 * time.Millisecond})
			var wg sync.WaitGroup
			answers := make([]answer, 20)
			for i := range answers {
				wg.Go(func() { answers[i] = post(t, s, "order-1", body(1, amount)) })
			}
			wg.Wait()
			var ids []string
			for _, a := range answers {
				if a.code < 500 {
					ids = append(ids, a.payment.ID)
				}
			}
			got := ledger(t, s, 1)
			if len(got) != 1 {
				t.Fatalf("ledger = %+v, want one entry", got)
			}
			for _, id := range ids {
				if id != got[0].ID {
					t.Errorf("answers carry payments %v, want only %s", ids, got[0].ID)
					break
				}
			}
		})
	}
}

func TestRejects(t *testing.T) {
	s := newServer(t, Config{})
	post(t, s, "k", body(1, 100))
	tests := []struct {
		name, key, body string
		want            int
	}{
		{"no key", "", body(1, 100), 400},
		{"zero amount", "k2", body(1, 0), 400},
		{"no order", "k3", body(0, 100), 400},
		{"bad currency", "k4", `{"orderId":1,"amount":100,"currency":"US"}`, 400},
		{"unknown field", "k5", `{"orderId":1,"amount":1,"currency":"USD","x":1}`, 400},
		{"key reused for another amount", "k", body(1, 999), 422},
		{"key reused for another order", "k", body(2, 100), 422},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a := post(t, s, tt.key, tt.body); a.code != tt.want {
				t.Errorf("POST = %d, want %d", a.code, tt.want)
			}
		})
	}
	if got := ledger(t, s, 1); len(got) != 1 {
		t.Errorf("ledger has %d charges, want 1: rejected requests must not charge", len(got))
	}
	if got := ledger(t, s, 2); len(got) != 0 {
		t.Errorf("ledger for order 2 = %+v, want empty", got)
	}
}

func TestRoutes(t *testing.T) {
	s := newServer(t, Config{})
	tests := []struct {
		method, target string
		want           int
	}{
		{http.MethodGet, "/healthz", 200},
		{http.MethodGet, "/readyz", 200},
		{http.MethodGet, "/metrics", 200},
		{http.MethodGet, "/payments?orderId=1", 200},
		{http.MethodGet, "/payments", 400},
		{http.MethodGet, "/payments?orderId=x", 400},
		{http.MethodDelete, "/payments", 405},
		{http.MethodGet, "/nope", 404},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.target, nil))
			if rec.Code != tt.want {
				t.Errorf("%s %s = %d, want %d", tt.method, tt.target, rec.Code, tt.want)
			}
		})
	}
}

// TestRefuseWith: a simulator set to refuse answers every charge with that status and
// charges nothing, as a provider rejecting rotated credentials would.
func TestRefuseWith(t *testing.T) {
	s := newServer(t, Config{RefuseWith: http.StatusUnauthorized})
	if a := post(t, s, "k1", body(1, 2000)); a.code != http.StatusUnauthorized {
		t.Errorf("POST = %d, want 401", a.code)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/payments?orderId=1", nil))
	if got := strings.TrimSpace(rec.Body.String()); got != "[]" {
		t.Errorf("ledger = %s, want nothing charged", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"fail rate above 1", Config{FailRate: 1.5}, "FailRate"},
		{"negative decline rate", Config{DeclineRate: -0.1}, "DeclineRate"},
		{"negative latency", Config{Latency: -time.Millisecond}, "Latency"},
		{"negative jitter", Config{LatencyJitter: -time.Millisecond}, "LatencyJitter"},
		{"negative slow delay", Config{SlowDelay: -time.Millisecond}, "SlowDelay"},
		{"refusal that is not an error status", Config{RefuseWith: 200}, "RefuseWith"},
		{"ledger in a missing directory", Config{LedgerPath: t.TempDir() + "/missing/ledger.jsonl"}, "ledger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, discard())
			if err == nil {
				s.Close()
				t.Fatalf("New(%+v) = nil error, want one naming %s", tt.cfg, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%+v) = %v, want it to name %s", tt.cfg, err, tt.want)
			}
		})
	}
}
