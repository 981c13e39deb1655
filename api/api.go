// Package api is the HTTP API for orders: routes, JSON, idempotency and the mapping of
// application errors to HTTP statuses.
package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-chi/httprate"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/internal/admin"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/orders"
)

// Config tunes the API.
type Config struct {
	// IdempotencyTTL is how long an Idempotency-Key is remembered. Default 24h.
	IdempotencyTTL time.Duration
	// DBTimeout bounds each request's database work, so a dead database answers 503
	// instead of hanging the client. Default 4s.
	DBTimeout time.Duration
	// Cache, when set, serves GET /orders/{id} from Redis (cache-aside). Optional: the
	// API answers from Postgres when it is nil, down or slow.
	Cache *orders.Cache
	// RateLimit is how many requests per second one client IP may make; more are
	// answered 429 with Retry-After. 0 disables the limit.
	RateLimit int
	// TracerProvider starts a server span per request (named by route pattern) and a
	// span around the create transaction, whose context the OrderCreated event carries.
	// nil means tracing is off; a caller's traceparent is still passed on.
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	if c.IdempotencyTTL == 0 {
		c.IdempotencyTTL = 24 * time.Hour
	}
	if c.DBTimeout == 0 {
		c.DBTimeout = 4 * time.Second
	}
}

// Server serves the API.
type Server struct {
	store   *orders.Store
	db      *sql.DB
	logger  *slog.Logger
	cfg     Config
	metrics *metrics
	tracer  trace.Tracer
	checks  []admin.Check
}

// New returns the API's handler.
func New(store *orders.Store, db *sql.DB, logger *slog.Logger, cfg Config) http.Handler {
	cfg.setDefaults()
	s := &Server{store: store, db: db, logger: logger, cfg: cfg, metrics: newMetrics(db),
		tracer: tracing.Tracer(cfg.TracerProvider), checks: []admin.Check{admin.Postgres(db)}}
	if cfg.Cache != nil {
		// Optional: without Redis the API answers from Postgres.
		s.checks = append(s.checks, admin.Check{Name: "redis", Optional: true, Probe: cfg.Cache.Ping})
	}
	return s.routes()
}

func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	// GetHead routes HEAD to the GET handlers (RFC 9110 requires HEAD wherever GET is).
	// The span comes first, so that the access log line carries its trace_id.
	r.Use(middleware.RequestID, tracing.Middleware(s.cfg.TracerProvider, routePattern), s.correlate, s.accessLog,
		s.metrics.instrument, s.recoverer, middleware.GetHead)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, problem{Type: typeNotFound, Title: "Not found", Status: http.StatusNotFound,
			Detail: "no such resource"})
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		// chi does not pass the allowed methods to a custom handler: ask the router.
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
			if r.Match(chi.NewRouteContext(), m, req.URL.Path) ||
				(m == http.MethodHead && r.Match(chi.NewRouteContext(), http.MethodGet, req.URL.Path)) {
				allowed = append(allowed, m)
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeProblem(w, problem{Type: typeMethod, Title: "Method not allowed", Status: http.StatusMethodNotAllowed,
			Detail: "this resource allows " + strings.Join(allowed, ", ")})
	})
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	r.Get("/readyz", s.ready)
	r.Method(http.MethodGet, "/metrics", s.metrics.handler())
	r.Get("/openapi.yaml", serveOpenAPI)
	r.Group(func(r chi.Router) {
		if s.cfg.RateLimit > 0 {
			r.Use(httprate.Limit(s.cfg.RateLimit, time.Second,
				httprate.WithKeyFuncs(httprate.KeyByIP),
				httprate.WithLimitHandler(func(w http.ResponseWriter, r *http.Request) {
					writeProblem(w, problem{Type: typeRateLimited, Title: "Too many requests", Status: http.StatusTooManyRequests,
						Detail: "slow down and retry after the time in Retry-After"})
				})))
		}
		r.Post("/orders", s.createOrder)
		r.Get("/orders", s.listOrders)
		r.Get("/orders/{id}", s.getOrder)
	})
	return r
}

