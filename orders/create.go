package orders

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
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
// It is the api's hot path, so the transaction is pipelined into two round trips instead
// of six: BEGIN with the key's claim and the order in one statement, then the outbox row,
// the response and COMMIT. A concurrent request with the same key waits at the
// claim, on the key's unique index, until the first transaction ends, then replays its
// answer; so N concurrent identical requests commit one order and give N identical answers.
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
	// Round trip 1: BEGIN and the order, inserted only if the key (when there is one) was
	// claimed: the key is new, or it expired.
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if n.Key != "" {
		b.Queue(claimAndInsertOrderSQL, n.CustomerID, n.Amount.Minor, n.Amount.Currency,
			n.Key, n.Fingerprint, n.KeyTTL.Seconds())
	} else {
		b.Queue(insertOrderSQL, n.CustomerID, n.Amount.Minor, n.Amount.Currency)
	}
	br := pc.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		return StoredResponse{}, false, fmt.Errorf("begin: %w", err)
	}
	o, err := scanOrder(br.QueryRow())
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, ErrNotFound) && n.Key != "" {
		// The key was answered before, or is being answered by a transaction that has
		// committed meanwhile (the claim waited for it).
		stored, err := storedResponse(ctx, pc, n)
		return stored, err == nil, err
	}
	if err != nil {
		return StoredResponse{}, false, fmt.Errorf("insert order: %w", err)
	}

	// Round trip 2: the outbox row, the stored response and COMMIT.
	msg, err := newEventMessage(ctx, events.OrderCreated{ID: o.ID, CustomerID: o.CustomerID,
		AmountMinor: o.Amount.Minor, Currency: o.Amount.Currency, CreatedAt: o.CreatedAt}, o.CreatedAt)
	if err != nil {
		return StoredResponse{}, false, err
	}
	query, args, err := s.outbox.InsertQuery(events.TopicOrders, msg)
	if err != nil {
		return StoredResponse{}, false, err
	}
	body, err := render(o)
	if err != nil {
		return StoredResponse{}, false, err
	}
	resp := StoredResponse{StatusCode: 201, Body: body, OrderID: o.ID}
	b = &pgx.Batch{}
	b.Queue(query, args...)
	if n.Key != "" {
		b.Queue(`UPDATE idempotency_keys SET status_code = $2, response_body = $3, order_id = $4 WHERE key = $1`,
			n.Key, resp.StatusCode, resp.Body, resp.OrderID)
	}
	b.Queue("COMMIT")
	br = pc.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return StoredResponse{}, false, fmt.Errorf("outbox insert: %w", err)
	}
	if n.Key != "" {
		if _, err := br.Exec(); err != nil {
			return StoredResponse{}, false, fmt.Errorf("save idempotent response: %w", err)
		}
	}
	tag, err := br.Exec()
	if err != nil {
		return StoredResponse{}, false, fmt.Errorf("commit: %w", err)
	}
	if tag.String() != "COMMIT" { // an aborted transaction "commits" as ROLLBACK
		return StoredResponse{}, false, fmt.Errorf("commit: transaction rolled back (%s)", tag)
	}
	return resp, false, br.Close()
}

const insertOrderSQL = `INSERT INTO orders (customer_id, amount_minor, currency) VALUES ($1, $2, $3) RETURNING ` + orderColumns

// claimAndInsertOrderSQL claims the idempotency key and inserts the order only if the
// claim succeeded: the key is new, or its earlier use expired and is overwritten. A
// concurrent claim of the same key waits on the key's unique index until the first
// transaction ends; then it inserts nothing (committed) or claims the key (rolled back).
const claimAndInsertOrderSQL = `WITH claim AS (
	INSERT INTO idempotency_keys (key, request_hash, expires_at)
	VALUES ($4, $5, now() + make_interval(secs => $6))
	ON CONFLICT (key) DO UPDATE
	  SET request_hash = excluded.request_hash, status_code = NULL, response_body = NULL,
	      order_id = NULL, created_at = now(), expires_at = excluded.expires_at
	  WHERE idempotency_keys.expires_at <= now()
	RETURNING 1
)
INSERT INTO orders (customer_id, amount_minor, currency)
SELECT $1::text, $2::bigint, $3::text FROM claim
RETURNING ` + orderColumns

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
