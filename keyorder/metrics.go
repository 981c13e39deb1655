package keyorder

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the subscriber's Prometheus series, per topic and partition where they
// describe one partition; a partition's series are deleted when it is let go.
type metrics struct {
	inHandler *prometheus.GaugeVec     // records with the handler
	window    *prometheus.GaugeVec     // admitted, not yet committed
	behind    *prometheus.GaugeVec     // finished, waiting for an older record to finish
	paused    *prometheus.GaugeVec     // 1 while the partition does not read
	pauses    *prometheus.CounterVec   // times a partition stopped reading
	bytes     prometheus.GaugeFunc     // bytes held across partitions
	release   *prometheus.HistogramVec // revocation → partition let go
}

func newMetrics(reg prometheus.Registerer, b *budget) (*metrics, error) {
	labels := []string{"topic", "partition"}
	m := &metrics{
		inHandler: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyorder_in_flight_messages",
			Help: "Messages handed to the handler and not yet acked, per partition.",
		}, labels),
		window: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyorder_window_messages",
			Help: "Messages read and not yet committed, per partition (bounded by the window size).",
		}, labels),
		behind: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyorder_commit_lag_messages",
			Help: "Messages finished but not committable yet because an older one of the partition is unfinished.",
		}, labels),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keyorder_partition_paused",
			Help: "1 while the partition does not read: its window is full or the byte budget is spent.",
		}, labels),
		pauses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyorder_partition_pauses_total",
			Help: "Times a partition stopped reading because its window was full or the byte budget spent.",
		}, []string{"topic", "reason"}),
		bytes: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "keyorder_buffered_bytes",
			Help: "Bytes of the messages read and not yet finished, across all partitions.",
		}, func() float64 { return float64(b.inUse()) }),
		release: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyorder_partition_release_seconds",
			Help:    "Time from a partition's revocation (or shutdown) until it was let go, its handlers cancelled and finished.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"topic"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.inHandler, m.window, m.behind, m.paused, m.pauses, m.bytes, m.release} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Reasons a partition pauses, the reason label of keyorder_partition_pauses_total.
const (
	pauseWindowFull = "window_full"
	pauseBytes      = "bytes"
)

// partitionGauges are one partition's gauges.
type partitionGauges struct {
	inHandler, window, behind, paused prometheus.Gauge
	delete                            func()
}

func (m *metrics) partition(topic string, partition int32) partitionGauges {
	// The topic's counters exist from the first claim, at 0, so that dashboards and
	// rate() see them before the first pause or release.
	m.pauses.WithLabelValues(topic, pauseWindowFull)
	m.pauses.WithLabelValues(topic, pauseBytes)
	m.release.WithLabelValues(topic)
	l := prometheus.Labels{"topic": topic, "partition": strconv.Itoa(int(partition))}
	return partitionGauges{
		inHandler: m.inHandler.With(l), window: m.window.With(l), behind: m.behind.With(l), paused: m.paused.With(l),
		delete: func() {
			m.inHandler.Delete(l)
			m.window.Delete(l)
			m.behind.Delete(l)
			m.paused.Delete(l)
		},
	}
}
