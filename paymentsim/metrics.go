package paymentsim

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Results of POST /payments, the result label of paymentsim_payments_total.
const (
	resultApproved = StatusApproved // a new charge, 201
	resultDeclined = StatusDeclined // a new decline, 402
	resultReplayed = "replayed"     // an earlier answer repeated for its key
	resultFailed   = "failed"       // 5xx, nothing recorded
	resultRejected = "rejected"     // 4xx: the key reused with another body
	resultReset    = "reset"        // the connection was broken on purpose
	resultCanceled = "canceled"     // the client or the server gave up while it waited
)

// metrics are the simulator's Prometheus metrics, in a registry of their own.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.HistogramVec
	payments *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "HTTP requests by route, method and status code.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method", "code"}),
		payments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "paymentsim_payments_total",
			Help: "POST /payments by the behaviour the amount selects and the result: approved, declined, replayed, failed, rejected, reset or canceled.",
		}, []string{"behaviour", "result"}),
	}
	m.registry.MustRegister(m.requests, m.payments,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// instrument observes each request under its route. A hijacked connection (a simulated
// reset) is observed with code 0.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor) // keeps Hijack for hangUp
		next.ServeHTTP(ww, r)
		m.requests.WithLabelValues(route(r), r.Method, strconv.Itoa(ww.Status())).Observe(time.Since(start).Seconds())
	})
}
