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
	ids    idSource // for Create
}

// NewStore returns a store on db whose events go to ob.
func NewStore(db *sql.DB, ob *outbox.Outbox) *Store {
	return &Store{db: db, outbox: ob}
}

const orderColumns = `id, customer_id, amount_minor, currency, status, version, created_at, updated_at, payment_key`

type scanner interface{ Scan(dest ...any) error }

func scanOrder(row scanner) (Order, error) {
	var (
		o   Order
		key sql.NullString
	)
	err := row.Scan(&o.ID, &o.CustomerID, &o.Amount.Minor, &o.Amount.Currency, &o.Status,
		&o.Version, &o.CreatedAt, &o.UpdatedAt, &key)
	if errors.Is(err, sql.ErrNoRows) {
		return Order{}, ErrNotFound
	}
	o.CreatedAt, o.UpdatedAt = o.CreatedAt.UTC(), o.UpdatedAt.UTC()
	o.PaymentKey = paymentKey(o.ID, key)
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

// ListFilter selects orders for List. Zero fields do not filter.
type ListFilter struct {
	CustomerID string
	Status     Status
	// BeforeID continues a listing: only orders with a smaller id (older, to within the
	// second by which ids drawn ahead can trail creation order: see idSource) are returned.
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