// orderJSON is an order on the wire. Amount is a decimal in major units, written from
// the stored minor units without passing through float64.
type orderJSON struct {
	ID         int64       `json:"id"`
	CustomerID string      `json:"customerId"`
	Amount     json.Number `json:"amount"`
	Currency   string      `json:"currency"`
	Status     string      `json:"status"`
	CreatedAt  time.Time   `json:"createdAt"`
	UpdatedAt  time.Time   `json:"updatedAt"`
}

func toJSON(o orders.Order) orderJSON {
	return orderJSON{
		ID: o.ID, CustomerID: o.CustomerID, Amount: json.Number(o.Amount.Decimal()),
		Currency: o.Amount.Currency, Status: string(o.Status), CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt,
	}
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

func (s *Server) getOrder(w http.ResponseWriter, r *http.Request) {
	raw := chi.URLParam(r, "id")
	id, err := strconv.ParseInt(raw, 10, 64)
	// One URL per order: no sign, no leading zeros.
	if err != nil || id <= 0 || raw != strconv.FormatInt(id, 10) {
		badRequest(w, "order id must be a positive integer")
		return
	}
	o, err := s.lookup(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	body, err := json.Marshal(toJSON(o))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

// lookup reads an order through the cache. Redis errors count as misses: the order is
// read from Postgres and the answer does not depend on Redis being up.
func (s *Server) lookup(ctx context.Context, id int64) (orders.Order, error) {
	if s.cfg.Cache != nil {
		o, err := s.cfg.Cache.Get(ctx, id)
		switch {
		case err == nil:
			s.metrics.cache.WithLabelValues("hit").Inc()
			return o, nil
		case errors.Is(err, orders.ErrCacheMiss):
			s.metrics.cache.WithLabelValues("miss").Inc()
		default:
			s.metrics.cache.WithLabelValues("error").Inc()
			s.logger.DebugContext(ctx, "cache unavailable", "err", err)
		}
	}
	dbCtx, cancel := context.WithTimeout(ctx, s.cfg.DBTimeout)
	defer cancel()
	o, err := s.store.Get(dbCtx, id)
	if err != nil {
		return orders.Order{}, err
	}
	if s.cfg.Cache != nil {
		if err := s.cfg.Cache.Put(ctx, o); err != nil {
			s.logger.DebugContext(ctx, "cache fill failed", "order_id", id, "err", err)
		}
	}
	return o, nil
}

// ready answers 200 while Postgres answers; Redis is optional (the API serves from
// Postgres without it) and only reported. The Readiness header lists both:
// "postgres=ok, redis=down".
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	rd := admin.Probe(r.Context(), s.checks)
	rd.Log(r.Context(), s.logger)
	w.Header().Set(admin.ReadinessHeader, rd.String())
	if !rd.Ready() {
		writeProblem(w, problem{Type: typeUnavailable, Title: "Service unavailable", Status: http.StatusServiceUnavailable,
			Detail: "database unreachable"})
		return
	}
	io.WriteString(w, "ready\n")
}

// fail maps an application error to its HTTP answer: the one table of error → status.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, orders.ErrNotFound):
		writeProblem(w, problem{Type: typeNotFound, Title: "Not found", Status: http.StatusNotFound,
			Detail: "no order has that id"})
	case errors.Is(err, orders.ErrKeyReused):
		writeProblem(w, problem{Type: typeKeyReused, Title: "Idempotency key reused", Status: http.StatusUnprocessableEntity,
			Detail: "this Idempotency-Key was already used with a different request body"})
	case postgres.IsUnavailable(err):
		s.logger.WarnContext(r.Context(), "database unavailable", "err", err, "request_id", middleware.GetReqID(r.Context()))
		w.Header().Set("Retry-After", "5")
		writeProblem(w, problem{Type: typeUnavailable, Title: "Service unavailable", Status: http.StatusServiceUnavailable,
			Detail: "the order database is unavailable; retry later with the same Idempotency-Key"})
	default:
		s.logger.ErrorContext(r.Context(), "request failed", "err", err, "request_id", middleware.GetReqID(r.Context()))
		writeProblem(w, problem{Type: typeInternal, Title: "Internal error", Status: http.StatusInternalServerError,
			Detail: "internal error"})
	}
}
