// Package orders is the order domain and its store: the only place with orders SQL.
// Every state change writes its event to the outbox in the same transaction, so callers
// cannot change an order without telling the world, nor tell the world about a change
// that did not commit.
package orders

import (
	"errors"
	"time"

	"github.com/orderpipe/orderpipe/money"
)

// Status of an order. PENDING moves forward to exactly one of the final statuses.
type Status string

const (
	StatusPending       Status = "PENDING"
	StatusPaid          Status = "PAID"
	StatusPaymentFailed Status = "PAYMENT_FAILED"
)

// Order is an order as stored.
type Order struct {
	ID         int64
	CustomerID string
	Amount     money.Amount
	Status     Status
	Version    int
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// PaymentKey is the payment provider's idempotency key for the order,
	// "order-<id>-<uuid>": the same for every attempt, replay and worker, and never
	// another order's, whatever database or restore the id comes from. Orders created
	// before schema version 2 keep "order-<id>", under which they may have been charged.
	PaymentKey string
}

var (
	// ErrNotFound: no order has that id.
	ErrNotFound = errors.New("order not found")
	// ErrNotPending: the order already has a final status; statuses never move back.
	ErrNotPending = errors.New("order is not pending")
	// ErrKeyReused: an idempotency key was presented again with a different request.
	ErrKeyReused = errors.New("idempotency key reused with a different request")
)
