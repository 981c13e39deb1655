package relay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/relay"
)

// TestPruneWaitsForEveryGroup runs one relay group with a retention of a millisecond
// while a second group's position lags behind it: rows the lagging group has not
// forwarded yet must survive the prune, however old, or that group loses them.
func TestPruneWaitsForEveryGroup(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	commitEvents(t, db, prefix, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	// Each row's position, in outbox order, read before anything is pruned.
	type pos struct {
		tx     string
		offset int64
	}
	var rows []pos
	rs, err := db.Query(`SELECT transaction_id::text, "offset" FROM watermill_outbox ORDER BY transaction_id, "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var p pos
		if err := rs.Scan(&p.tx, &p.offset); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, p)
	}
	if err := rs.Err(); err != nil || len(rows) != 10 {
		t.Fatalf("outbox: %d rows, %v; want 10", len(rows), err)
	}
	// lag puts the lagging group "b" just past the first n rows.
	lag := func(n int) {
		t.Helper()
		if _, err := db.Exec(`INSERT INTO watermill_offsets_outbox (consumer_group, offset_acked, last_processed_transaction_id)
			VALUES ('b', $1, $2::xid8) ON CONFLICT (consumer_group) DO UPDATE SET offset_acked = excluded.offset_acked,
			last_processed_transaction_id = excluded.last_processed_transaction_id`, rows[n-1].offset, rows[n-1].tx); err != nil {
			t.Fatal(err)
		}
	}
	lag(4)
	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{ConsumerGroup: "a", Registerer: reg, Retention: time.Millisecond,
		PruneInterval: 20 * time.Millisecond})
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		var behind int
		db.QueryRow(`SELECT count(*) FROM watermill_outbox o, watermill_offsets_outbox p WHERE p.consumer_group = 'a'
			AND (o.transaction_id, o."offset") > (p.last_processed_transaction_id, p.offset_acked)`).Scan(&behind)
		pruned := metric(t, reg, "relay_pruned_total")
		return behind == 0 && pruned >= 4, fmt.Sprintf("group a has %d rows to forward, pruned %v; want 0 and at least 4", behind, pruned)
	})
	// Group a is past every row. Group b moves to row 7: the prune after that is one
	// that ran with a at the end, and it may delete rows 5 to 7 but not 8 to 10.
	lag(7)
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		pruned := metric(t, reg, "relay_pruned_total")
		return pruned >= 7, fmt.Sprintf("relay_pruned_total = %v, want at least 7", pruned)
	})
	var left int
	if err := db.QueryRow(`SELECT count(*) FROM watermill_outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 3 {
		t.Errorf("%d rows left in the outbox, want 3: the rows group b has not forwarded", left)
	}
	if got := metric(t, reg, "relay_pruned_total"); got != 7 {
		t.Errorf("relay_pruned_total = %v, want 7", got)
	}
	if got := metric(t, reg, "relay_backlog_rows"); got != 0 {
		t.Errorf("relay_backlog_rows = %v for group a, which is at the end; want 0 (the gauge is per group)", got)
	}
}
