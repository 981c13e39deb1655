package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/worker"
)

// fastRetries keep the retry ladder short in tests.
var fastRetries = []string{"WORKER_MAX_RETRIES=3", "WORKER_RETRY_INTERVAL=50ms", "WORKER_RETRY_MAX_INTERVAL=200ms"}

// poisoned reads the poison topic until it holds a message for each order id (by
// ce_subject) and returns them by subject.
func (p *pipeline) poisoned(t *testing.T, subjects ...string) map[string]*sarama.ConsumerMessage {
	t.Helper()
	want := map[string]bool{}
	for _, s := range subjects {
		want[s] = true
	}
	got := map[string]*sarama.ConsumerMessage{}
	testenv.Consume(t, p.topicPrefix+events.TopicOrdersPoison, 60*time.Second, func(ms []*sarama.ConsumerMessage) bool {
		for _, m := range ms {
			if s := testenv.Header(m, events.MetaSubject); want[s] {
				got[s] = m
			}
		}
		return len(got) == len(want)
	})
	if len(got) != len(want) {
		t.Fatalf("poison topic holds %d of the %d expected messages: %v", len(got), len(want), got)
	}
	return got
}

// TestPaymentBehaviours sends one order per paymentsim behaviour through the real
// pipeline and checks where each ends, and that no order is charged twice.
func TestPaymentBehaviours(t *testing.T) {
	p := startPipeline(t, options{
		paymentsimEnv: []string{"PAYMENTSIM_TIMEOUT_DELAY=3s"},
		workerEnv:     append([]string{"PAYMENT_TIMEOUT=1s"}, fastRetries...),
	})
	cases := []struct {
		name, amount string
		status       string // final status
		approved     int    // approved charges in the ledger
		declined     int
		poisoned     bool
	}{
		{"approve", "19.00", "PAID", 1, 0, false},
		{"insufficient funds", "19.51", "PAYMENT_FAILED", 0, 1, false},
		{"card declined", "19.52", "PAYMENT_FAILED", 0, 1, false},
		{"503 twice then approve", "19.63", "PAID", 1, 0, false},
		{"timeout after charging", "19.72", "PAID", 1, 0, false},
		{"connection reset then approve", "19.73", "PAID", 1, 0, false},
		{"permanent 500", "19.61", "PENDING", 0, 0, true},
	}
	ids := make([]int64, len(cases))
	for i, c := range cases {
		ids[i] = p.create(t, c.amount, "USD")
	}
	var poisonSubjects []string
	for i, c := range cases {
		if c.poisoned {
			poisonSubjects = append(poisonSubjects, strconv.FormatInt(ids[i], 10))
			continue
		}
		p.waitStatus(t, ids[i], c.status, 60*time.Second)
	}
	poison := p.poisoned(t, poisonSubjects...)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := p.status(t, ids[i]); got != c.status {
				t.Errorf("status = %s, want %s", got, c.status)
			}
			var approved, declined int
			for _, ch := range p.ledger(t, ids[i]) {
				switch ch.Status {
				case "approved":
					approved++
				case "declined":
					declined++
				}
			}
			if approved != c.approved || declined != c.declined {
				t.Errorf("ledger: %d approved, %d declined; want %d, %d", approved, declined, c.approved, c.declined)
			}
			if !c.poisoned {
				return
			}
			m := poison[strconv.FormatInt(ids[i], 10)]
			if reason := testenv.Header(m, middleware.ReasonForPoisonedKey); !strings.Contains(reason, "500") {
				t.Errorf("poison reason = %q, want the provider's 500", reason)
			}
			if got := testenv.Header(m, worker.MetaAttempts); got != "4" {
				t.Errorf("attempts = %q, want 4 (1 + 3 retries)", got)
			}
			if testenv.Header(m, events.MetaType) != events.TypeOrderCreated || string(m.Key) != strconv.FormatInt(ids[i], 10) {
				t.Errorf("poisoned message lost its type or key: key %q, headers %v", m.Key, m.Headers)
			}
		})
	}
}

// produce publishes raw records to a topic, as a foreign producer would.
func produce(t *testing.T, topic string, msgs ...*sarama.ProducerMessage) {
	t.Helper()
	prod, err := sarama.NewSyncProducer(testenv.Brokers(), kafkaconf.Producer("e2e"))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for _, m := range msgs {
		m.Topic = topic
	}
	if err := prod.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
}

func header(k, v string) sarama.RecordHeader {
	return sarama.RecordHeader{Key: []byte(k), Value: []byte(v)}
}

// TestBadEventsArePoisonedWithoutBlocking puts garbage ahead of a good order on its
// partition (same key): the garbage goes to the poison topic at once and the order
// behind it is paid.
func TestBadEventsArePoisonedWithoutBlocking(t *testing.T) {
	p := startPipeline(t, options{workerEnv: fastRetries})
	created := header(events.MetaType, events.TypeOrderCreated)
	produce(t, p.topicPrefix+events.TopicOrders,
		&sarama.ProducerMessage{Key: sarama.StringEncoder("1"), Value: sarama.StringEncoder("{not json"),
			Headers: []sarama.RecordHeader{created, header(events.MetaSubject, "1")}},
		&sarama.ProducerMessage{Key: sarama.StringEncoder("1"), Value: sarama.StringEncoder(`{"orderId":1}`),
			Headers: []sarama.RecordHeader{header(events.MetaType, "orders.order.exploded.v1"), header(events.MetaSubject, "1")}},
		&sarama.ProducerMessage{Key: sarama.StringEncoder("1"), Value: sarama.StringEncoder(`{"orderId":999999,"amountMinor":1,"currency":"USD"}`),
			Headers: []sarama.RecordHeader{created, header(events.MetaSubject, "999999"), header(events.MetaID, "foreign-999999")}},
	)
	id := p.create(t, "5", "USD") // order 1: the same key, behind the garbage
	if id != 1 {
		t.Fatalf("order id = %d, want 1 (a fresh database)", id)
	}
	p.waitStatus(t, id, "PAID", 30*time.Second)

	var reasons []string
	testenv.Consume(t, p.topicPrefix+events.TopicOrdersPoison, 30*time.Second, func(ms []*sarama.ConsumerMessage) bool {
		reasons = reasons[:0]
		for _, m := range ms {
			reasons = append(reasons, testenv.Header(m, middleware.ReasonForPoisonedKey))
		}
		return len(ms) >= 3
	})
	// The poisoned messages keep their keys, so they may sit on different partitions of
	// the poison topic: match reasons regardless of order.
	if len(reasons) != 3 {
		t.Fatalf("poison reasons = %q, want 3", reasons)
	}
	for _, want := range []string{"malformed event", "unknown event type", "order not found"} {
		found := false
		for _, r := range reasons {
			found = found || strings.Contains(r, want)
		}
		if !found {
			t.Errorf("no poison reason mentions %q: %q", want, reasons)
		}
	}
}
