// Package paymentsim is a fake payment provider, an http.Handler for tests, load tests and
// local runs.
//
// POST /payments with an Idempotency-Key header and the body {orderId, amount, currency}
// (amount in minor units) charges an order once per key: the first request decides the
// result, 201 with an approved Payment or 402 with a declined one and its reason, and
// records it in the ledger; every later request with that key gets the same answer back
// (marked Idempotent-Replayed: true) and never a second charge. Reusing a key with a
// different body is 422. GET /payments?orderId=N lists an order's ledger entries,
// declines included, so tests can count charges. GET /healthz and GET /readyz answer ok
// (the simulator has no dependencies); GET /metrics serves Prometheus metrics (payments
// by behaviour and result, request latency, Go runtime). Requests are traced (W3C
// traceparent) when Config.TracerProvider is set.
//
// # Test amounts
//
// Like a provider's test card numbers, the last two digits of the amount in minor units
// (amount % 100: 19.51 USD is 1951, so 51) choose a deterministic behaviour:
//
//	amount%100  kind                      answer
//	00-50       approve                   201 approved; the random behaviours apply
//	51          insufficient_funds        402 declined, reason insufficient_funds
//	52          card_declined             402 declined, reason card_declined
//	61          error                     500 on every attempt
//	62          unavailable               503 on every attempt
//	63          unavailable_then_approve  503 on a key's first 2 attempts, then 201 approved
//	71          slow                      201 approved after Config.SlowDelay (default 2s), replays too
//	72          timeout_after_charge      charges, answers 201 after Config.TimeoutDelay (default 10s); replays at once
//	73          reset_then_approve        connection reset on a key's first attempt, then 201 approved
//
// Suffixes the table does not list approve like 00-50. The table is also exported as
// Behaviours. Declines are recorded and replayed like approvals; 5xx answers and resets
// record nothing, so a later attempt can still charge. 71 charges only when it answers,
// so a client that gives up first leaves no charge; 72 is the opposite case, a charge the
// client never heard of (its TimeoutDelay should exceed the client's timeout). 63 and 73
// count attempts per key in memory only: after a restart they start again from the first
// attempt (unless the key already has a charge). 73 resets after sending a status line,
// because Go's net/http would retry a reset before any answer by itself (see hangUp).
//
// # Random behaviours
//
// For load and fault tests, Config.FailRate answers 503, recording nothing, to that share
// of the requests that would otherwise be approved (new charges and replays of approvals
// alike); Config.DeclineRate declines that share of new charges with card_declined, once
// per key, replayed like any decline. Both apply only to amounts that select approve.
// Config.Latency plus a uniform 0..Config.LatencyJitter delays every POST, whatever its
// amount. All draw from one generator seeded with Config.Seed, so the same seed and the
// same sequence of requests give the same outcomes.
//
// # Persistence
//
// With Config.LedgerPath set, every ledger entry is appended to that file as a JSON line
// before the answer is sent, and the file is read back at start, so idempotency and the
// ledger survive restarts. There is no fsync: a killed simulator keeps what it wrote, a
// crashed machine may not. A torn last line is dropped with a warning; a bad line before
// it fails New.
package paymentsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/internal/tracing"
)

// Status of a payment.
const (
	StatusApproved = "approved"
	StatusDeclined = "declined"
)

// Request is the body of POST /payments. Amount is in minor units.
type Request struct {
	OrderID  int64  `json:"orderId"`
	Amount   int64  `json:"amount"`
	Currency string `json:"currency"`
}

// Payment is one ledger entry.
type Payment struct {
	ID             string    `json:"id"`
	OrderID        int64     `json:"orderId"`
	Amount         int64     `json:"amount"`
	Currency       string    `json:"currency"`
	Status         string    `json:"status"`
	Reason         string    `json:"reason,omitempty"`
	IdempotencyKey string    `json:"idempotencyKey"`
	CreatedAt      time.Time `json:"createdAt"`
}

