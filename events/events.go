// Package events defines the events this system publishes, the public contract other
// teams consume from Kafka. Every event travels as a CloudEvents 1.0 message in binary
// content mode: the payload is the event's JSON data and the attributes are message
// metadata (Kafka headers) named ce_*. Type names follow one rule:
// <topic>.<entity>.<past-tense verb>.v<major version>.
//
// Compatibility: adding an optional field is compatible; any other change is a new type
// with the next version number. Consumers must ignore fields they do not know.
//
// The contract is also written down for consumers that do not use Go: schemas/<type>.json
// is the JSON Schema (draft 2020-12) of each type's data, asyncapi.yaml (AsyncAPI 3.0)
// describes the topics, keys, headers and payloads, and CATALOGUE.md explains them. Tests
// check both documents against this package and pin the records on the wire in
// testdata/*.golden (go test ./events -run Golden -update rewrites them after a deliberate
// change).
package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Topics.
const (
	TopicOrders       = "orders"
	TopicPayments     = "payments"
	TopicOrdersPoison = "orders.poison"
)

// Event type names.
const (
	TypeOrderCreated     = "orders.order.created.v1"
	TypePaymentSucceeded = "payments.payment.succeeded.v1"
	TypePaymentFailed    = "payments.payment.failed.v1"
)

// CloudEvents attributes as message metadata; watermill-kafka turns metadata into Kafka
// headers one to one, which is the CloudEvents Kafka binding's binary mode.
const (
	MetaSpecVersion = "ce_specversion"
	MetaID          = "ce_id"
	MetaSource      = "ce_source"
	MetaType        = "ce_type"
	MetaTime        = "ce_time"
	MetaSubject     = "ce_subject"
	MetaContentType = "content-type"
	// MetaCorrelationID ties together everything one request caused (Watermill's key).
	MetaCorrelationID = "correlation_id"
)

type correlationKey struct{}

// WithCorrelationID returns a context carrying the correlation id that events created
// under it get.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationID returns the correlation id carried by ctx, or "".
func CorrelationID(ctx context.Context) string {
	id, _ := ctx.Value(correlationKey{}).(string)
	return id
}

// Event is one of the types below.
type Event interface {
	// Type is the CloudEvents type name.
	Type() string
	// Topic is the Kafka topic the event is published to.
	Topic() string
	// OrderID is the CloudEvents subject and the Kafka key.
	OrderID() int64
}

// OrderCreated: an order was accepted and awaits payment.
type OrderCreated struct {
	ID          int64     `json:"orderId"`
	CustomerID  string    `json:"customerId"`
	AmountMinor int64     `json:"amountMinor"`
	Currency    string    `json:"currency"`
	CreatedAt   time.Time `json:"createdAt"`
}

// PaymentSucceeded: the order was charged and is PAID.
type PaymentSucceeded struct {
	ID          int64     `json:"orderId"`
	PaymentID   string    `json:"paymentId"`
	AmountMinor int64     `json:"amountMinor"`
	Currency    string    `json:"currency"`
	PaidAt      time.Time `json:"paidAt"`
}

// PaymentFailed: the payment was declined and the order is PAYMENT_FAILED.
type PaymentFailed struct {
	ID        int64     `json:"orderId"`
	PaymentID string    `json:"paymentId,omitempty"`
	Reason    string    `json:"reason"`
	FailedAt  time.Time `json:"failedAt"`
}

// The contract promises UTC timestamps whatever location a producer's times carry;
// each event type converts its own when it is marshaled.

// MarshalJSON writes the event with its time in UTC.
func (e OrderCreated) MarshalJSON() ([]byte, error) {
	type plain OrderCreated
	e.CreatedAt = e.CreatedAt.UTC()
	return json.Marshal(plain(e))
}

// MarshalJSON writes the event with its time in UTC.
func (e PaymentSucceeded) MarshalJSON() ([]byte, error) {
	type plain PaymentSucceeded
	e.PaidAt = e.PaidAt.UTC()
	return json.Marshal(plain(e))
}

// MarshalJSON writes the event with its time in UTC.
func (e PaymentFailed) MarshalJSON() ([]byte, error) {
	type plain PaymentFailed
	e.FailedAt = e.FailedAt.UTC()
	return json.Marshal(plain(e))
}

func (OrderCreated) Type() string         { return TypeOrderCreated }
func (OrderCreated) Topic() string        { return TopicOrders }
func (e OrderCreated) OrderID() int64     { return e.ID }
func (PaymentSucceeded) Type() string     { return TypePaymentSucceeded }
func (PaymentSucceeded) Topic() string    { return TopicPayments }
func (e PaymentSucceeded) OrderID() int64 { return e.ID }
func (PaymentFailed) Type() string        { return TypePaymentFailed }
func (PaymentFailed) Topic() string       { return TopicPayments }
func (e PaymentFailed) OrderID() int64    { return e.ID }

// Source is the CloudEvents source of the events on a topic.
func Source(topic string) string { return "/orderpipe/" + topic }

// NewMessage wraps an event in a Watermill message carrying the CloudEvents attributes.
// The message UUID is the event id (ce_id): it is stored in the outbox and stays the same
// however often the relay resends it, so consumers deduplicate by it.
func NewMessage(e Event, at time.Time) (*message.Message, error) {
	return newMessage(watermill.NewUUID(), e, at)
}

// newMessage is NewMessage with the id given, so that tests can pin the serialized form.
func newMessage(id string, e Event, at time.Time) (*message.Message, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", e.Type(), err)
	}
	msg := message.NewMessage(id, data)
	msg.Metadata.Set(MetaSpecVersion, "1.0")
	msg.Metadata.Set(MetaID, id)
	msg.Metadata.Set(MetaSource, Source(e.Topic()))
	msg.Metadata.Set(MetaType, e.Type())
	msg.Metadata.Set(MetaTime, at.UTC().Format(time.RFC3339Nano))
	msg.Metadata.Set(MetaSubject, strconv.FormatInt(e.OrderID(), 10))
	msg.Metadata.Set(MetaContentType, "application/json")
	return msg, nil
}

// ErrUnknownType: the message's ce_type is not one this package knows.
var ErrUnknownType = errors.New("unknown event type")

// ErrMalformed: the payload does not decode as the event its type names.
var ErrMalformed = errors.New("malformed event")

// Decode returns the event a message carries.
func Decode(msg *message.Message) (Event, error) {
	switch t := msg.Metadata.Get(MetaType); t {
	case TypeOrderCreated:
		return decode[OrderCreated](msg.Payload)
	case TypePaymentSucceeded:
		return decode[PaymentSucceeded](msg.Payload)
	case TypePaymentFailed:
		return decode[PaymentFailed](msg.Payload)
	default:
		return nil, fmt.Errorf("%w %q", ErrUnknownType, t)
	}
}

func decode[E Event](payload []byte) (Event, error) {
	var e E
	if err := json.Unmarshal(payload, &e); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, e.Type(), err)
	}
	if e.OrderID() <= 0 {
		return nil, fmt.Errorf("%w: %s without an order id", ErrMalformed, e.Type())
	}
	return e, nil
}
