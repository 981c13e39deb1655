package orders

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/orderpipe/orderpipe/events"
)

// Outcome is what the payment provider decided for an order.
type Outcome struct {
	PaymentID string
	Approved  bool
	Reason    string // why it was declined
}

// RecordOutcome is the worker's transaction: it records that handler processed the
// message for order id (the inbox, keyed by both: a message id reused for another order
// is not a redelivery), moves the order from PENDING to PAID or PAYMENT_FAILED, and
// writes PaymentSucceeded or PaymentFailed to the outbox, all or nothing. It returns the
// changed order, or recorded=false and changes nothing when the message had been
// processed before (a redelivery); ErrNotPending when the order already has a final
// status, ErrNotFound when there is no such order.
//
// It is the worker's hot path, so like Create it is pipelined: BEGIN with the inbox
// entry and the status change in one statement, then the outbox row and COMMIT: two
// round trips instead of five. (The outcome event needs the row the update returns.)
func (s *Store) RecordOutcome(ctx context.Context, handler, messageID string, id int64, out Outcome) (o Order, recorded bool, err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return Order{}, false, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	err = conn.Raw(func(driverConn any) error {
		pc := driverConn.(*stdlib.Conn).Conn()
		o, recorded, err = s.recordOutcome(ctx, pc, handler, messageID, id, out)
		if pc.PgConn().TxStatus() != 'I' {
			pc.Exec(context.WithoutCancel(ctx), "ROLLBACK") // never leave the transaction open
		}
		return err
	})
	return o, recorded, err
}

// recordOutcomeSQL inserts the inbox entry and, only if it was new, moves the order
// forward from PENDING: a late or repeated outcome can never roll a final status back.
const recordOutcomeSQL = `WITH inbox AS (
	INSERT INTO processed_messages (handler, order_id, message_id) VALUES ($3, $1, $4) ON CONFLICT DO NOTHING RETURNING 1
)
UPDATE orders SET status = $2, version = version + 1, updated_at = now()
WHERE id = $1 AND status = 'PENDING' AND EXISTS (SELECT 1 FROM inbox)
RETURNING ` + orderColumns

func (s *Store) recordOutcome(ctx context.Context, pc *pgx.Conn, handler, messageID string, id int64, out Outcome) (Order, bool, error) {
	to := StatusPaid
	if !out.Approved {
		to = StatusPaymentFailed
	}
	// Round trip 1: BEGIN, the inbox entry and the status change.
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(recordOutcomeSQL, id, to, handler, messageID)
	br := pc.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return Order{}, false, fmt.Errorf("begin: %w", err)
	}
	o, err := scanOrder(br.QueryRow())
	cerr := br.Close()
	switch {
	case errors.Is(err, ErrNotFound) && cerr == nil:
		// Nothing changed, the rare path: say why. The transaction is rolled back.
		return Order{}, false, s.whyUnchanged(ctx, pc, id, handler, messageID)
	case err != nil:
		return Order{}, false, fmt.Errorf("set order %d %s: %w", id, to, err)
	case cerr != nil:
		return Order{}, false, cerr
	}

	// Round trip 2: the outcome event and COMMIT.
	var e events.Event = events.PaymentSucceeded{ID: o.ID, PaymentID: out.PaymentID, AmountMinor: o.Amount.Minor,
		Currency: o.Amount.Currency, PaidAt: o.UpdatedAt}
	if !out.Approved {
		e = events.PaymentFailed{ID: o.ID, PaymentID: out.PaymentID, Reason: out.Reason, FailedAt: o.UpdatedAt}
	}
	msg, err := newEventMessage(ctx, e, o.UpdatedAt)
	if err != nil {
		return Order{}, false, err
	}
	query, args, err := s.outbox.InsertQuery(e.Topic(), msg)
	if err != nil {
		return Order{}, false, err
	}
	b = &pgx.Batch{}
	b.Queue(query, args...)
	b.Queue("COMMIT")
	br = pc.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return Order{}, false, fmt.Errorf("outbox insert: %w", err)
	}
	tag, err := br.Exec()
	if err != nil {
		return Order{}, false, fmt.Errorf("commit: %w", err)
	}
	if tag.String() != "COMMIT" { // an aborted transaction "commits" as ROLLBACK
		return Order{}, false, fmt.Errorf("commit: transaction rolled back (%s)", tag)
	}
	return o, true, br.Close()
}

// whyUnchanged rolls the transaction back after the update changed no row and tells a
// redelivery (an earlier delivery recorded the message: nil) from an order that is
// final (ErrNotPending) or missing (ErrNotFound).
func (s *Store) whyUnchanged(ctx context.Context, pc *pgx.Conn, id int64, handler, messageID string) error {
	// Rolled back first, so the inbox shows what earlier deliveries recorded, not this
	// transaction's own entry.
	b := &pgx.Batch{}
	b.Queue("ROLLBACK")
	b.Queue(`SELECT (SELECT status FROM orders WHERE id = $1),
		EXISTS (SELECT 1 FROM processed_messages WHERE handler = $2 AND order_id = $1 AND message_id = $3)`, id, handler, messageID)
	br := pc.SendBatch(ctx, b)
	defer br.Close()
	var (
		status *Status
		seen   bool
	)
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	if err := br.QueryRow().Scan(&status, &seen); err != nil {
		return fmt.Errorf("order %d: %w", id, err)
	}
	switch {
	case seen:
		return nil
	case status == nil:
		return fmt.Errorf("order %d: %w", id, ErrNotFound)
	case *status != StatusPending:
		return fmt.Errorf("order %d: %w", id, ErrNotPending)
	}
	// PENDING and not in the inbox: the update must have changed it. Cannot happen;
	// an error makes the worker try again rather than drop the message.
	return fmt.Errorf("order %d: still PENDING but not updated", id)
}

// DeleteProcessedMessages removes up to limit inbox entries recorded before cutoff and
// reports how many. Deleting one is safe at any age: an entry is written only with the
// status change it records, so a redelivery of its message finds the order final and
// changes nothing (the entry only spares the provider lookup). The worker keeps entries
// for longer than a message can be redelivered, the topic's retention, so that the inbox
// stays a complete record of what was processed.
func (s *Store) DeleteProcessedMessages(ctx context.Context, cutoff time.Time, limit int) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM processed_messages WHERE ctid = ANY (ARRAY(
		SELECT ctid FROM processed_messages WHERE processed_at < $1
		ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED))`, cutoff, limit)
	if err != nil {
		return 0, fmt.Errorf("delete processed messages: %w", err)
	}
	return res.RowsAffected()
}
