package relay_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/relay"
)

// TestForwardsOutboxToKafka writes orders through the store and checks that each
// OrderCreated reaches Kafka keyed by order id, with its CloudEvents headers and the
// outbox message id as ce_id.
func TestForwardsOutboxToKafka(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	store := orders.NewStore(db, outbox.New(prefix))
	const n = 20
	for i := 0; i < n; i++ {
		_, _, err := store.Create(context.Background(), orders.NewOrder{CustomerID: "C" + strconv.Itoa(i),
			Amount: money.Amount{Minor: int64(100 + i), Currency: "EUR"}}, func(orders.Order) ([]byte, error) { return nil, nil })
		if err != nil {
			t.Fatal(err)
		}
	}

	r, err := relay.New(db, relay.Config{Brokers: testenv.Brokers(), PollInterval: 20 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})

	msgs := testenv.Consume(t, prefix+events.TopicOrders, 30*time.Second,
		func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= n })
	if len(msgs) != n {
		t.Fatalf("got %d messages on Kafka, want %d", len(msgs), n)
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		var e events.OrderCreated
		if err := json.Unmarshal(m.Value, &e); err != nil {
			t.Fatalf("value %s: %v", m.Value, err)
		}
		key := strconv.FormatInt(e.ID, 10)
		if string(m.Key) != key || testenv.Header(m, events.MetaSubject) != key {
			t.Errorf("order %d: key %q, ce_subject %q; want both %q", e.ID, m.Key, testenv.Header(m, events.MetaSubject), key)
		}
		if testenv.Header(m, events.MetaType) != events.TypeOrderCreated || testenv.Header(m, events.MetaSpecVersion) != "1.0" ||
			testenv.Header(m, events.MetaContentType) != "application/json" {
			t.Errorf("order %d: headers %v", e.ID, m.Headers)
		}
		seen[key] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct orders on Kafka, want %d", len(seen), n)
	}

	var ids []string
	rows, err := db.Query(`SELECT payload->>'uuid' FROM watermill_outbox`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		rows.Scan(&id)
		ids = append(ids, id)
	}
	ceIDs := map[string]bool{}
	for _, m := range msgs {
		ceIDs[testenv.Header(m, events.MetaID)] = true
	}
	for _, id := range ids {
		if !ceIDs[id] {
			t.Errorf("outbox message %s has no Kafka message with that ce_id", id)
		}
	}
}
