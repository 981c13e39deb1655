package orders_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/orders"
)

// TestStuckOrders: an order PENDING since before the cutoff is listed with where its
// event is: still in the outbox and not forwarded, forwarded by every relay group, or
// set aside as a dead letter; recent and decided orders are not listed.
func TestStuckOrders(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	var os []orders.Order
	for range 5 {
		os = append(os, create(t, s))
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	// Orders 1-4 are an hour old; 5 is recent. Order 4 is paid.
	exec(`UPDATE orders SET created_at = now() - interval '1 hour' WHERE id <= 4`)
	exec(`UPDATE orders SET status = 'PAID' WHERE id = 4`)
	// Relay group "a" forwarded orders 1 and 2, group "b" only order 1: the lowest wins.
	pos := func(id int64) (string, int64) {
		var tx string
		var off int64
		if err := db.QueryRow(`SELECT transaction_id::text, "offset" FROM watermill_outbox
			WHERE payload -> 'metadata' ->> 'ce_subject' = $1`, strconv.FormatInt(id, 10)).Scan(&tx, &off); err != nil {
			t.Fatal(err)
		}
		return tx, off
	}
	tx2, off2 := pos(os[1].ID)
	tx1, off1 := pos(os[0].ID)
	exec(`INSERT INTO watermill_offsets_outbox (consumer_group, last_processed_transaction_id, offset_acked) VALUES ('a', $1::xid8, $2), ('b', $3::xid8, $4)`, tx2, off2, tx1, off1)
	tx3, off3 := pos(os[2].ID)
	exec(`INSERT INTO outbox_dead_letters (transaction_id, "offset", uuid, payload, reason) VALUES ($1::xid8, $2, 'u', '{}', 'kafka: message too large')`, tx3, off3)

	stuck, err := s.Stuck(ctx, time.Now().Add(-30*time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(stuck) != 3 {
		t.Fatalf("stuck = %+v, want orders 1, 2 and 3", stuck)
	}
	want := []struct {
		id                  int64
		inOutbox, forwarded bool
		dead                string
	}{{os[0].ID, true, true, ""}, {os[1].ID, true, false, ""}, {os[2].ID, true, false, "kafka: message too large"}}
	for i, w := range want {
		got := stuck[i]
		if got.ID != w.id || got.InOutbox != w.inOutbox || got.Forwarded != w.forwarded || got.DeadLetter != w.dead || got.OutboxPosition == "" {
			t.Errorf("stuck[%d] = id %d in outbox %v forwarded %v (%s) dead %q; want id %d %v %v %q",
				i, got.ID, got.InOutbox, got.Forwarded, got.OutboxPosition, got.DeadLetter, w.id, w.inOutbox, w.forwarded, w.dead)
		}
	}
	// Once pruned, the outbox knows nothing of order 1's event.
	exec(`DELETE FROM watermill_outbox WHERE payload -> 'metadata' ->> 'ce_subject' = $1`, strconv.FormatInt(os[0].ID, 10))
	stuck, err = s.Stuck(ctx, time.Now().Add(-30*time.Minute), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(stuck) != 1 || stuck[0].ID != os[0].ID || stuck[0].InOutbox || stuck[0].Forwarded {
		t.Errorf("after pruning: %+v, want order 1 not in the outbox", stuck)
	}

	oldest, err := s.OldestPending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if age := time.Since(oldest); age < 59*time.Minute || age > 61*time.Minute {
		t.Errorf("oldest pending order is %s old, want an hour", age)
	}
}
