package relay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/relay"
)

// TestBacklogGauges: with Kafka unreachable the active relay still counts what waits
// and how old the oldest row is.
func TestBacklogGauges(t *testing.T) {
	db := testenv.DB(t)
	commitEvents(t, db, testenv.TopicPrefix(t), 1, 2, 3)
	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{Brokers: []string{testenv.FreeAddr(t)}, Registerer: reg,
		PruneInterval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	testenv.Eventually(t, 10*time.Second, func() (bool, string) {
		rows, age := metric(t, reg, "relay_backlog_rows"), metric(t, reg, "relay_backlog_age_seconds")
		return rows == 3 && age > 0, fmt.Sprintf("relay_backlog_rows = %v, relay_backlog_age_seconds = %v; want 3 and > 0", rows, age)
	})
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		return metric(t, reg, "relay_publish_errors_total") > 0, "relay_publish_errors_total = 0 with Kafka unreachable, want > 0"
	})
}
