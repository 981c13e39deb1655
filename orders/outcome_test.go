package orders_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/orders"
)

func TestRecordOutcome(t *testing.T) {
	s, db := newStore(t)
	ctx := events.WithCorrelationID(context.Background(), "corr-7")
	paid, declined := create(t, s), create(t, s)

	o, recorded, err := s.RecordOutcome(ctx, "payment", "msg-1", paid.ID, orders.Outcome{PaymentID: "pay_1", Approved: true})
	if err != nil || !recorded || o.Status != orders.StatusPaid || o.Version != 2 || o.ID != paid.ID {
		t.Fatalf("approved = %+v, %v, %v; want the order PAID at version 2, recorded", o, recorded, err)
	}
	o, recorded, err = s.RecordOutcome(ctx, "payment", "msg-2", declined.ID,
		orders.Outcome{PaymentID: "pay_2", Reason: "insufficient_funds"})
	if err != nil || !recorded || o.Status != orders.StatusPaymentFailed {
		t.Fatalf("declined = %+v, %v, %v; want PAYMENT_FAILED, recorded", o, recorded, err)
	}

	// The same message again (a redelivery): nothing happens, no error.
	o, recorded, err = s.RecordOutcome(ctx, "payment", "msg-1", paid.ID, orders.Outcome{PaymentID: "pay_1", Approved: true})
	if err != nil || recorded || o.ID != 0 {
		t.Errorf("redelivery = %+v, %v, %v; want nothing recorded, no error", o, recorded, err)
	}
	// Another message about a final order: ErrNotPending, and its inbox entry rolled back.
	if _, _, err := s.RecordOutcome(ctx, "payment", "msg-3", paid.ID, orders.Outcome{PaymentID: "pay_3"}); !errors.Is(err, orders.ErrNotPending) {
		t.Errorf("outcome for a PAID order = %v, want ErrNotPending", err)
	}
	if _, _, err := s.RecordOutcome(ctx, "payment", "msg-4", 999, orders.Outcome{Approved: true}); !errors.Is(err, orders.ErrNotFound) {
		t.Errorf("outcome for an unknown order = %v, want ErrNotFound", err)
	}

	if got, _ := s.Get(ctx, paid.ID); got.Status != orders.StatusPaid || got.Version != 2 {
		t.Errorf("order %d is %s version %d, want PAID version 2 to stand", paid.ID, got.Status, got.Version)
	}
	if n := count(t, db, "processed_messages"); n != 2 {
		t.Errorf("%d inbox entries, want 2 (msg-1, msg-2; the refused ones rolled back)", n)
	}
	rows := outboxRows(t, db)
	if len(rows) != 4 {
		t.Fatalf("outbox has %d rows, want 2 OrderCreated, then PaymentSucceeded and PaymentFailed", len(rows))
	}
	for i, want := range []struct{ typ, id string }{{events.TypePaymentSucceeded, "1"}, {events.TypePaymentFailed, "2"}} {
		r := rows[2+i]
		if r.Metadata[events.MetaType] != want.typ || r.Metadata[events.MetaSubject] != want.id ||
			r.DestinationTopic != "pre.payments" || r.Metadata[events.MetaCorrelationID] != "corr-7" {
			t.Errorf("outbox row %d = %s for order %s to %s, correlation %q; want %s for order %s to pre.payments, corr-7",
				2+i, r.Metadata[events.MetaType], r.Metadata[events.MetaSubject], r.DestinationTopic,
				r.Metadata[events.MetaCorrelationID], want.typ, want.id)
		}
	}
	var failed events.PaymentFailed
	if err := json.Unmarshal(rows[3].Payload, &failed); err != nil || failed.Reason != "insufficient_funds" || failed.PaymentID != "pay_2" {
		t.Errorf("PaymentFailed = %+v, %v; want reason insufficient_funds, payment pay_2", failed, err)
	}
	// Every connection went back to the pool outside a transaction.
	if o := create(t, s); o.ID != 3 {
		t.Errorf("next order has id %d, want 3", o.ID)
	}
}
