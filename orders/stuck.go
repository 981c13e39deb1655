package orders

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/orderpipe/orderpipe/events"
)

// OldestPending returns when the oldest PENDING order was created, or the zero time
// when none is pending. Ids grow with creation, so it reads one index entry.
func (s *Store) OldestPending(ctx context.Context) (time.Time, error) {
	var t time.Time
	err := s.db.QueryRowContext(ctx, `SELECT created_at FROM orders WHERE status = 'PENDING' ORDER BY id LIMIT 1`).Scan(&t)
	if err == sql.ErrNoRows {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("oldest pending order: %w", err)
	}
	return t.UTC(), nil
}

// StuckOrder is an order PENDING for longer than it should be, with what the database
// knows about its OrderCreated event.
type StuckOrder struct {
	Order
	// InOutbox reports that the event's outbox row is still there (rows are deleted once
	// forwarded and past the relay's retention); Forwarded, that the relay's position
	// (the lowest of all relay groups) is past it.
	InOutbox, Forwarded bool
	// OutboxPosition is the row's transaction id/offset, when InOutbox.
	OutboxPosition string
	// DeadLetter is why the relay set the event aside (outbox_dead_letters), if it did
	// and the row is still in the outbox.
	DeadLetter string
}

// Stuck returns up to limit orders PENDING since before cutoff, oldest first, each with
// where its OrderCreated event is as far as the database can tell. It reads the outbox
// once (no index serves the event's order id): an operator's query, not a hot path.
func (s *Store) Stuck(ctx context.Context, cutoff time.Time, limit int) ([]StuckOrder, error) {
	rows, err := s.db.QueryContext(ctx, `WITH stuck AS (
		SELECT `+orderColumns+` FROM orders WHERE status = 'PENDING' AND created_at < $1 ORDER BY id LIMIT $2
	), pos AS (
		SELECT last_processed_transaction_id AS tx, offset_acked AS off FROM watermill_offsets_outbox
		ORDER BY last_processed_transaction_id, offset_acked LIMIT 1
	)
	SELECT stuck.*, ob.transaction_id::text || '/' || ob."offset",
		COALESCE((SELECT (ob.transaction_id, ob."offset") <= (pos.tx, pos.off) FROM pos), false), d.reason
	FROM stuck
	LEFT JOIN watermill_outbox ob
		ON (ob.payload -> 'metadata' ->> $3) = stuck.id::text AND (ob.payload -> 'metadata' ->> $4) = $5
	LEFT JOIN outbox_dead_letters d ON (d.transaction_id, d."offset") = (ob.transaction_id, ob."offset")
	ORDER BY stuck.id`, cutoff, limit, events.MetaSubject, events.MetaType, events.TypeOrderCreated)
	if err != nil {
		return nil, fmt.Errorf("stuck orders: %w", err)
	}
	defer rows.Close()
	var out []StuckOrder
	for rows.Next() {
		var (
			o         StuckOrder
			key       sql.NullString
			pos, dead sql.NullString
		)
		if err := rows.Scan(&o.ID, &o.CustomerID, &o.Amount.Minor, &o.Amount.Currency, &o.Status,
			&o.Version, &o.CreatedAt, &o.UpdatedAt, &key, &pos, &o.Forwarded, &dead); err != nil {
			return nil, fmt.Errorf("stuck orders: %w", err)
		}
		o.CreatedAt, o.UpdatedAt = o.CreatedAt.UTC(), o.UpdatedAt.UTC()
		o.PaymentKey = paymentKey(o.ID, key)
		o.InOutbox, o.OutboxPosition, o.DeadLetter = pos.Valid, pos.String, dead.String
		out = append(out, o)
	}
	return out, rows.Err()
}

// paymentKey is the order's payment idempotency key (see Order.PaymentKey).
func paymentKey(id int64, key sql.NullString) string {
	k := "order-" + strconv.FormatInt(id, 10) // an order from before payment keys
	if key.Valid {
		k += "-" + key.String
	}
	return k
}
