package worker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

// kafkaWorker is a worker consuming real Kafka topics of its own (prefix), on a fresh
// database, running until the test ends.
type kafkaWorker struct {
	prefix string
	w      *Worker
	store  *orders.Store
}

// startKafkaWorker creates prefix's orders and poison topics (one partition each, with
// their extra configuration) and runs a worker on them, paying through paymentURL ("":
// nothing listens).
func startKafkaWorker(t *testing.T, ordersConfig, poisonConfig map[string]*string, paymentURL string) *kafkaWorker {
	t.Helper()
	k := &kafkaWorker{prefix: testenv.TopicPrefix(t), store: orders.NewStore(testenv.DB(t), outbox.New(""))}
	createTopic(t, k.prefix+events.TopicOrders, 1, ordersConfig)
	createTopic(t, k.prefix+events.TopicOrdersPoison, 1, poisonConfig)
	if paymentURL == "" {
		paymentURL = "http://" + testenv.FreeAddr(t)
	}
	w, err := New(k.store, Config{
		Brokers: testenv.Brokers(), TopicPrefix: k.prefix, ConsumerGroup: "worker-" + testenv.ID(),
		PaymentURL: paymentURL,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	k.w = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	return k
}

func createTopic(t *testing.T, name string, partitions int32, config map[string]*string) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Producer("worker-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: config}, false); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	t.Cleanup(func() {
		if admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Producer("worker-test")); err == nil {
			admin.DeleteTopic(name)
			admin.Close()
		}
	})
}

