package orders

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/money"
)

// NewOrder is an order to create and, when the request carried one, its idempotency key.
type NewOrder struct {
	CustomerID string
	Amount     money.Amount
	// Key is the request's Idempotency-Key; "" when it sent none.
	Key string
	// Fingerprint identifies the request's meaning; it is compared when the key comes again.
	Fingerprint []byte
	// KeyTTL is how long the key is remembered.
	KeyTTL time.Duration
}

// StoredResponse is the answer first given to a request with an idempotency key.
type StoredResponse struct {
	StatusCode int
	Body       []byte
	OrderID    int64
}

// Create writes a PENDING order, its OrderCreated outbox row and, with a key, the key and
// the response render makes of the order, all in one transaction. If the key was answered
// before, nothing is written: it returns the stored response and replayed=true when the
// fingerprints match, ErrKeyReused when they do not.
//
// It is the api's hot path, so with an id at hand it takes one round trip: the order's
// id is drawn ahead (idSource: under load in blocks, while orders are rare one per create,
// a round trip of its own) and createdAt is the api's clock (updatedAt, changed later by
// the worker, is the database's), so the response and the event are built before
// anything is sent, and BEGIN, the order, the key with its response, the event and
// COMMIT go out as one pipelined batch. A key that exists makes the batch fail
// on the key's unique index; only then does a second path claim the key (if it expired)
// or replay its answer. A concurrent request with the same key waits on that index until
// the first transaction ends, so N concurrent identical requests commit one order and
// give N identical answers.
func (s *Store) Create(ctx context.Context, n NewOrder, render func(Order) ([]byte, error)) (resp StoredResponse, replayed bool, err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return StoredResponse{}, false, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	err = conn.Raw(func(driverConn any) error {
		pc := driverConn.(*stdlib.Conn).Conn()
		resp, replayed, err = s.create(ctx, pc, n, render)
		if pc.PgConn().TxStatus() != 'I' {
			// Whatever failed, never leave the transaction open. (database/sql would
			// discard such a connection anyway; this keeps it usable.)
			pc.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
		return err
	})
	return resp, replayed, err
}

func (s *Store) create(ctx context.Context, pc *pgx.Conn, n NewOrder, render func(Order) ([]byte, error)) (StoredResponse, bool, error) {
	id, drawn, err := s.ids.take(ctx, pc)
	if err != nil {
		return StoredResponse{}, false, err
	}
	// Postgres keeps microseconds: the stored time is the one rendered.
	now := time.Now().UTC().Truncate(time.Microsecond)
	o := Order{ID: id, CustomerID: n.CustomerID, Amount: n.Amount, Status: StatusPending, Version: 1,
		CreatedAt: now, UpdatedAt: now}
	msg, err := newEventMessage(ctx, events.OrderCreated{ID: o.ID, CustomerID: o.CustomerID,
		AmountMinor: o.Amount.Minor, Currency: o.Amount.Currency, CreatedAt: o.CreatedAt}, o.CreatedAt)
	if err != nil {
		return StoredResponse{}, false, err
	}
	eventSQL, eventArgs, err := s.outbox.InsertQuery(events.TopicOrders, msg)
	if err != nil {
		return StoredResponse{}, false, err
	}
	body, err := render(o)
	if err != nil {
		return StoredResponse{}, false, err
	}
	resp := StoredResponse{StatusCode: 201, Body: body, OrderID: o.ID}
	orderArgs := []any{o.ID, o.CustomerID, o.Amount.Minor, o.Amount.Currency, o.CreatedAt}

	// The one round trip.
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(insertOrderSQL, orderArgs...)
	if n.Key != "" {
		b.Queue(`INSERT INTO idempotency_keys (key, request_hash, expires_at, status_code, response_body, order_id)
			VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6)`,
			n.Key, n.Fingerprint, n.KeyTTL.Seconds(), resp.StatusCode, resp.Body, resp.OrderID)
	}
	b.Queue(eventSQL, eventArgs...)
	b.Queue("COMMIT")
	err = commitBatch(ctx, pc, b)
	if n.Key == "" || !isKeyConflict(err) {
		if err != nil {
			return StoredResponse{}, false, fmt.Errorf("create order: %w", err)
		}
		return resp, false, nil
	}

	// The key exists (its transaction committed, if it was still running). In a new
	// transaction, claim it if it expired, with the order in the same statement; otherwise
	// replay its answer.
	// (ROLLBACK goes on its own: in the aborted transaction pgx could not prepare the
	// batch's statements.)
	if _, err := pc.Exec(ctx, "ROLLBACK"); err != nil {
		return StoredResponse{}, false, fmt.Errorf("rollback: %w", err)
	}
	b = &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(claimAndInsertOrderSQL, append(orderArgs, n.Key, n.Fingerprint, n.KeyTTL.Seconds())...)
	br := pc.SendBatch(ctx, b)
	var tag pgconn.CommandTag
	for range b.Len() {
		if tag, err = br.Exec(); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return StoredResponse{}, false, fmt.Errorf("claim idempotency key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		s.ids.giveBack(o.ID, drawn)
		stored, err := storedResponse(ctx, pc, n)
		return stored, err == nil, err
	}
	b = &pgx.Batch{}
	b.Queue(eventSQL, eventArgs...)
	b.Queue(`UPDATE idempotency_keys SET status_code = $2, response_body = $3, order_id = $4 WHERE key = $1`,
		n.Key, resp.StatusCode, resp.Body, resp.OrderID)
	b.Queue("COMMIT")
	if err := commitBatch(ctx, pc, b); err != nil {
		return StoredResponse{}, false, fmt.Errorf("create order over an expired key: %w", err)
	}
	return resp, false, nil
}

// commitBatch sends a batch that ends with COMMIT and reports the first statement that
// failed, or a transaction that did not commit.
func commitBatch(ctx context.Context, pc *pgx.Conn, b *pgx.Batch) error {
	br := pc.SendBatch(ctx, b)
	defer br.Close()
	var tag pgconn.CommandTag
	for range b.Len() {
		var err error
		if tag, err = br.Exec(); err != nil {
			return err
		}
	}
	if tag.String() != "COMMIT" { // an aborted transaction "commits" as ROLLBACK
		return fmt.Errorf("transaction rolled back (%s)", tag)
	}
	return br.Close()
}

// isKeyConflict reports the idempotency key's unique index refusing an insert.
func isKeyConflict(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "idempotency_keys_pkey"
}

// insertOrder inserts an order with the id drawn for it and the api's time; both paths
// below complete it with the values $1-$5 (id, customer, amount, currency, time).
const insertOrder = `INSERT INTO orders (id, customer_id, amount_minor, currency, created_at, updated_at)
	OVERRIDING SYSTEM VALUE `

const insertOrderSQL = insertOrder + `VALUES ($1, $2, $3, $4, $5, $5)`

// claimAndInsertOrderSQL claims the idempotency key and inserts the order only if the
// claim succeeded: the key is new, or its earlier use expired and is overwritten. A
// concurrent claim of the same key waits on the key's unique index until the first
// transaction ends; then it inserts nothing (committed) or claims the key (rolled back).
const claimAndInsertOrderSQL = `WITH claim AS (
	INSERT INTO idempotency_keys (key, request_hash, expires_at)
	VALUES ($6, $7, now() + make_interval(secs => $8))
	ON CONFLICT (key) DO UPDATE
	  SET request_hash = excluded.request_hash, status_code = NULL, response_body = NULL,
	      order_id = NULL, created_at = now(), expires_at = excluded.expires_at
	  WHERE idempotency_keys.expires_at <= now()
	RETURNING 1
)
` + insertOrder + `SELECT $1::bigint, $2::text, $3::bigint, $4::text, $5::timestamptz, $5::timestamptz FROM claim`

// storedResponse reads the answer stored with the key and ends the transaction; the
// caller's request is a replay (same fingerprint) or a misuse of the key.
func storedResponse(ctx context.Context, pc *pgx.Conn, n NewOrder) (StoredResponse, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT request_hash, status_code, response_body, COALESCE(order_id, 0) FROM idempotency_keys WHERE key = $1`, n.Key)
	b.Queue("ROLLBACK")
	br := pc.SendBatch(ctx, b)
	defer br.Close()
	var (
		stored StoredResponse
		hash   []byte
		code   *int
	)
	if err := br.QueryRow().Scan(&hash, &code, &stored.Body, &stored.OrderID); err != nil {
		return StoredResponse{}, fmt.Errorf("read idempotency key: %w", err)
	}
	if _, err := br.Exec(); err != nil {
		return StoredResponse{}, fmt.Errorf("rollback: %w", err)
	}
	if !bytes.Equal(hash, n.Fingerprint) {
		return StoredResponse{}, ErrKeyReused
	}
	if code == nil {
		return StoredResponse{}, errors.New("idempotency key stored without a response")
	}
	stored.StatusCode = *code
	return stored, nil
}
