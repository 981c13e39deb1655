package worker

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/paymentsim"
)

// fixture is a worker on a fresh database with a payment provider the test controls.
type fixture struct {
	w     *Worker
	store *orders.Store
	db    *sql.DB
	calls atomic.Int32
}

func newFixture(t *testing.T, provider http.Handler) *fixture {
	t.Helper()
	f := &fixture{db: testenv.DB(t)}
	f.store = orders.NewStore(f.db, outbox.New(""))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		provider.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	f.w = &Worker{
		metrics:  m,
		store:    f.store,
		payments: &PaymentClient{BaseURL: srv.URL, HTTP: srv.Client()},
		logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	return f
}

// order creates an order and returns the message its OrderCreated event travels in.
func (f *fixture) order(t *testing.T) (orders.Order, *message.Message) {
	t.Helper()
	return newOrder(t, f.store)
}

// newOrder creates an order in store and returns the message its OrderCreated event
// travels in.
func newOrder(t *testing.T, store *orders.Store) (orders.Order, *message.Message) {
	t.Helper()
	resp, _, err := store.Create(context.Background(), orders.NewOrder{CustomerID: "CUST001",
		Amount: money.Amount{Minor: 20000, Currency: "USD"}}, func(orders.Order) ([]byte, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	o, err := store.Get(context.Background(), resp.OrderID)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := events.NewMessage(events.OrderCreated{ID: o.ID, CustomerID: o.CustomerID,
		AmountMinor: o.Amount.Minor, Currency: o.Amount.Currency, CreatedAt: o.CreatedAt}, o.CreatedAt)
	if err != nil {
		t.Fatal(err)
	}
	return o, msg
}

func (f *fixture) status(t *testing.T, id int64) orders.Status {
	t.Helper()
	o, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return o.Status
}

// outcomeTypes lists the ce_type of every outbox row after the first (the OrderCreated).
func (f *fixture) outcomeTypes(t *testing.T) []string {
	t.Helper()
	rows, err := f.db.Query(`SELECT payload FROM watermill_outbox ORDER BY transaction_id, "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var types []string
	for rows.Next() {
		var raw []byte
		var env struct{ Metadata map[string]string }
		if err := rows.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(raw, &env)
		if typ := env.Metadata[events.MetaType]; typ != events.TypeOrderCreated {
			types = append(types, typ)
		}
	}
	return types
}

func answer(code int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		io.WriteString(w, body)
	})
}

func TestApprovedOrderIsPaidOnceAcrossRedeliveries(t *testing.T) {
	f := newFixture(t, newSim(t))
	o, msg := f.order(t)
	for i := 0; i < 3; i++ { // the first delivery and two duplicates
		if err := f.w.handle(msg.Copy()); err != nil {
			t.Fatalf("delivery %d: %v", i+1, err)
		}
	}
	if got := f.status(t, o.ID); got != orders.StatusPaid {
		t.Errorf("status = %s, want PAID", got)
	}
	if got := f.outcomeTypes(t); len(got) != 1 || got[0] != events.TypePaymentSucceeded {
		t.Errorf("outcome events = %v, want exactly one %s", got, events.TypePaymentSucceeded)
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("payment provider called %d times, want 1 (duplicates must not reach it)", got)
	}
}

func TestDuplicateAfterCrashBeforeCommitChargesOnce(t *testing.T) {
	// The provider charged, but the worker died before its commit: the redelivery calls
	// the provider again with the same idempotency key and must get the same charge.
	sim := newSim(t)
	f := newFixture(t, sim)
	o, msg := f.order(t)
	if _, err := f.w.payments.Charge(context.Background(), o.PaymentKey, o.ID, o.Amount.Minor, o.Amount.Currency); err != nil {
		t.Fatal(err)
	}
	if err := f.w.handle(msg); err != nil {
		t.Fatal(err)
	}
	if ledger := ledgerOf(t, sim, o.ID); len(ledger) != 1 {
		t.Errorf("ledger has %d charges for the order, want 1", len(ledger))
	}
	if got := f.status(t, o.ID); got != orders.StatusPaid {
		t.Errorf("status = %s, want PAID", got)
	}
}

func TestDeclineIsAnOutcomeNotAnError(t *testing.T) {
	f := newFixture(t, answer(http.StatusPaymentRequired, `{"id":"pay_9","status":"declined","reason":"insufficient_funds"}`))
	o, msg := f.order(t)
	if err := f.w.handle(msg); err != nil {
		t.Fatalf("handle = %v, want nil: a decline is not retried", err)
	}
	if got := f.status(t, o.ID); got != orders.StatusPaymentFailed {
		t.Errorf("status = %s, want PAYMENT_FAILED", got)
	}
	if got := f.outcomeTypes(t); len(got) != 1 || got[0] != events.TypePaymentFailed {
		t.Errorf("outcome events = %v, want exactly one %s", got, events.TypePaymentFailed)
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		name          string
		provider      http.Handler
		msg           func(f *fixture, t *testing.T) *message.Message
		wantPermanent bool
	}{
		{"provider 500 is transient", answer(500, "oops"), orderMsg, false},
		{"unreadable provider answer is transient", answer(201, "<html>"), orderMsg, false},
		{"provider 400 is permanent", answer(400, "bad"), orderMsg, true},
		{"unknown order is permanent", answer(201, ""), func(f *fixture, t *testing.T) *message.Message {
			msg, _ := events.NewMessage(events.OrderCreated{ID: 42, AmountMinor: 1, Currency: "USD"}, testTime)
			return msg
		}, true},
		{"undecodable payload is permanent", answer(201, ""), func(f *fixture, t *testing.T) *message.Message {
			msg := message.NewMessage("m1", []byte("{not json"))
			msg.Metadata.Set(events.MetaType, events.TypeOrderCreated)
			return msg
		}, true},
		{"unknown event type is permanent", answer(201, ""), func(f *fixture, t *testing.T) *message.Message {
			msg := message.NewMessage("m2", []byte(`{"orderId":1}`))
			msg.Metadata.Set(events.MetaType, "orders.order.exploded.v1")
			return msg
		}, true},
		{"payment event on the orders topic is permanent", answer(201, ""), func(f *fixture, t *testing.T) *message.Message {
			msg, _ := events.NewMessage(events.PaymentFailed{ID: 1, Reason: "x"}, testTime)
			return msg
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.provider)
			err := f.w.handle(tt.msg(f, t))
			if err == nil {
				t.Fatal("handle = nil, want an error")
			}
			if got := isPermanent(err); got != tt.wantPermanent {
				t.Errorf("isPermanent(%v) = %v, want %v", err, got, tt.wantPermanent)
			}
			if !shouldPoison(err) {
				t.Errorf("shouldPoison(%v) = false, want true: the message, not a dependency, is at fault", err)
			}
			var n int
			f.db.QueryRow(`SELECT count(*) FROM orders WHERE status <> 'PENDING'`).Scan(&n)
			if n != 0 || len(f.outcomeTypes(t)) != 0 {
				t.Errorf("a failed attempt changed %d orders / wrote outcome events %v; want nothing", n, f.outcomeTypes(t))
			}
		})
	}
}

var testTime = mustTime("2026-01-02T03:04:05Z")

func orderMsg(f *fixture, t *testing.T) *message.Message {
	_, msg := f.order(t)
	return msg
}

// TestUnavailableIsNeverPoisoned: failures to reach a dependency must not poison.
func TestUnavailableIsNeverPoisoned(t *testing.T) {
	t.Run("provider unreachable", func(t *testing.T) {
		f := newFixture(t, answer(201, ""))
		f.w.payments.BaseURL = "http://" + testenv.FreeAddr(t) // nothing listens
		_, msg := f.order(t)
		err := f.w.handle(msg)
		if err == nil || shouldPoison(err) {
			t.Errorf("handle = %v, shouldPoison = %v; want an error that is not poisoned", err, err != nil && shouldPoison(err))
		}
	})
	for _, code := range []int{503, 429, 502, 504} {
		t.Run(fmt.Sprintf("provider answers %d", code), func(t *testing.T) {
			f := newFixture(t, answer(code, "maintenance"))
			_, msg := f.order(t)
			err := f.w.handle(msg)
			if err == nil || shouldPoison(err) || isPermanent(err) {
				t.Errorf("handle = %v, shouldPoison = %v; want an error that is not poisoned", err, err != nil && shouldPoison(err))
			}
		})
	}
	// Answers that say the provider refuses everyone: our credentials or PAYMENT_URL are
	// wrong, or it takes no requests. Once "permanent", they poisoned every order at once.
	for _, code := range []int{401, 403, 404, 405, 407, 408} {
		t.Run(fmt.Sprintf("provider answers %d", code), func(t *testing.T) {
			f := newFixture(t, answer(code, "no"))
			_, msg := f.order(t)
			err := f.w.handle(msg)
			if err == nil || shouldPoison(err) || !isProviderDown(err) {
				t.Errorf("handle = %v, shouldPoison = %v; want a provider-down error, not poisoned", err, err != nil && shouldPoison(err))
			}
		})
	}
	t.Run("database down", func(t *testing.T) {
		f := newFixture(t, answer(201, ""))
		_, msg := f.order(t)
		dead, err := postgres.New("postgres://u:p@"+testenv.FreeAddr(t)+"/x?sslmode=disable", 1)
		if err != nil {
			t.Fatal(err)
		}
		defer dead.Close()
		f.w.store = orders.NewStore(dead, outbox.New("")) // nothing listens there
		err = f.w.handle(msg)
		if err == nil || shouldPoison(err) {
			t.Errorf("handle = %v, shouldPoison = %v; want an error that is not poisoned", err, err != nil && shouldPoison(err))
		}
	})
}

func TestPermanentWrapping(t *testing.T) {
	base := errors.New("x")
	if isPermanent(base) || !isPermanent(permanent(base)) || !errors.Is(permanent(base), base) {
		t.Error("permanent() must mark an error and keep it unwrappable")
	}
}

func mustTime(s string) (tm time.Time) {
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return tm
}

// newSim returns an in-memory payment simulator with no random behaviours.
func newSim(t *testing.T) *paymentsim.Server {
	t.Helper()
	sim, err := paymentsim.New(paymentsim.Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return sim
}

// A record for another order reusing an event id (a foreign producer's, or a copy's) is
// not a redelivery: the inbox is keyed by the order as well as the id, so the second
// order is charged and recorded. Keyed by the id alone, it was charged, its inbox entry
// conflicted, and it was acked as already processed: charged, never recorded.
func TestEventIDReusedForAnotherOrderIsRecorded(t *testing.T) {
	f := newFixture(t, newSim(t))
	a, msgA := f.order(t)
	b, msgB := f.order(t)
	msgB.UUID = msgA.UUID
	msgB.Metadata.Set(events.MetaID, msgA.Metadata.Get(events.MetaID))
	for _, msg := range []*message.Message{msgA, msgB} {
		if err := f.w.handle(msg); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []orders.Order{a, b} {
		if got := f.status(t, o.ID); got != orders.StatusPaid {
			t.Errorf("order %d: status = %s, want PAID", o.ID, got)
		}
	}
	if got := f.calls.Load(); got != 2 {
		t.Errorf("payment provider called %d times, want 2", got)
	}
}

// A record without a usable id (no ce_id and no Watermill uuid, or an absurd one) cannot
// be deduplicated, so it is poisoned before anything is charged.
func TestMessageWithoutUsableIDIsPoisonedUncharged(t *testing.T) {
	f := newFixture(t, newSim(t))
	for name, id := range map[string]string{"none": "", "blank": "  ", "huge": strings.Repeat("x", 300)} {
		o, msg := f.order(t)
		msg.UUID = id
		msg.Metadata.Set(events.MetaID, id)
		if err := f.w.handle(msg); !isPermanent(err) {
			t.Errorf("%s: handle = %v, want a permanent error", name, err)
		}
		if got := f.status(t, o.ID); got != orders.StatusPending {
			t.Errorf("%s: status = %s, want PENDING", name, got)
		}
	}
	if got := f.calls.Load(); got != 0 {
		t.Errorf("payment provider called %d times, want 0", got)
	}
}

// The payment idempotency key is unique across databases: two databases (a restored or
// reset one with the provider's ledger kept, or two environments sharing a provider)
// both have an order 1, and each is charged on its own. With "order-<id>" the second
// was "paid" by the first one's charge.
func TestPaymentKeyIsUniqueAcrossDatabases(t *testing.T) {
	sim := newSim(t)
	f1, f2 := newFixture(t, sim), newFixture(t, sim)
	o1, m1 := f1.order(t)
	o2, m2 := f2.order(t)
	if o1.ID != o2.ID {
		t.Fatalf("order ids %d and %d; the test needs the same id in both databases", o1.ID, o2.ID)
	}
	for _, c := range []struct {
		f   *fixture
		msg *message.Message
	}{{f1, m1}, {f2, m2}} {
		if err := c.f.w.handle(c.msg); err != nil {
			t.Fatal(err)
		}
		if err := c.f.w.handle(c.msg.Copy()); err != nil { // a redelivery: the same key again
			t.Fatal(err)
		}
	}
	ledger := ledgerOf(t, sim, o1.ID)
	if len(ledger) != 2 || ledger[0].IdempotencyKey == ledger[1].IdempotencyKey {
		t.Fatalf("ledger of order %d = %+v, want two charges under different keys", o1.ID, ledger)
	}
	for _, p := range ledger {
		if !strings.HasPrefix(p.IdempotencyKey, fmt.Sprintf("order-%d-", o1.ID)) {
			t.Errorf("key %q does not name the order", p.IdempotencyKey)
		}
	}
}

// An order created before payment keys existed (its key is NULL) keeps the key it may
// already have been charged under, "order-<id>", so an upgrade never charges it twice.
func TestOrderFromBeforePaymentKeysKeepsItsKey(t *testing.T) {
	sim := newSim(t)
	f := newFixture(t, sim)
	o, msg := f.order(t)
	if _, err := f.db.Exec(`UPDATE orders SET payment_key = NULL WHERE id = $1`, o.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.w.handle(msg); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("order-%d", o.ID)
	if ledger := ledgerOf(t, sim, o.ID); len(ledger) != 1 || ledger[0].IdempotencyKey != want {
		t.Errorf("ledger = %+v, want one charge under %q", ledger, want)
	}
}

func ledgerOf(t *testing.T, sim *paymentsim.Server, orderID int64) []paymentsim.Payment {
	t.Helper()
	rec := httptest.NewRecorder()
	sim.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, fmt.Sprintf("/payments?orderId=%d", orderID), nil))
	var out []paymentsim.Payment
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("ledger: %v: %s", err, rec.Body)
	}
	return out
}