// produce publishes records to the worker's orders topic as a foreign producer would,
// with conf (nil: kafkaconf.Producer).
func (k *kafkaWorker) produce(t *testing.T, conf *sarama.Config, msgs ...*sarama.ProducerMessage) {
	t.Helper()
	if conf == nil {
		conf = kafkaconf.Producer("worker-test")
	}
	prod, err := sarama.NewSyncProducer(testenv.Brokers(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for _, m := range msgs {
		m.Topic = k.prefix + events.TopicOrders
		if _, _, err := prod.SendMessage(m); err != nil {
			t.Fatal(err)
		}
	}
}

// poisoned reads the poison topic until it holds n records.
func (k *kafkaWorker) poisoned(t *testing.T, n int) []*sarama.ConsumerMessage {
	t.Helper()
	got := testenv.Consume(t, k.prefix+events.TopicOrdersPoison, 60*time.Second, func(ms []*sarama.ConsumerMessage) bool {
		return len(ms) >= n
	})
	if len(got) != n {
		t.Fatalf("poison topic holds %d records, want %d", len(got), n)
	}
	return got
}

func rawHeader(k, v string) sarama.RecordHeader {
	return sarama.RecordHeader{Key: []byte(k), Value: []byte(v)}
}

// TestPoisonCopyKeepsTheRecordKey: a poisoned message goes to the poison topic with the
// key of the record it came from, whatever its ce_subject says, and without a key when
// the record had none, so that a replay restores the record as it was.
func TestPoisonCopyKeepsTheRecordKey(t *testing.T) {
	k := startKafkaWorker(t, nil, nil, "")
	created := rawHeader(events.MetaType, events.TypeOrderCreated)
	k.produce(t, nil,
		&sarama.ProducerMessage{Key: sarama.StringEncoder("k-foreign"), Value: sarama.StringEncoder("foreign")},
		&sarama.ProducerMessage{Key: sarama.StringEncoder("k-7"), Value: sarama.StringEncoder("subject 7"),
			Headers: []sarama.RecordHeader{created, rawHeader(events.MetaSubject, "7")}},
		&sarama.ProducerMessage{Value: sarama.StringEncoder("no key"),
			Headers: []sarama.RecordHeader{created, rawHeader(events.MetaSubject, "8")}},
		&sarama.ProducerMessage{Key: sarama.ByteEncoder([]byte{}), Value: sarama.StringEncoder("empty key")},
	)
	type key struct {
		null bool
		key  string
	}
	want := map[string]key{"foreign": {key: "k-foreign"}, "subject 7": {key: "k-7"}, "no key": {null: true}, "empty key": {}}
	for _, m := range k.poisoned(t, len(want)) {
		w, ok := want[string(m.Value)]
		if !ok {
			t.Errorf("unexpected poison record %q", m.Value)
			continue
		}
		if got := (key{m.Key == nil, string(m.Key)}); got != w {
			t.Errorf("poison copy of %q has key %+v, want %+v", m.Value, got, w)
		}
		if v := testenv.Header(m, kafkaconf.MetaRecordKey); v != "" {
			t.Errorf("poison copy of %q carries the header %s=%q; the key belongs in the key", m.Value, kafkaconf.MetaRecordKey, v)
		}
	}
}

// TestOversizedRecordIsPoisonedTruncated: a record the orders topic accepts but that is
// too large for the poison topic is poisoned as a truncated copy that says so and where the
// original is, and the order behind it on the same key is processed: the partition is not
// blocked by a poison publish that cannot succeed.
func TestOversizedRecordIsPoisonedTruncated(t *testing.T) {
	for _, tt := range []struct {
		name         string
		payload      int
		poisonConfig map[string]*string
	}{
		// Refused by the worker's producer (kafkaconf.MaxMessageBytes) before it is sent.
		{"larger than the producer's limit", 2 << 20, nil},
		// Sent, and refused by the broker (MESSAGE_TOO_LARGE).
		{"larger than the poison topic's limit", 512 << 10, map[string]*string{"max.message.bytes": ptr(strconv.Itoa(256 << 10))}},
	} {
		t.Run(tt.name, func(t *testing.T) { testOversizedRecord(t, tt.payload, tt.poisonConfig) })
	}
}

func ptr[T any](v T) *T { return &v }

func testOversizedRecord(t *testing.T, size int, poisonConfig map[string]*string) {
	sim := httptest.NewServer(newSim(t))
	t.Cleanup(sim.Close)
	k := startKafkaWorker(t, map[string]*string{"max.message.bytes": ptr(strconv.Itoa(4 << 20))}, poisonConfig, sim.URL)

	o, msg := newOrder(t, k.store)
	good, err := kafkaconf.Marshaler.Marshal(k.prefix+events.TopicOrders, msg)
	if err != nil {
		t.Fatal(err)
	}
	key := strconv.FormatInt(o.ID, 10)
	payload := bytes.Repeat([]byte("x"), size) // not JSON: permanent
	conf := kafkaconf.Producer("worker-test")
	conf.Producer.MaxMessageBytes = 4 << 20
	k.produce(t, conf,
		&sarama.ProducerMessage{Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(payload),
			Headers: []sarama.RecordHeader{rawHeader(events.MetaType, events.TypeOrderCreated), rawHeader(events.MetaSubject, key)}},
		good, // the same key: handled only once the oversized record is
	)
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		got, err := k.store.Get(context.Background(), o.ID)
		return err == nil && got.Status == orders.StatusPaid, fmt.Sprintf("order %d behind the oversized record: %s, %v; want PAID", o.ID, got.Status, err)
	})

	m := k.poisoned(t, 1)[0]
	if string(m.Key) != key || !bytes.Equal(m.Value, payload[:len(m.Value)]) || len(m.Value) == 0 || len(m.Value) >= len(payload) {
		t.Errorf("poison copy: key %q, %d bytes of the payload; want key %q and a prefix of the %d bytes", m.Key, len(m.Value), key, len(payload))
	}
	for h, want := range map[string]string{
		MetaTruncated:               "payload",
		MetaOriginalRecord:          k.prefix + events.TopicOrders + "/0:0",
		middleware.PoisonedTopicKey: k.prefix + events.TopicOrders,
		events.MetaSubject:          key,
	} {
		if got := testenv.Header(m, h); got != want {
			t.Errorf("poison copy header %s = %q, want %q", h, got, want)
		}
	}
	if n, _ := strconv.Atoi(testenv.Header(m, MetaOriginalBytes)); n < len(payload) {
		t.Errorf("poison copy header %s = %q, want the whole copy's size, at least %d", MetaOriginalBytes, testenv.Header(m, MetaOriginalBytes), len(payload))
	}
	if r := testenv.Header(m, middleware.ReasonForPoisonedKey); !strings.Contains(r, "malformed") {
		t.Errorf("poison reason = %q, want the decode failure", r)
	}
}
