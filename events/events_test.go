package events

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/go-cmp/cmp"
)

func TestRoundTrip(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("CET", 3600))
	tests := []Event{
		OrderCreated{ID: 7, CustomerID: "C1", AmountMinor: 1999, Currency: "USD", CreatedAt: at.UTC()},
		PaymentSucceeded{ID: 7, PaymentID: "pay_1", AmountMinor: 1999, Currency: "USD", PaidAt: at.UTC()},
		PaymentFailed{ID: 7, PaymentID: "pay_2", Reason: "card_declined", FailedAt: at.UTC()},
	}
	for _, e := range tests {
		t.Run(e.Type(), func(t *testing.T) {
			msg, err := NewMessage(e, at)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				MetaSpecVersion: "1.0", MetaID: msg.UUID, MetaSource: "/orderpipe/" + e.Topic(), MetaType: e.Type(),
				MetaTime: "2026-01-02T02:04:05Z", MetaSubject: "7", MetaContentType: "application/json",
			}
			if diff := cmp.Diff(want, map[string]string(msg.Metadata)); diff != "" {
				t.Errorf("metadata (-want +got):\n%s", diff)
			}
			got, err := Decode(msg)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(e, got); diff != "" {
				t.Errorf("Decode(NewMessage(e)) (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name, typ, payload string
		want               error
	}{
		{"unknown type", "orders.order.exploded.v1", `{"orderId":1}`, ErrUnknownType},
		{"no type", "", `{"orderId":1}`, ErrUnknownType},
		{"not json", TypeOrderCreated, `{`, ErrMalformed},
		{"wrong field type", TypeOrderCreated, `{"orderId":"1"}`, ErrMalformed},
		{"no order id", TypePaymentFailed, `{"reason":"x"}`, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("id", []byte(tt.payload))
			msg.Metadata.Set(MetaType, tt.typ)
			if _, err := Decode(msg); !errors.Is(err, tt.want) {
				t.Errorf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	// The compatibility rule: adding an optional field must not break old consumers.
	msg := message.NewMessage("id", []byte(`{"orderId":3,"reason":"x","newField":true}`))
	msg.Metadata.Set(MetaType, TypePaymentFailed)
	e, err := Decode(msg)
	if err != nil || e.OrderID() != 3 {
		t.Errorf("Decode = %v, %v; want order 3", e, err)
	}
}