// Config configures a Server. The zero value is an in-memory simulator with no random
// behaviours.
type Config struct {
	// LedgerPath is the append-only JSON-lines file the ledger is kept in and reloaded
	// from at start. Empty keeps the ledger in memory only.
	LedgerPath string
	// SlowDelay is how long amounts ending in 71 wait before each answer. Default 2s.
	SlowDelay time.Duration
	// TimeoutDelay is how long amounts ending in 72 wait after charging before the first
	// answer. Keep it above the client's timeout. Default 10s (the worker's is 5s).
	TimeoutDelay time.Duration
	// FailRate is the probability, 0 to 1, of answering 503 to a request that would
	// otherwise be approved.
	FailRate float64
	// DeclineRate is the probability, 0 to 1, that a new charge is declined with
	// card_declined.
	DeclineRate float64
	// Latency is added to every POST.
	Latency time.Duration
	// LatencyJitter adds a further uniform 0..LatencyJitter to every POST.
	LatencyJitter time.Duration
	// RefuseWith, when not 0, is the status (400 to 599) every POST /payments is
	// answered with before anything else is looked at: a provider rejecting the
	// caller's credentials (401) or a wrong URL (404), for fault tests.
	RefuseWith int
	// Seed seeds the random behaviours. 0 picks one from the clock (New logs it).
	Seed int64
	// TracerProvider starts a server span per request, continuing the caller's
	// traceparent; nil means tracing is off.
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	if c.SlowDelay == 0 {
		c.SlowDelay = 2 * time.Second
	}
	if c.TimeoutDelay == 0 {
		c.TimeoutDelay = 10 * time.Second
	}
	if c.Seed == 0 {
		c.Seed = time.Now().UnixNano()
	}
}

// Validate reports every field out of range.
func (c Config) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		rate float64
	}{{"FailRate", c.FailRate}, {"DeclineRate", c.DeclineRate}} {
		if !(f.rate >= 0 && f.rate <= 1) {
			errs = append(errs, fmt.Errorf("%s = %g: want a probability from 0 to 1", f.name, f.rate))
		}
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"SlowDelay", c.SlowDelay}, {"TimeoutDelay", c.TimeoutDelay}, {"Latency", c.Latency}, {"LatencyJitter", c.LatencyJitter}} {
		if f.d < 0 {
			errs = append(errs, fmt.Errorf("%s = %s: want a duration >= 0", f.name, f.d))
		}
	}
	if c.RefuseWith != 0 && (c.RefuseWith < 400 || c.RefuseWith > 599) {
		errs = append(errs, fmt.Errorf("RefuseWith = %d: want 0 or an error status from 400 to 599", c.RefuseWith))
	}
	return errors.Join(errs...)
}

// Server is the simulator.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	file    *ledgerFile // nil when the ledger lives in memory only
	metrics *metrics
	handler http.Handler

	randMu sync.Mutex
	rand   *rand.Rand

	mu       sync.Mutex
	byKey    map[string]*Payment
	ledger   []*Payment
	attempts map[string]int // POSTs per key since start, for 63 and 73
	nextID   int64
}

// New returns a simulator, loading the ledger file if cfg names one. Close releases it.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("paymentsim config: %w", err)
	}
	s := &Server{
		cfg:      cfg,
		logger:   logger,
		rand:     rand.New(rand.NewPCG(uint64(cfg.Seed), 0)),
		byKey:    map[string]*Payment{},
		attempts: map[string]int{},
		metrics:  newMetrics(),
	}
	s.handler = tracing.Middleware(cfg.TracerProvider, route)(s.metrics.instrument(http.HandlerFunc(s.serve)))
	if cfg.LedgerPath != "" {
		file, payments, err := openLedger(cfg.LedgerPath, logger)
		if err != nil {
			return nil, err
		}
		for _, p := range payments {
			if _, dup := s.byKey[p.IdempotencyKey]; dup {
				file.close()
				return nil, fmt.Errorf("ledger %s: idempotency key %q charged twice", cfg.LedgerPath, p.IdempotencyKey)
			}
			s.add(p)
		}
		s.file = file
	}
	logger.Info("payment simulator ready", "ledger", cfg.LedgerPath, "payments", len(s.ledger),
		"slow_delay", cfg.SlowDelay, "timeout_delay", cfg.TimeoutDelay, "fail_rate", cfg.FailRate,
		"decline_rate", cfg.DeclineRate, "latency", cfg.Latency, "latency_jitter", cfg.LatencyJitter, "seed", cfg.Seed)
	return s, nil
}

// Close closes the ledger file, if any.
func (s *Server) Close() error {
	if s.file == nil {
		return nil
	}
	return s.file.close()
}

