package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

// TestOrdersStuck: five orders PENDING for an hour, each stuck somewhere else, and the
// command says where: a dead letter, the outbox, the poison topic, the orders topic
// behind the worker group, and past it (lost). A recent order is not listed.
func TestOrdersStuck(t *testing.T) {
	url := testenv.DatabaseURL(t)
	prefix := testenv.TopicPrefix(t)
	db, err := postgres.Open(context.Background(), url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store := orders.NewStore(db, outbox.New(prefix))
	var ids []string
	for range 6 {
		resp, _, err := store.Create(context.Background(), orders.NewOrder{CustomerID: "C",
			Amount: money.Amount{Minor: 2000, Currency: "USD"}}, func(orders.Order) ([]byte, error) { return nil, nil })
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, strconv.FormatInt(resp.OrderID, 10))
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`UPDATE orders SET created_at = now() - interval '1 hour' WHERE id <= 5`)
	// The relay forwarded every row but order 2's, which stands above its position (as a
	// row of a transaction still running would), and set order 1's row aside.
	exec(`INSERT INTO watermill_offsets_outbox (consumer_group, last_processed_transaction_id, offset_acked)
		SELECT 'relay', transaction_id, "offset" FROM watermill_outbox ORDER BY transaction_id DESC, "offset" DESC LIMIT 1`)
	exec(`UPDATE watermill_outbox SET transaction_id = '999999999999'::xid8 WHERE payload -> 'metadata' ->> 'ce_subject' = '2'`)
	exec(`INSERT INTO outbox_dead_letters (transaction_id, "offset", uuid, payload, reason)
		SELECT transaction_id, "offset", uuid, payload::text, 'kafka: message too large' FROM watermill_outbox
		WHERE payload -> 'metadata' ->> 'ce_subject' = '1'`)

	poisonCreateTopic(t, prefix+events.TopicOrders, 2)
	poisonCreateTopic(t, prefix+events.TopicOrdersPoison, 1)
	prod, err := sarama.NewSyncProducer(testenv.Brokers(), kafkaconf.Producer("orderctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	send := func(topic, key string, headers ...sarama.RecordHeader) {
		t.Helper()
		if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(key),
			Value: sarama.StringEncoder("{}"), Headers: headers}); err != nil {
			t.Fatal(err)
		}
	}
	send(prefix+events.TopicOrdersPoison, "3", sarama.RecordHeader{Key: []byte(events.MetaSubject), Value: []byte("3")},
		sarama.RecordHeader{Key: []byte(middleware.ReasonForPoisonedKey), Value: []byte("payment provider rejected the request with 400")})
	send(prefix+events.TopicOrders, "4")
	send(prefix+events.TopicOrders, "5")

	group := prefix + "worker"
	stuck := func() map[string]string {
		t.Helper()
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"orders", "stuck", "--older-than", "30m"}, envconf.Map(map[string]string{
			"DATABASE_URL": url, "KAFKA_BROKERS": strings.Join(testenv.Brokers(), ","), "KAFKA_TOPIC_PREFIX": prefix,
			"WORKER_GROUP": group}), &out, &errOut)
		if err != nil {
			t.Fatalf("orders stuck: %v\n%s", err, errOut.String())
		}
		t.Logf("orders stuck:\n%s", out.String())
		where := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n")[1:] {
			f := strings.Fields(line)
			where[f[0]] = line
		}
		return where
	}
	got := stuck()
	for id, want := range map[string]string{"1": "dead letter", "2": "in outbox", "3": "poisoned", "4": "not consumed", "5": "not consumed"} {
		if !strings.Contains(got[id], want) {
			t.Errorf("order %s: %q, want %q", id, got[id], want)
		}
	}
	if _, ok := got[ids[5]]; ok || len(got) != 5 {
		t.Errorf("listed %d orders (%v), want orders 1 to 5 and not the recent 6", len(got), got)
	}
	if !strings.Contains(got["1"], "message too large") || !strings.Contains(got["3"], "0:0") {
		t.Errorf("details missing: %q, %q", got["1"], got["3"])
	}

	// The worker group consumes the orders topic to its end: 4 and 5 were read and are
	// still PENDING, not poisoned: lost.
	client, err := sarama.NewClient(testenv.Brokers(), kafkaconf.Consumer("orderctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	om, err := sarama.NewOffsetManagerFromClient(group, client)
	if err != nil {
		t.Fatal(err)
	}
	for p := range int32(2) {
		end, err := client.GetOffset(prefix+events.TopicOrders, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatal(err)
		}
		pom, err := om.ManagePartition(prefix+events.TopicOrders, p)
		if err != nil {
			t.Fatal(err)
		}
		pom.MarkOffset(end, "")
		pom.Close()
	}
	om.Commit()
	om.Close()
	got = stuck()
	for _, id := range []string{"4", "5"} {
		if !strings.Contains(got[id], "lost") {
			t.Errorf("order %s: %q, want lost", id, got[id])
		}
	}
}
