package api

import (
	"database/sql"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the API's Prometheus metrics, in a registry of their own.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.HistogramVec
	cache    *prometheus.CounterVec
	created  prometheus.Counter
}

func newMetrics(db *sql.DB) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "HTTP requests by route pattern, method and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "method", "code"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "order_cache_lookups_total",
			Help: "Order cache lookups by result: hit, miss or error (Redis down or slow).",
		}, []string{"result"}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "orders_created_total",
			Help: "Orders created (PENDING); idempotent replays are not counted.",
		}),
	}
	for _, result := range []string{"hit", "miss", "error"} {
		m.cache.WithLabelValues(result) // at 0 from the start, so rate() sees the first lookup
	}
	m.registry.MustRegister(m.requests, m.cache, m.created,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewDBStatsCollector(db, "orderdb"))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// instrument observes each request under its route pattern (not its path, which would
// make one series per order id).
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		m.requests.WithLabelValues(routePattern(r), r.Method, strconv.Itoa(ww.Status())).Observe(time.Since(start).Seconds())
	})
}

// routePattern is the chi route the request matched, or "unmatched"; known once the
// router has run.
func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		return rc.RoutePattern()
	}
	return "unmatched"
}
