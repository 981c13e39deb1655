package e2e

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"strings"
	"sync"
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

// TestRelayKilledAtRandom kills the relay process with SIGKILL at random moments while
// 10,000 events are committed, restarting it each time: every event reaches Kafka at
// least once, and each order's events keep their commit order (first occurrences).
func TestRelayKilledAtRandom(t *testing.T) {
	dbURL := testenv.DatabaseURL(t)
	prefix := testenv.TopicPrefix(t)
	db, err := postgres.Open(context.Background(), dbURL, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	const total, perTx = 10000, 20
	var (
		mu        sync.Mutex
		committed []string
	)
	writerDone := make(chan error, 1)
	go func() { // about 2,000 events a second for 5 seconds
		for seq := 0; seq < total; seq += perTx {
			ids, err := commitBatch(db, prefix, seq, perTx)
			if err != nil {
				writerDone <- err
				return
			}
			mu.Lock()
			committed = append(committed, ids...)
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
		writerDone <- nil
	}()

	env := []string{"DATABASE_URL=" + dbURL, "KAFKA_BROKERS=" + strings.Join(testenv.Brokers(), ","), "LOG_LEVEL=warn"}
	kills := 0
	var writerErr error
	for writing := true; writing; {
		admin := testenv.FreeAddr(t)
		d := startDaemon(t, "relay", append(env, "ADMIN_ADDR="+admin), "http://"+admin+"/healthz")
		select {
		case writerErr = <-writerDone:
			writing = false
		case <-time.After(time.Duration(200+rand.IntN(800)) * time.Millisecond):
		}
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
		kills++
	}
	if writerErr != nil {
		t.Fatal(writerErr)
	}
	admin := testenv.FreeAddr(t)
	startDaemon(t, "relay", append(env, "ADMIN_ADDR="+admin), "http://"+admin+"/healthz")

	want := map[string]bool{}
	for _, id := range committed {
		want[id] = true
	}
	seen := map[string]int{}
	missing, read := len(want), 0
	msgs := testenv.Consume(t, prefix+events.TopicOrders, 120*time.Second, func(ms []*sarama.ConsumerMessage) bool {
		for ; read < len(ms); read++ {
			id := testenv.Header(ms[read], events.MetaID)
			if seen[id]++; seen[id] == 1 && want[id] {
				missing--
			}
		}
		return missing == 0
	})
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("events %d, relay killed %d times, duplicates %d", len(committed), kills, dups)
	if missing > 0 {
		t.Fatalf("%d of %d events never reached Kafka", missing, len(want))
	}
	if kills < 3 {
		t.Errorf("relay killed only %d times; the test did not exercise crashes", kills)
	}

	// Per order, first occurrences on Kafka must follow commit order.
	rank := map[string]int{}
	for i, id := range committed {
		rank[id] = i
	}
	last := map[string]int{}
	first := map[string]bool{}
	for _, m := range msgs {
		id := testenv.Header(m, events.MetaID)
		if first[id] {
			continue
		}
		first[id] = true
		key := string(m.Key)
		if r, ok := last[key]; ok && rank[id] < r {
			t.Fatalf("order %s: event %s (commit #%d) arrived after commit #%d", key, id, rank[id], r)
		}
		last[key] = rank[id]
	}
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
