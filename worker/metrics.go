package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/events"
)

type metrics struct {
	messages *prometheus.CounterVec
	retries  *prometheus.CounterVec
	poisoned *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	payments *prometheus.CounterVec
	// providerRefusing is 1 while the payment provider refuses every request.
	providerRefusing prometheus.Gauge
	inboxPruned      prometheus.Counter
	oldestPending    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_messages_total",
			Help: "Messages by event type and result: handled (including poisoned) or nacked (redelivered later).",
		}, []string{"type", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_retries_total", Help: "Retried attempts by event type.",
		}, []string{"type"}),
		poisoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_poisoned_total", Help: "Messages sent to the poison topic, by event type.",
		}, []string{"type"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "worker_handler_seconds", Help: "Duration of one attempt at a message, by event type.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"type"}),
		payments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_payments_total", Help: "Payment outcomes recorded: approved or declined.",
		}, []string{"outcome"}),
		inboxPruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "worker_inbox_pruned_total", Help: "Inbox entries (processed_messages) deleted past WORKER_INBOX_RETENTION.",
		}),
		oldestPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "worker_oldest_pending_seconds",
			Help: "Age of the oldest PENDING order (0 when none is pending), measured every 15s; orderctl orders stuck says why.",
		}),
		providerRefusing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "worker_payment_provider_refusing",
			Help: "1 while the payment provider refuses every request (401, 403, 404, 405, 407, 408): payments paused but for probes.",
		}),
	}
	// Every series exists from the start, at 0: dashboards show 0 rather than no data,
	// and rate() does not miss a series' first increment.
	for _, typ := range []string{events.TypeOrderCreated, events.TypePaymentSucceeded, events.TypePaymentFailed, "unknown"} {
		m.retries.WithLabelValues(typ)
		m.poisoned.WithLabelValues(typ)
		m.messages.WithLabelValues(typ, "handled")
		m.messages.WithLabelValues(typ, "nacked")
	}
	m.payments.WithLabelValues("approved")
	m.payments.WithLabelValues("declined")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.messages, m.retries, m.poisoned, m.latency, m.payments, m.providerRefusing, m.inboxPruned, m.oldestPending} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
