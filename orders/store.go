package orders

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/outbox"
)

// Store reads and writes orders in Postgres.
type Store struct {
	db     *sql.DB
	outbox *outbox.Outbox
}

// NewStore returns a store on db whose events go to ob.
func NewStore(db *sql.DB, ob *outbox.Outbox) *Store {
	return &Store{db: db, outbox: ob}
}

const orderColumns = `id, customer_id, amount_minor, currency, status, version, created_at, updated_at`

type scanner interface{ Scan(dest ...any) error }

func scanOrder(row scanner) (Order, error) {
	var o Order
	err := row.Scan(&o.ID, &o.CustomerID, &o.Amount.Minor, &o.Amount.Currency, &o.Status,
		&o.Version, &o.CreatedAt, &o.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Order{}, ErrNotFound
	}
	o.CreatedAt, o.UpdatedAt = o.CreatedAt.UTC(), o.UpdatedAt.UTC()
	return o, err
}

// Get returns the order with the id.
func (s *Store) Get(ctx context.Context, id int64) (Order, error) {
	o, err := scanOrder(s.db.QueryRowContext(ctx, `SELECT `+orderColumns+` FROM orders WHERE id = $1`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Order{}, fmt.Errorf("get order %d: %w", id, err)
	}
	return o, err
}

// Tx is one unit of work: everything done through it commits or rolls back together.
type Tx struct {
	tx     *sql.Tx
	outbox *outbox.Outbox
}

// InTx runs fn in a transaction and commits if fn returns nil. The commit's own error is
// returned: an order is only created if that is nil.
func (s *Store) InTx(ctx context.Context, fn func(*Tx) error) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if err := fn(&Tx{tx: tx, outbox: s.outbox}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (t *Tx) publish(ctx context.Context, e events.Event, at time.Time) error {
	msg, err := newEventMessage(ctx, e, at)
	if err != nil {
		return err
	}
	return t.outbox.Publish(t.tx, e.Topic(), msg)
}

// newEventMessage wraps an event for the outbox with what ctx knows about its cause.
func newEventMessage(ctx context.Context, e events.Event, at time.Time) (*message.Message, error) {
	msg, err := events.NewMessage(e, at)
	if err != nil {
		return nil, err
	}
	if id := events.CorrelationID(ctx); id != "" {
		msg.Metadata.Set(events.MetaCorrelationID, id)
	}
	// The span that caused the event (the API's create, the worker's processing) becomes
	// the parent of the relay's and, through it, the consumer's spans: one trace.
	tracing.Inject(ctx, msg.Metadata)
	return msg, nil
}

// MarkPaid moves a PENDING order to PAID and records PaymentSucceeded.
func (t *Tx) MarkPaid(ctx context.Context, id int64, paymentID string) (Order, error) {
	o, err := t.finish(ctx, id, StatusPaid)
	if err != nil {
		return Order{}, err
	}
	err = t.publish(ctx, events.PaymentSucceeded{
		ID: o.ID, PaymentID: paymentID, AmountMinor: o.Amount.Minor,
		Currency: o.Amount.Currency, PaidAt: o.UpdatedAt,
	}, o.UpdatedAt)
	return o, err
}

// MarkPaymentFailed moves a PENDING order to PAYMENT_FAILED and records PaymentFailed.
func (t *Tx) MarkPaymentFailed(ctx context.Context, id int64, paymentID, reason string) (Order, error) {
	o, err := t.finish(ctx, id, StatusPaymentFailed)
	if err != nil {
		return Order{}, err
	}
	err = t.publish(ctx, events.PaymentFailed{
		ID: o.ID, PaymentID: paymentID, Reason: reason, FailedAt: o.UpdatedAt,
	}, o.UpdatedAt)
	return o, err
}

// finish moves the order forward from PENDING only: a late or repeated outcome can never
// roll a final status back.
func (t *Tx) finish(ctx context.Context, id int64, to Status) (Order, error) {
	o, err := scanOrder(t.tx.QueryRowContext(ctx,
		`UPDATE orders SET status = $2, version = version + 1, updated_at = now()
		 WHERE id = $1 AND status = 'PENDING' RETURNING `+orderColumns, id, to))
	if errors.Is(err, ErrNotFound) {
		var exists bool
		if err := t.tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)`, id).Scan(&exists); err != nil {
			return Order{}, fmt.Errorf("order %d: %w", id, err)
		}
		if exists {
			return Order{}, fmt.Errorf("order %d: %w", id, ErrNotPending)
		}
		return Order{}, fmt.Errorf("order %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Order{}, fmt.Errorf("set order %d %s: %w", id, to, err)
	}
	return o, nil
}

// MarkProcessed records that handler processed the message. It reports false if it had
// already been recorded: the caller must then do nothing (a redelivery).
func (t *Tx) MarkProcessed(ctx context.Context, handler, messageID string) (bool, error) {
	res, err := t.tx.ExecContext(ctx,
		`INSERT INTO processed_messages (handler, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
		handler, messageID)
	if err != nil {
		return false, fmt.Errorf("record message %s: %w", messageID, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// ListFilter selects orders for List. Zero fields do not filter.
type ListFilter struct {
	CustomerID string
	Status     Status
	// BeforeID continues a listing: only orders with a smaller id (older) are returned.
	BeforeID int64
	Limit    int
}

// List returns orders newest first, by keyset on id, so a page costs the same however
// deep the listing goes.
func (s *Store) List(ctx context.Context, f ListFilter) ([]Order, error) {
	// The WHERE clause names only the filters given, so each shape gets a plan that
	// uses its index (a catch-all "$1 = '' OR ..." defeats generic plans).
	var (
		where []string
		args  []any
	)
	add := func(cond string, arg any) {
		args = append(args, arg)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.CustomerID != "" {
		add("customer_id = $%d", f.CustomerID)
	}
	if f.Status != "" {
		add("status = $%d", string(f.Status))
	}
	if f.BeforeID > 0 {
		add("id < $%d", f.BeforeID)
	}
	query := `SELECT ` + orderColumns + ` FROM orders`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, f.Limit)
	rows, err := s.db.QueryContext(ctx, query+fmt.Sprintf(` ORDER BY id DESC LIMIT $%d`, len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("list orders: %w", err)
	}
	defer rows.Close()
	out := []Order{}
	for rows.Next() {
		o, err := scanOrder(rows)
		if err != nil {
			return nil, fmt.Errorf("list orders: %w", err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list orders: %w", err)
	}
	return out, nil
}

// DeleteExpiredKeys removes up to limit expired idempotency keys and reports how many.
func (s *Store) DeleteExpiredKeys(ctx context.Context, limit int) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM idempotency_keys WHERE key IN (
		SELECT key FROM idempotency_keys WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)`, limit)
	if err != nil {
		return 0, fmt.Errorf("delete expired idempotency keys: %w", err)
	}
	return res.RowsAffected()
}