// add indexes p; the caller holds mu or owns s.
func (s *Server) add(p Payment) {
	s.byKey[p.IdempotencyKey] = &p
	s.ledger = append(s.ledger, &p)
	if n, err := strconv.ParseInt(strings.TrimPrefix(p.ID, "pay_"), 10, 64); err == nil && n > s.nextID {
		s.nextID = n
	}
}

// ServeHTTP serves the simulator's endpoints, traced and measured.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// routes are the simulator's paths; any other is "unmatched" in metrics and spans.
var routes = map[string]bool{"/payments": true, "/healthz": true, "/readyz": true, "/metrics": true}

func route(r *http.Request) string {
	if routes[r.URL.Path] {
		return r.URL.Path
	}
	return "unmatched"
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz" || r.URL.Path == "/readyz":
		fmt.Fprintln(w, "ok")
	case r.URL.Path == "/metrics" && r.Method == http.MethodGet:
		s.metrics.handler().ServeHTTP(w, r)
	case r.URL.Path == "/payments" && r.Method == http.MethodPost:
		s.charge(w, r)
	case r.URL.Path == "/payments" && r.Method == http.MethodGet:
		s.list(w, r)
	case r.URL.Path == "/payments":
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	default:
		http.NotFound(w, r)
	}
}

// outcome is what decide chose for one POST.
type outcome struct {
	code     int
	payment  Payment       // for 201 and 402
	replayed bool          // payment was recorded by an earlier request
	failure  string        // body of an answer that is neither 201 nor 402
	reset    bool          // hang up instead of answering
	delay    time.Duration // wait after charging, before answering
}

