package relay_test

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/relay"
	"github.com/orderpipe/orderpipe/schema"
)

// writer commits one outbox event per transaction at about rate per second, for orders
// 1..50 in turn, until stopped, and records the ids of the events whose commit
// succeeded. Failed commits (the database is down) are retried later with new events.
type writer struct {
	stop      chan struct{}
	done      chan struct{}
	mu        sync.Mutex
	committed []string
	failed    int
}

func startWriter(t *testing.T, db *sql.DB, prefix string, rate int) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := int64(0); ; i++ {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			id, err := w.commitOne(db, prefix, i%50+1)
			w.mu.Lock()
			if err != nil {
				w.failed++
			} else {
				w.committed = append(w.committed, id)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.finish)
	return w
}

func (w *writer) commitOne(db *sql.DB, prefix string, order int64) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	id := publishOrErr(tx, prefix, order)
	if id == "" {
		return "", context.Canceled
	}
	return id, tx.Commit()
}

// finish stops the writer and returns the committed event ids.
func (w *writer) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *writer) ids() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.committed...)
}

// expectAll consumes topic from brokers until every id is there and reports the
// duplicates; it fails the test with the missing count otherwise.
func expectAll(t *testing.T, brokers []string, topic string, ids []string) (dups int) {
	t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	seen, read := map[string]int{}, 0
	missing := len(want)
	testenv.ConsumeFrom(t, brokers, topic, 90*time.Second, func(ms []*sarama.ConsumerMessage) bool {
		for ; read < len(ms); read++ {
			id := testenv.Header(ms[read], events.MetaID)
			seen[id]++
			if want[id] && seen[id] == 1 {
				missing--
			}
		}
		return missing == 0
	})
	if missing > 0 {
		t.Fatalf("%d of %d committed events never reached Kafka", missing, len(want))
	}
	for _, n := range seen {
		dups += n - 1
	}
	return dups
}

// TestRelaySurvivesKafkaOutage stops the broker (SIGTERM) and later kills it (kill -9)
// while events keep being committed: the relay backs off, loses nothing and drains the
// backlog when the broker is back.
func TestRelaySurvivesKafkaOutage(t *testing.T) {
	st := testenv.PrivateStack(t, "kafka")
	db := testenv.DB(t)
	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{Brokers: st.Brokers(), Registerer: reg, MaxBackoff: time.Second})
	w := startWriter(t, db, "", 200)

	down := testenv.FaultDuration()
	time.Sleep(time.Second)
	st.Stop("kafka")
	time.Sleep(down)
	st.Start("kafka")
	time.Sleep(time.Second)
	st.Crash("kafka")
	time.Sleep(down)
	st.Start("kafka")
	time.Sleep(time.Second)
	w.finish()

	ids := w.ids()
	back := time.Now()
	dups := expectAll(t, st.Brokers(), events.TopicOrders, ids)
	t.Logf("events committed %d, broker down 2 x %s, duplicates %d, drained %s after the broker returned, publish errors %v",
		len(ids), down, dups, time.Since(back).Round(time.Millisecond), metric(t, reg, "relay_publish_errors_total"))
	if metric(t, reg, "relay_publish_errors_total") == 0 {
		t.Error("relay_publish_errors_total = 0: the outage was not noticed, so the test proved nothing")
	}
}

// TestRelaySurvivesPostgresRestart crashes Postgres (pg_ctl stop -m immediate) under
// load: every committed event reaches Kafka after it comes back.
func TestRelaySurvivesPostgresRestart(t *testing.T) {
	st := testenv.PrivateStack(t, "postgres")
	ctx := context.Background()
	db, err := postgres.Open(ctx, st.DatabaseURL(), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := schema.Migrate(ctx, db, nil); err != nil {
		t.Fatal(err)
	}
	prefix := testenv.TopicPrefix(t)
	startRelay(t, db, relay.Config{MaxBackoff: time.Second})
	w := startWriter(t, db, prefix, 200)

	time.Sleep(time.Second)
	st.Crash("postgres")
	time.Sleep(testenv.FaultDuration())
	st.Start("postgres")
	time.Sleep(2 * time.Second)
	w.finish()

	ids := w.ids()
	dups := expectAll(t, testenv.Brokers(), prefix+events.TopicOrders, ids)
	t.Logf("events committed %d, failed while down %d, duplicates %d", len(ids), w.failed, dups)
	if w.failed == 0 {
		t.Error("no commit failed: Postgres was not down, so the test proved nothing")
	}
}
