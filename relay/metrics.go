package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	forwarded     *prometheus.CounterVec
	publishErrors prometheus.Counter
	deadLetters   prometheus.Counter
	pruned        prometheus.Counter
	backlog       prometheus.Gauge
	backlogAge    prometheus.Gauge
	leader        prometheus.Gauge
	// positionInvalid is 1 while the saved position is from another transaction-id
	// space (see checkPosition).
	positionInvalid prometheus.Gauge
	lag             prometheus.Histogram
	batch           prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_forwarded_total", Help: "Outbox rows acknowledged by Kafka, by topic.",
		}, []string{"topic"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_publish_errors_total", Help: "Batches in which Kafka did not acknowledge a record for a reason that may pass (those records are sent again).",
		}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_dead_letters_total", Help: "Outbox rows set aside because their envelope does not decode or Kafka rejects their record for good.",
		}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_pruned_total", Help: "Forwarded outbox rows deleted after the retention.",
		}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_backlog_rows", Help: "Outbox rows not yet forwarded (refreshed every prune interval).",
		}),
		backlogAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_backlog_age_seconds",
			Help: "Age of the oldest outbox row not yet forwarded, 0 when there is none (refreshed every prune interval).",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_leader", Help: "1 while this relay is the active one.",
		}),
		positionInvalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_position_invalid",
			Help: "1 while the active relay's saved position or outbox rows have transaction ids this cluster has not assigned " +
				"(a logical restore or migration): forwarding and pruning are stopped until orderctl relay reanchor.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "relay_lag_seconds",
			Help:    "Time from an outbox row's insert to Kafka's acknowledgement.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "relay_batch_rows", Help: "Records per batch sent to Kafka.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7),
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.forwarded, m.publishErrors, m.deadLetters, m.pruned,
			m.backlog, m.backlogAge, m.leader, m.positionInvalid, m.lag, m.batch} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// acked counts a record Kafka acknowledged at t.
func (m *metrics) acked(o outgoing, t time.Time) {
	m.lag.Observe(t.Sub(o.row.createdAt).Seconds())
	m.forwarded.WithLabelValues(o.msg.Topic).Inc()
}