func (s *Server) charge(w http.ResponseWriter, r *http.Request) {
	if s.cfg.RefuseWith != 0 {
		http.Error(w, "refused: the simulator answers every request with "+strconv.Itoa(s.cfg.RefuseWith), s.cfg.RefuseWith)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		http.Error(w, "Idempotency-Key header is required", http.StatusBadRequest)
		return
	}
	var req Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || req.OrderID <= 0 || req.Amount <= 0 || len(req.Currency) != 3 {
		http.Error(w, "body must be {orderId, amount (minor units, > 0), currency}", http.StatusBadRequest)
		return
	}

	ctx := r.Context()
	// The caller's correlation id, if it sent one, ties these lines to its own.
	log := s.logger.With("order_id", req.OrderID, "correlation_id", r.Header.Get("X-Correlation-ID"))
	b := BehaviourFor(req.Amount)
	count := func(result string) { s.metrics.payments.WithLabelValues(string(b.Kind), result).Inc() }
	wait := s.cfg.Latency + s.jitter()
	if b.Kind == KindSlow {
		wait += s.cfg.SlowDelay
	}
	if !sleep(r, wait) {
		count(resultCanceled)
		canceled(w)
		return
	}
	o, err := s.decide(key, req, b.Kind)
	if err != nil {
		count(resultFailed)
		log.ErrorContext(ctx, "record payment", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	switch {
	case o.reset:
		count(resultReset)
		log.InfoContext(ctx, "simulated connection reset")
		hangUp(w)
		return
	case o.failure != "":
		if o.code < 500 {
			count(resultRejected)
		} else {
			count(resultFailed)
		}
		log.InfoContext(ctx, "payment not processed", "status", o.code, "reason", o.failure)
		http.Error(w, o.failure, o.code)
		return
	}
	if !sleep(r, o.delay) {
		// The charge stands; the client never hears of it, which is the point of 72.
		count(resultCanceled)
		log.InfoContext(ctx, "payment answer not sent", "payment_id", o.payment.ID)
		canceled(w)
		return
	}
	switch {
	case o.replayed:
		count(resultReplayed)
	default:
		count(o.payment.Status)
	}
	log.InfoContext(ctx, "payment", "payment_id", o.payment.ID, "status", o.payment.Status, "replayed", o.replayed)
	if o.replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	writeJSON(w, o.code, o.payment)
}

// decide picks the answer to one POST and records a new charge before returning it.
func (s *Server) decide(key string, req Request, kind Kind) (outcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts[key]++
	attempt := s.attempts[key]

	if p, seen := s.byKey[key]; seen {
		if p.OrderID != req.OrderID || p.Amount != req.Amount || p.Currency != req.Currency {
			return outcome{code: http.StatusUnprocessableEntity, failure: "Idempotency-Key reused with a different request"}, nil
		}
		if kind == KindApprove && p.Status == StatusApproved && s.chance(s.cfg.FailRate) {
			return unavailable("simulated random failure"), nil
		}
		return outcome{code: codeFor(p.Status), payment: *p, replayed: true}, nil
	}

	switch kind {
	case KindError:
		return outcome{code: http.StatusInternalServerError, failure: "simulated internal error (amount ending in 61)"}, nil
	case KindUnavailable:
		return unavailable("simulated outage (amount ending in 62)"), nil
	case KindUnavailableThenApprove:
		if attempt <= 2 {
			return unavailable("simulated outage (amount ending in 63, attempt " + strconv.Itoa(attempt) + " of the key)"), nil
		}
	case KindResetThenApprove:
		if attempt == 1 {
			return outcome{reset: true}, nil
		}
	case KindInsufficientFunds:
		return s.record(key, req, StatusDeclined, "insufficient_funds")
	case KindCardDeclined:
		return s.record(key, req, StatusDeclined, "card_declined")
	case KindApprove:
		// Decline first, so FailRate is the share of would-be approvals that fail.
		if s.chance(s.cfg.DeclineRate) {
			return s.record(key, req, StatusDeclined, "card_declined")
		}
		if s.chance(s.cfg.FailRate) {
			return unavailable("simulated random failure"), nil
		}
	}
	o, err := s.record(key, req, StatusApproved, "")
	if kind == KindTimeoutAfterCharge {
		o.delay = s.cfg.TimeoutDelay
	}
	return o, err
}

// record charges (or declines) key: the ledger file first, then memory. The caller holds mu.
func (s *Server) record(key string, req Request, status, reason string) (outcome, error) {
	p := Payment{
		ID: "pay_" + strconv.FormatInt(s.nextID+1, 10), OrderID: req.OrderID, Amount: req.Amount, Currency: req.Currency,
		Status: status, Reason: reason, IdempotencyKey: key, CreatedAt: time.Now().UTC(),
	}
	if s.file != nil {
		if err := s.file.append(p); err != nil {
			return outcome{}, fmt.Errorf("append to ledger: %w", err)
		}
	}
	s.add(p)
	return outcome{code: codeFor(status), payment: p}, nil
}

func unavailable(msg string) outcome {
	return outcome{code: http.StatusServiceUnavailable, failure: msg}
}

func codeFor(status string) int {
	if status == StatusDeclined {
		return http.StatusPaymentRequired
	}
	return http.StatusCreated
}

// chance reports true with probability p.
func (s *Server) chance(p float64) bool {
	if p <= 0 {
		return false
	}
	s.randMu.Lock()
	defer s.randMu.Unlock()
	return s.rand.Float64() < p
}

// jitter draws the random part of the latency.
func (s *Server) jitter() time.Duration {
	if s.cfg.LatencyJitter <= 0 {
		return 0
	}
	s.randMu.Lock()
	defer s.randMu.Unlock()
	return time.Duration(s.rand.Int64N(int64(s.cfg.LatencyJitter) + 1))
}

// sleep waits d, or less if the request's context ends first (the client went away or
// the server is shutting down); it reports whether it waited the whole d.
func sleep(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// canceled answers a request whose wait was cut short. A client that went away never
// reads it; one still there (the server is shutting down) retries.
func canceled(w http.ResponseWriter) {
	http.Error(w, "request canceled", http.StatusServiceUnavailable)
}

// hangUp breaks the connection in the middle of an answer: it sends a status line, then
// closes with SO_LINGER 0, so the close sends a TCP RST. The status line matters: Go's
// net/http silently retries a request with an Idempotency-Key that fails on a reused
// connection before any byte of the answer arrives, so a bare reset would usually never
// reach the worker; after the first byte it does not retry, and the client gets an error
// (net/http says "transport connection broken: unexpected EOF").
func hangUp(w http.ResponseWriter) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 or a ResponseRecorder: aborting the handler is the nearest thing.
		panic(http.ErrAbortHandler)
	}
	buf.WriteString("HTTP/1.1 200 OK\r\n")
	buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	orderID, err := strconv.ParseInt(r.URL.Query().Get("orderId"), 10, 64)
	if err != nil || orderID <= 0 {
		http.Error(w, "orderId must be a positive integer", http.StatusBadRequest)
		return
	}
	out := []Payment{}
	s.mu.Lock()
	for _, p := range s.ledger {
		if p.OrderID == orderID {
			out = append(out, *p)
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
