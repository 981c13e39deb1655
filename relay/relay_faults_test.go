package relay_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/relay"
)

// publish writes one event for order id into the outbox within tx and returns its id.
func publish(t *testing.T, tx *sql.Tx, prefix string, id int64) string {
	t.Helper()
	ce := publishOrErr(tx, prefix, id)
	if ce == "" {
		t.Fatal("outbox publish failed")
	}
	return ce
}

// publishOrErr is publish for goroutines: it returns "" on failure.
func publishOrErr(tx *sql.Tx, prefix string, id int64) string {
	msg, err := events.NewMessage(events.OrderCreated{ID: id, CustomerID: "C", AmountMinor: 1, Currency: "USD"}, time.Now())
	if err != nil {
		return ""
	}
	if err := outbox.New(prefix).Publish(tx, events.TopicOrders, msg); err != nil {
		return ""
	}
	return msg.UUID
}

// commitEvents writes one transaction per event, for the given order ids, and returns
// the event ids in commit order.
func commitEvents(t *testing.T, db *sql.DB, prefix string, ids ...int64) []string {
	t.Helper()
	var out []string
	for _, id := range ids {
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, publish(t, tx, prefix, id))
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// startRelay runs a relay until the test ends (or stop is called).
func startRelay(t *testing.T, db *sql.DB, cfg relay.Config) (stop func()) {
	t.Helper()
	if cfg.Brokers == nil {
		cfg.Brokers = testenv.Brokers()
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	// The relay's log is kept and printed, with where it stands in the outbox, if the
	// test fails: a row that never reached Kafka must be traceable to what the relay saw.
	var logBuf testenv.Buffer
	r, err := relay.New(db, cfg, slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		var rows, dead int
		var pos string
		db.QueryRow(`SELECT count(*) FROM watermill_outbox`).Scan(&rows)
		db.QueryRow(`SELECT count(*) FROM outbox_dead_letters`).Scan(&dead)
		db.QueryRow(`SELECT string_agg(consumer_group || ' at ' || last_processed_transaction_id::text || '/' || offset_acked, ', ')
			FROM watermill_offsets_outbox`).Scan(&pos)
		t.Logf("outbox: %d rows, %d dead letters, positions: %s; relay log:\n%s", rows, dead, pos, logBuf.String())
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay Run = %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// ceIDs consumes the orders topic until n distinct event ids were seen and returns the
// ids in Kafka order, per key, first occurrences only.
func ceIDsByKey(t *testing.T, topic string, n int) (map[string][]string, int) {
	t.Helper()
	distinct, read := map[string]bool{}, 0
	msgs := testenv.Consume(t, topic, 60*time.Second, func(ms []*sarama.ConsumerMessage) bool {
		for ; read < len(ms); read++ {
			distinct[testenv.Header(ms[read], events.MetaID)] = true
		}
		return len(distinct) >= n
	})
	seen := map[string]bool{}
	byKey := map[string][]string{}
	for _, m := range msgs {
		id := testenv.Header(m, events.MetaID)
		if seen[id] {
			continue
		}
		seen[id] = true
		byKey[string(m.Key)] = append(byKey[string(m.Key)], id)
	}
	return byKey, len(msgs) - len(seen)
}

// TestNoGapWhenCommitsOutOfOrder holds a transaction with an earlier outbox row open
// while later rows commit. A relay that polled "offset > last forwarded" would pass the
// open row by and never deliver it.
func TestNoGapWhenCommitsOutOfOrder(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	startRelay(t, db, relay.Config{})

	slow, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	early := publish(t, slow, prefix, 1) // takes the lower offset and transaction id
	later := commitEvents(t, db, prefix, 2, 3)
	time.Sleep(300 * time.Millisecond) // long enough for a naive relay to forward 2 and 3
	if err := slow.Commit(); err != nil {
		t.Fatal(err)
	}
	byKey, _ := ceIDsByKey(t, prefix+events.TopicOrders, 3)
	for key, id := range map[string]string{"1": early, "2": later[0], "3": later[1]} {
		if got := byKey[key]; len(got) != 1 || got[0] != id {
			t.Errorf("order %s: events on Kafka %v, want [%s]", key, got, id)
		}
	}
}

// TestPerOrderOrder commits three events for each of 100 orders, interleaved across
// orders, and checks that each order's events are on Kafka in commit order.
func TestPerOrderOrder(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	var ids []int64
	for round := 0; round < 3; round++ {
		for id := int64(1); id <= 100; id++ {
			ids = append(ids, id)
		}
	}
	want := map[string][]string{}
	for i, ce := range commitEvents(t, db, prefix, ids...) {
		key := strconv.FormatInt(ids[i], 10)
		want[key] = append(want[key], ce)
	}
	startRelay(t, db, relay.Config{BatchSize: 37}) // batches cut across orders
	got, _ := ceIDsByKey(t, prefix+events.TopicOrders, len(ids))
	for key, w := range want {
		if fmt.Sprint(got[key]) != fmt.Sprint(w) {
			t.Errorf("order %s: Kafka order %v, want commit order %v", key, got[key], w)
		}
	}
}

// TestTransactionIDsCrossingADigit gives outbox rows transaction ids on both sides of
// powers of ten, as a cluster's ids are when they pass 1,000 or 10,000,000. Compared as
// text ("10" < "9"), a batch would start at the wrong row and the position would move
// past rows never sent: the relay once lost every row below the boundary this way.
func TestTransactionIDsCrossingADigit(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	txIDs := []string{"8", "9", "10", "11", "98", "99", "100", "101"} // all below any cluster's running ids
	ids := make([]int64, len(txIDs))
	for i := range ids {
		ids[i] = 1 // one order: its events share a partition, so Kafka's order is observable
	}
	want := commitEvents(t, db, prefix, ids...)
	if _, err := db.Exec(`WITH r AS (SELECT "offset", row_number() OVER (ORDER BY "offset") AS n FROM watermill_outbox)
		UPDATE watermill_outbox o SET transaction_id = ($1::text[])[r.n]::xid8 FROM r WHERE o."offset" = r."offset"`,
		"{"+strings.Join(txIDs, ",")+"}"); err != nil {
		t.Fatal(err)
	}
	startRelay(t, db, relay.Config{BatchSize: 2})
	got, _ := ceIDsByKey(t, prefix+events.TopicOrders, len(want))
	if fmt.Sprint(got["1"]) != fmt.Sprint(want) {
		t.Errorf("Kafka order %v, want transaction order %v", got["1"], want)
	}
}

// TestDeadLetterDoesNotBlock puts rows whose envelope cannot be decoded between good
// ones: the good ones are forwarded, the bad ones set aside and counted.
func TestDeadLetterDoesNotBlock(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	commitEvents(t, db, prefix, 1)
	for _, payload := range []string{`{"no":"envelope"}`, `[1,2]`} {
		if _, err := db.Exec(`INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id)
			VALUES ('bad', $1, '{}', pg_current_xact_id())`, payload); err != nil {
			t.Fatal(err)
		}
	}
	commitEvents(t, db, prefix, 2)
	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{Registerer: reg})

	got, _ := ceIDsByKey(t, prefix+events.TopicOrders, 2)
	if len(got["1"]) != 1 || len(got["2"]) != 1 {
		t.Fatalf("forwarded %v, want one event for each of orders 1 and 2", got)
	}
	testenv.Eventually(t, 10*time.Second, func() (bool, string) {
		var n int
		db.QueryRow(`SELECT count(*) FROM outbox_dead_letters`).Scan(&n)
		return n == 2, fmt.Sprintf("%d dead letters, want 2", n)
	})
	if n := metric(t, reg, "relay_dead_letters_total"); n != 2 {
		t.Errorf("relay_dead_letters_total = %v, want 2", n)
	}
}

// TestStandbyTakesOver runs two relays on one outbox: one forwards, the other waits;
// stopping the active one mid-stream hands over without loss or reordering.
func TestStandbyTakesOver(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	stopA := startRelay(t, db, relay.Config{Registerer: regA, BatchSize: 50})
	testenv.Eventually(t, 10*time.Second, func() (bool, string) {
		return metric(t, regA, "relay_leader") == 1, "relay A is not active"
	})
	startRelay(t, db, relay.Config{Registerer: regB, BatchSize: 50, StandbyInterval: 50 * time.Millisecond})

	var ids []int64
	for round := 0; round < 4; round++ {
		for id := int64(1); id <= 50; id++ {
			ids = append(ids, id)
		}
	}
	want := map[string][]string{}
	for i, ce := range commitEvents(t, db, prefix, ids[:100]...) {
		want[strconv.FormatInt(ids[i], 10)] = append(want[strconv.FormatInt(ids[i], 10)], ce)
	}
	if got := metric(t, regB, "relay_leader"); got != 0 {
		t.Fatalf("standby relay_leader = %v while A is active, want 0", got)
	}
	stopA()
	for i, ce := range commitEvents(t, db, prefix, ids[100:]...) {
		key := strconv.FormatInt(ids[100+i], 10)
		want[key] = append(want[key], ce)
	}
	got, dups := ceIDsByKey(t, prefix+events.TopicOrders, len(ids))
	for key, w := range want {
		if fmt.Sprint(got[key]) != fmt.Sprint(w) {
			t.Errorf("order %s: Kafka order %v, want %v", key, got[key], w)
		}
	}
	if metric(t, regB, "relay_leader") != 1 {
		t.Error("relay B did not become active")
	}
	t.Logf("duplicates after hand-over: %d", dups)
}

// TestPruneKeepsOutboxBounded deletes forwarded rows past the retention, and only those.
func TestPruneKeepsOutboxBounded(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	var ids []int64
	for id := int64(1); id <= 300; id++ {
		ids = append(ids, id)
	}
	commitEvents(t, db, prefix, ids...)
	startRelay(t, db, relay.Config{Retention: time.Millisecond, PruneInterval: 50 * time.Millisecond})
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		var n int
		db.QueryRow(`SELECT count(*) FROM watermill_outbox`).Scan(&n)
		return n == 0, fmt.Sprintf("%d rows left in the outbox", n)
	})
	got, _ := ceIDsByKey(t, prefix+events.TopicOrders, len(ids))
	if len(got) != len(ids) {
		t.Errorf("%d orders on Kafka, want %d: a row was pruned before it was forwarded", len(got), len(ids))
	}
}

// metric sums the values of the counter or gauge called name.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
