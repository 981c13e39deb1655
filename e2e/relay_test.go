package e2e

import (
	"context"
	"database/sql"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/outbox"
)

// commitBatch writes n events (orders 1..500 in turn, continuing from seq) in one
// transaction and returns their ids.
func commitBatch(db *sql.DB, prefix string, seq, n int) ([]string, error) {
	tx, err := db.Begin()
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	ob := outbox.New(prefix)
	var ids []string
	for i := 0; i < n; i++ {
		msg, err := events.NewMessage(events.OrderCreated{ID: int64((seq+i)%500 + 1), CustomerID: "C", AmountMinor: 1, Currency: "USD"}, time.Now())
		if err != nil {
			return nil, err
		}
		if err := ob.Publish(tx, events.TopicOrders, msg); err != nil {
			return nil, err
		}
		ids = append(ids, msg.UUID)
	}
	return ids, tx.Commit()
}

// TestRelayStopsWithinTenSeconds sends SIGTERM while the relay is busy resending to a
// broker that is down: it must exit cleanly within 10 s (an orchestrator's grace period).
func TestRelayStopsWithinTenSeconds(t *testing.T) {
	st := testenv.PrivateStack(t, "kafka")
	dbURL := testenv.DatabaseURL(t)
	db, err := postgres.Open(context.Background(), dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	admin := testenv.FreeAddr(t)
	d := startDaemon(t, "relay", []string{"DATABASE_URL=" + dbURL, "KAFKA_BROKERS=" + st.Brokers()[0],
		"ADMIN_ADDR=" + admin}, "http://"+admin+"/healthz")
	if _, err := commitBatch(db, "", 0, 100); err != nil {
		t.Fatal(err)
	}
	testenv.ConsumeFrom(t, st.Brokers(), events.TopicOrders, 30*time.Second,
		func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= 100 })
	st.Crash("kafka")
	if _, err := commitBatch(db, "", 100, 100); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the relay is now failing and backing off

	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("relay still running 10s after SIGTERM\n%s", d.output())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("relay exit code %d after SIGTERM, want 0\n%s", code, d.output())
	}
	t.Logf("relay exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
}
