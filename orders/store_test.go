package orders_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

// outboxRow is a row of the outbox as the relay will read it.
type outboxRow struct {
	DestinationTopic string            `json:"destination_topic"`
	UUID             string            `json:"uuid"`
	Payload          []byte            `json:"payload"`
	Metadata         map[string]string `json:"metadata"`
}

func outboxRows(t *testing.T, db *sql.DB) []outboxRow {
	t.Helper()
	rows, err := db.Query(`SELECT payload FROM watermill_outbox ORDER BY transaction_id, "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var raw []byte
		var r outboxRow
		if err := rows.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("outbox envelope %s: %v", raw, err)
		}
		out = append(out, r)
	}
	return out
}

func count(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func newStore(t *testing.T) (*orders.Store, *sql.DB) {
	db := testenv.DB(t)
	return orders.NewStore(db, outbox.New("pre.")), db
}

// render is a response renderer for Create: the order's id.
func render(o orders.Order) ([]byte, error) { return []byte(strconv.FormatInt(o.ID, 10)), nil }

func create(t *testing.T, s *orders.Store) orders.Order {
	t.Helper()
	resp, _, err := s.Create(context.Background(), orders.NewOrder{CustomerID: "CUST001",
		Amount: money.Amount{Minor: 1999, Currency: "USD"}}, render)
	if err != nil {
		t.Fatal(err)
	}
	o, err := s.Get(context.Background(), resp.OrderID)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestCreateWritesOrderAndEventTogether(t *testing.T) {
	s, db := newStore(t)
	o := create(t, s)
	if o.ID != 1 || o.Status != orders.StatusPending || o.Version != 1 || o.Amount.Minor != 1999 {
		t.Errorf("created %+v, want id 1, PENDING, version 1, 1999 minor units", o)
	}
	got, err := s.Get(context.Background(), o.ID)
	if err != nil || got != o {
		t.Errorf("Get = %+v, %v; want %+v", got, err, o)
	}
	rows := outboxRows(t, db)
	if len(rows) != 1 {
		t.Fatalf("outbox has %d rows, want 1", len(rows))
	}
	r := rows[0]
	if r.DestinationTopic != "pre.orders" {
		t.Errorf("destination = %q, want pre.orders (prefix + topic)", r.DestinationTopic)
	}
	if r.Metadata[events.MetaType] != events.TypeOrderCreated || r.Metadata[events.MetaSubject] != "1" || r.Metadata[events.MetaID] != r.UUID {
		t.Errorf("metadata = %v, want ce_type %s, ce_subject 1, ce_id = uuid", r.Metadata, events.TypeOrderCreated)
	}
	var e events.OrderCreated
	if err := json.Unmarshal(r.Payload, &e); err != nil {
		t.Fatal(err)
	}
	if e.ID != 1 || e.AmountMinor != 1999 || e.Currency != "USD" || e.CustomerID != "CUST001" {
		t.Errorf("event = %+v", e)
	}
}

func TestEventsCarryTheCorrelationID(t *testing.T) {
	s, db := newStore(t)
	ctx := events.WithCorrelationID(context.Background(), "corr-42")
	resp, _, err := s.Create(ctx, orders.NewOrder{CustomerID: "CUST001", Amount: money.Amount{Minor: 1, Currency: "USD"}}, render)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RecordOutcome(ctx, "payment", "msg-1", resp.OrderID, orders.Outcome{PaymentID: "pay_1", Approved: true}); err != nil {
		t.Fatal(err)
	}
	for _, r := range outboxRows(t, db) {
		if got := r.Metadata[events.MetaCorrelationID]; got != "corr-42" {
			t.Errorf("%s correlation_id = %q, want corr-42", r.Metadata[events.MetaType], got)
		}
	}
}

// TestOrderIDs: ids are drawn from the sequence ahead of use, in blocks that grow with
// the rate; one order after another still gets consecutive ids (the first is 1), and ids
// left unused for IDMaxAge are dropped rather than given to a much later order.
func TestOrderIDs(t *testing.T) {
	s, db := newStore(t)
	for want := int64(1); want <= 20; want++ {
		if o := create(t, s); o.ID != want {
			t.Fatalf("order %d got id %d: ids one after another must be consecutive", want, o.ID)
		}
	}
	drawn := lastDrawn(t, db)
	if drawn <= 20 {
		t.Fatalf("sequence at %d after 20 quick orders: want ids drawn ahead in blocks", drawn)
	}
	time.Sleep(orders.IDMaxAge + 100*time.Millisecond)
	if o := create(t, s); o.ID != drawn+1 {
		t.Errorf("order after %s idle got id %d, want %d: ids drawn before must be dropped", orders.IDMaxAge, o.ID, drawn+1)
	}
	if last := lastDrawn(t, db); last != drawn+1 {
		t.Errorf("sequence at %d after a rare order, want %d: after a drop, blocks start again from one", last, drawn+1)
	}
}

// TestOrderIDsConcurrent: requests that find no id at hand wait for the one drawing a
// block instead of each drawing (and doubling) its own, which would waste ids by the
// hundred and a round trip each.
func TestOrderIDsConcurrent(t *testing.T) {
	db, err := postgres.Open(context.Background(), testenv.DatabaseURL(t), 40)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := orders.NewStore(db, outbox.New("pre."))
	const n = 32
	// Connections opened beforehand, so that the requests reach the ids together.
	db.SetMaxIdleConns(n)
	var conns []*sql.Conn
	for range n {
		c, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
	create(t, s) // a draw a moment ago: the next blocks grow
	ids := make([]int64, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			resp, _, err := s.Create(context.Background(), orders.NewOrder{CustomerID: "C",
				Amount: money.Amount{Minor: 1, Currency: "USD"}}, render)
			if err != nil {
				t.Error(err)
			}
			ids[i] = resp.OrderID
		})
	}
	close(start)
	wg.Wait()
	slices.Sort(ids)
	if len(slices.Compact(slices.Clone(ids))) != n || ids[0] < 2 {
		t.Fatalf("ids %v: want %d distinct after order 1", ids, n)
	}
	// One drawer at a time draws 1, 2, 4, ... 32 ids: at most 63 for 32 orders, after 1.
	if last := lastDrawn(t, db); last > 64 {
		t.Errorf("sequence at %d after 1 + %d concurrent orders: ids drawn by several requests at once", last, n)
	}
}

func lastDrawn(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	var last int64
	if err := db.QueryRow(`SELECT last_value FROM orders_id_seq`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	return last
}

func TestFailedTransactionLeavesNothing(t *testing.T) {
	s, db := newStore(t)
	// The response cannot be rendered: the order, its event and the key are rolled back.
	boom := errors.New("boom")
	_, _, err := s.Create(context.Background(), orders.NewOrder{CustomerID: "CUST001",
		Amount: money.Amount{Minor: 1, Currency: "USD"}, Key: "k", Fingerprint: []byte("f"), KeyTTL: time.Hour},
		func(orders.Order) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Create = %v, want boom", err)
	}
	if n, m, k := count(t, db, "orders"), count(t, db, "watermill_outbox"), count(t, db, "idempotency_keys"); n != 0 || m != 0 || k != 0 {
		t.Errorf("after rollback: %d orders, %d outbox rows, %d keys; want none", n, m, k)
	}
	// The connection went back to the pool usable, outside any transaction.
	if o := create(t, s); o.ID == 0 {
		t.Error("no order created after a failed one")
	}
}

func TestCreateWithKey(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	create := func(key, fp string, ttl time.Duration) (orders.StoredResponse, bool, error) {
		return s.Create(ctx, orders.NewOrder{CustomerID: "C", Amount: money.Amount{Minor: 100, Currency: "USD"},
			Key: key, Fingerprint: []byte(fp), KeyTTL: ttl}, render)
	}

	first, replayed, err := create("k1", "a", time.Hour)
	if err != nil || replayed || first.StatusCode != 201 || string(first.Body) != "1" || first.OrderID != 1 {
		t.Fatalf("first = %+v, %v, %v; want order 1, not replayed", first, replayed, err)
	}
	again, replayed, err := create("k1", "a", time.Hour)
	if err != nil || !replayed || again.StatusCode != first.StatusCode || string(again.Body) != string(first.Body) || again.OrderID != 1 {
		t.Fatalf("same request again = %+v, %v, %v; want the stored response, replayed", again, replayed, err)
	}
	if _, _, err := create("k1", "b", time.Hour); !errors.Is(err, orders.ErrKeyReused) {
		t.Errorf("other request with the key = %v, want ErrKeyReused", err)
	}
	if n, m := count(t, db, "orders"), count(t, db, "watermill_outbox"); n != 1 || m != 1 {
		t.Errorf("%d orders, %d outbox rows; want 1 each: replays and reuse write nothing", n, m)
	}

	if _, err := db.Exec(`UPDATE idempotency_keys SET expires_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if resp, replayed, err := create("k1", "b", time.Hour); err != nil || replayed || resp.OrderID != 2 {
		t.Errorf("create over an expired key = %+v, %v, %v; want a new order 2", resp, replayed, err)
	}
}
