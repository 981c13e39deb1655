// Package paymentsim is a fake payment provider: POST /payments charges an order once per
// Idempotency-Key, and GET /payments?orderId=N lists the ledger so tests can count
// charges. It approves by default.
package paymentsim

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
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

// Server is the simulator. Its ledger lives in memory.
type Server struct {
	logger *slog.Logger

	mu     sync.Mutex
	byKey  map[string]*Payment
	ledger []*Payment
	nextID int64
}

// New returns a simulator.
func New(logger *slog.Logger) *Server {
	return &Server{logger: logger, byKey: map[string]*Payment{}}
}

// ServeHTTP routes the simulator's endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz":
		fmt.Fprintln(w, "ok")
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

func (s *Server) charge(w http.ResponseWriter, r *http.Request) {
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

	s.mu.Lock()
	p, seen := s.byKey[key]
	if !seen {
		s.nextID++
		p = &Payment{
			ID: "pay_" + strconv.FormatInt(s.nextID, 10), OrderID: req.OrderID, Amount: req.Amount,
			Currency: req.Currency, Status: StatusApproved, IdempotencyKey: key, CreatedAt: time.Now().UTC(),
		}
		s.byKey[key] = p
		s.ledger = append(s.ledger, p)
	}
	out := *p
	s.mu.Unlock()

	if seen && (out.OrderID != req.OrderID || out.Amount != req.Amount || out.Currency != req.Currency) {
		http.Error(w, "Idempotency-Key reused with a different request", http.StatusUnprocessableEntity)
		return
	}
	s.logger.Info("payment", "order_id", out.OrderID, "payment_id", out.ID, "status", out.Status, "replayed", seen)
	code := http.StatusCreated
	if out.Status == StatusDeclined {
		code = http.StatusPaymentRequired
	}
	writeJSON(w, code, out)
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
