package orders

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/money"
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
	msg, err := events.NewMessage(e, at)
	if err != nil {
		return err
	}
	if id := events.CorrelationID(ctx); id != "" {
		msg.Metadata.Set(events.MetaCorrelationID, id)
	}
	// The span that caused the event (the API's create, the worker's processing) becomes
	// the parent of the relay's and, through it, the consumer's spans: one trace.
	tracing.Inject(ctx, msg.Metadata)
	return t.outbox.Publish(t.tx, e.Topic(), msg)
}

// Create inserts a PENDING order and its OrderCreated event.
func (t *Tx) Create(ctx context.Context, customerID string, amount money.Amount) (Order, error) {
	o, err := scanOrder(t.tx.QueryRowContext(ctx,
		`INSERT INTO orders (customer_id, amount_minor, currency) VALUES ($1, $2, $3) RETURNING `+orderColumns,
		customerID, amount.Minor, amount.Currency))
	if err != nil {
		return Order{}, fmt.Errorf("insert order: %w", err)
	}
	err = t.publish(ctx, events.OrderCreated{
		ID: o.ID, CustomerID: o.CustomerID, AmountMinor: o.Amount.Minor,
		Currency: o.Amount.Currency, CreatedAt: o.CreatedAt,
	}, o.CreatedAt)
	return o, err
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

// StoredResponse is the answer first given to a request with an idempotency key.
type StoredResponse struct {
	StatusCode int
	Body       []byte
	OrderID    int64
}

// ClaimKey claims an idempotency key for this transaction. It returns nil if the key is
// new (or had expired): the caller does the work and calls SaveResponse. If the key was
// used before with the same fingerprint, it returns the stored response; with another
// fingerprint, ErrKeyReused. A concurrent claim of the same key waits on the key's
// unique index until the first transaction ends, then sees its stored response.
func (t *Tx) ClaimKey(ctx context.Context, key string, fingerprint []byte, ttl time.Duration) (*StoredResponse, error) {
	res, err := t.tx.ExecContext(ctx,
		`INSERT INTO idempotency_keys (key, request_hash, expires_at)
		 VALUES ($1, $2, now() + make_interval(secs => $3))
		 ON CONFLICT (key) DO UPDATE
		   SET request_hash = excluded.request_hash, status_code = NULL, response_body = NULL,
		       order_id = NULL, created_at = now(), expires_at = excluded.expires_at
		   WHERE idempotency_keys.expires_at <= now()`,
		key, fingerprint, ttl.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim idempotency key: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 1 {
		return nil, err
	}
	var (
		stored StoredResponse
		hash   []byte
		order  sql.NullInt64
	)
	err = t.tx.QueryRowContext(ctx,
		`SELECT request_hash, status_code, response_body, order_id FROM idempotency_keys WHERE key = $1`,
		key).Scan(&hash, &stored.StatusCode, &stored.Body, &order)
	if err != nil {
		return nil, fmt.Errorf("read idempotency key: %w", err)
	}
	if !bytes.Equal(hash, fingerprint) {
		return nil, ErrKeyReused
	}
	stored.OrderID = order.Int64
	return &stored, nil
}

// SaveResponse stores the answer to the request that claimed key.
func (t *Tx) SaveResponse(ctx context.Context, key string, r StoredResponse) error {
	_, err := t.tx.ExecContext(ctx,
		`UPDATE idempotency_keys SET status_code = $2, response_body = $3, order_id = $4 WHERE key = $1`,
		key, r.StatusCode, r.Body, sql.NullInt64{Int64: r.OrderID, Valid: r.OrderID != 0})
	if err != nil {
		return fmt.Errorf("save idempotent response: %w", err)
	}
	return nil
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
