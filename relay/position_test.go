package relay_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/relay"
)

// TestPositionFromAnotherIDSpace simulates a logical dump and restore: the saved
// position is a transaction id far above any this cluster has assigned, and the rows
// written since are below it. The relay must not skip and prune them silently: it says
// the position is invalid, stops forwarding and pruning, and forwards every row once the
// operator re-anchors the position, without a restart.
func TestPositionFromAnotherIDSpace(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	want := commitEvents(t, db, prefix, 1, 2, 3)
	// A row of the old cluster's backlog, restored with its old (too high) id.
	want = append(want, commitEvents(t, db, prefix, 4)...)
	if _, err := db.Exec(`UPDATE watermill_outbox SET transaction_id = (pg_current_xact_id()::text::bigint + 2000000)::text::xid8
		WHERE "offset" = (SELECT max("offset") FROM watermill_outbox)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO watermill_offsets_outbox (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ('relay', 0, (pg_current_xact_id()::text::bigint + 1000000)::text::xid8)`); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{Registerer: reg, Retention: time.Millisecond, PruneInterval: 20 * time.Millisecond,
		StandbyInterval: 20 * time.Millisecond})

	// The backlog gauge is refreshed after each prune: seeing it at 4 means a prune ran.
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		var rows int
		db.QueryRow(`SELECT count(*) FROM watermill_outbox`).Scan(&rows)
		invalid, backlog := metric(t, reg, "relay_position_invalid"), metric(t, reg, "relay_backlog_rows")
		return invalid == 1 && backlog == 4, fmt.Sprintf("relay_position_invalid = %v, relay_backlog_rows = %v, %d rows in the outbox; want 1, 4, 4",
			invalid, backlog, rows)
	})
	var rows int
	if err := db.QueryRow(`SELECT count(*) FROM watermill_outbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if pruned := metric(t, reg, "relay_pruned_total"); rows != 4 || pruned != 0 {
		t.Fatalf("%d rows in the outbox, relay_pruned_total = %v; want 4 and 0: rows pruned that were never forwarded", rows, pruned)
	}

	dry, err := relay.Reanchor(context.Background(), db, "relay", relay.ReanchorOptions{DryRun: true})
	if err != nil {
		t.Fatalf("Reanchor dry run: %v", err)
	}
	if dry.Applied || dry.Rows != 4 || dry.Renumbered != 1 {
		t.Errorf("Reanchor dry run = %+v, want 4 rows, 1 renumbered, not applied", dry)
	}
	if metric(t, reg, "relay_forwarded_total") != 0 {
		t.Fatal("rows forwarded after a dry run")
	}
	res, err := relay.Reanchor(context.Background(), db, "relay", relay.ReanchorOptions{})
	if err != nil {
		t.Fatalf("Reanchor: %v", err)
	}
	if !res.Applied || res.Rows != 4 || res.Old != dry.Old || res.New == res.Old {
		t.Errorf("Reanchor = %+v, want 4 rows from %s to a new position", res, dry.Old)
	}
	t.Logf("re-anchored %+v", res)

	byKey, _ := ceIDsByKey(t, prefix+events.TopicOrders, len(want))
	for i, id := range want {
		key := fmt.Sprint(i + 1)
		if got := byKey[key]; len(got) != 1 || got[0] != id {
			t.Errorf("order %s: events on Kafka %v, want [%s]", key, got, id)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() (bool, string) {
		invalid := metric(t, reg, "relay_position_invalid")
		return invalid == 0, fmt.Sprintf("relay_position_invalid = %v after the re-anchor, want 0", invalid)
	})

	// Now sane: re-anchoring is refused unless forced.
	if _, err := relay.Reanchor(context.Background(), db, "relay", relay.ReanchorOptions{}); !errors.Is(err, relay.ErrPositionSane) {
		t.Errorf("Reanchor of a valid position = %v, want ErrPositionSane", err)
	}
	if _, err := relay.Reanchor(context.Background(), db, "nosuchgroup", relay.ReanchorOptions{Force: true}); err == nil {
		t.Error("Reanchor of a group without a position succeeded, want an error")
	}
}

// TestReanchorWhileForwarding forces a re-anchor of a valid position while the relay is
// active and idle at the end of the outbox: the relay must take the new position (and
// resend the outbox) rather than keep, or later save over, its own.
func TestReanchorWhileForwarding(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	want := commitEvents(t, db, prefix, 1, 2, 3, 4, 5)
	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{Registerer: reg, PruneInterval: 20 * time.Millisecond})
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		n := metric(t, reg, "relay_forwarded_total")
		return n == 5, fmt.Sprintf("relay_forwarded_total = %v, want 5", n)
	})
	// Counted once Kafka acknowledged, a moment before the position is saved: wait for
	// the save, or Reanchor finds no position yet.
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		var saved bool
		db.QueryRow(`SELECT EXISTS (SELECT 1 FROM watermill_offsets_outbox p, (SELECT transaction_id, "offset" FROM watermill_outbox
			ORDER BY transaction_id DESC, "offset" DESC LIMIT 1) l
			WHERE (p.last_processed_transaction_id, p.offset_acked) = (l.transaction_id, l."offset"))`).Scan(&saved)
		return saved, "the position is not saved at the last row yet"
	})
	res, err := relay.Reanchor(context.Background(), db, "relay", relay.ReanchorOptions{Force: true})
	if err != nil {
		t.Fatalf("Reanchor --force: %v", err)
	}
	if res.Rows != 5 {
		t.Errorf("Reanchor = %+v, want 5 rows to resend", res)
	}
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		n := metric(t, reg, "relay_forwarded_total")
		return n == 10, fmt.Sprintf("relay_forwarded_total = %v after the re-anchor, want 10: each row sent again", n)
	})
	msgs := testenv.Consume(t, prefix+events.TopicOrders, 30*time.Second,
		func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= 10 })
	count := map[string]int{}
	for _, m := range msgs {
		count[testenv.Header(m, events.MetaID)]++
	}
	for _, id := range want {
		if count[id] != 2 {
			t.Errorf("event %s on Kafka %d times, want 2", id, count[id])
		}
	}
	var pos string
	if err := db.QueryRow(`SELECT last_processed_transaction_id::text || '/' || offset_acked FROM watermill_offsets_outbox`).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	var last string
	db.QueryRow(`SELECT transaction_id::text || '/' || "offset" FROM watermill_outbox ORDER BY transaction_id DESC, "offset" DESC LIMIT 1`).Scan(&last)
	if pos != last {
		t.Errorf("saved position %s, want the last row %s", pos, last)
	}
}

// TestReanchorWithoutPosition: after a restore that brought the outbox's rows but not
// the offsets table, the relay starts at the beginning yet cannot read the rows with
// the old cluster's ids. Reanchor must then create the group's position; with no such
// rows it must not (a mistyped group would hold back pruning for ever).
func TestReanchorWithoutPosition(t *testing.T) {
	db := testenv.DB(t)
	ctx := context.Background()
	if _, err := relay.Reanchor(ctx, db, "relay", relay.ReanchorOptions{Force: true}); err == nil {
		t.Fatal("Reanchor of a group without a position, no foreign rows: succeeded, want an error")
	}
	var groups int
	db.QueryRow(`SELECT count(*) FROM watermill_offsets_outbox`).Scan(&groups)
	if groups != 0 {
		t.Fatalf("%d positions after a refused Reanchor, want 0", groups)
	}
	if _, err := db.Exec(`INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id)
		VALUES ('old', '{}', '{}', (pg_current_xact_id()::text::bigint + 1000000)::text::xid8)`); err != nil {
		t.Fatal(err)
	}
	res, err := relay.Reanchor(ctx, db, "relay", relay.ReanchorOptions{})
	if err != nil {
		t.Fatalf("Reanchor with a foreign row and no position: %v", err)
	}
	var pos string
	if err := db.QueryRow(`SELECT last_processed_transaction_id::text || '/' || offset_acked FROM watermill_offsets_outbox
		WHERE consumer_group = 'relay'`).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	if !res.Applied || res.Renumbered != 1 || res.Rows != 1 || pos != res.New || pos != "2/0" {
		t.Errorf("Reanchor = %+v, saved position %s; want 1 row renumbered and the position 2/0 just below it", res, pos)
	}
}

// TestReanchorOrdersIDsAsNumbers: the oldest row is found by transaction id as a number.
// Sorted as text, "10" came before "9", and once a cluster's ids passed a power of ten
// Reanchor anchored above the rows it had renumbered to id 2, which were never sent.
func TestReanchorOrdersIDsAsNumbers(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	commitEvents(t, db, prefix, 1, 2)
	if _, err := db.Exec(`UPDATE watermill_outbox SET transaction_id = CASE WHEN "offset" = (SELECT min("offset") FROM watermill_outbox)
		THEN '9'::xid8 ELSE '10'::xid8 END`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO watermill_offsets_outbox (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ('relay', 0, '10'::xid8)`); err != nil {
		t.Fatal(err)
	}
	var first int64
	if err := db.QueryRow(`SELECT min("offset") FROM watermill_outbox`).Scan(&first); err != nil {
		t.Fatal(err)
	}
	res, err := relay.Reanchor(context.Background(), db, "relay", relay.ReanchorOptions{Force: true, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("9/%d", first-1); res.New != want {
		t.Errorf("Reanchor anchors at %s, want %s: just below the row with id 9", res.New, want)
	}
}
