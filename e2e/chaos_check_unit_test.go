package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
)

// TestCheckerCatchesEachViolation feeds the checker a consistent pipeline state, then
// the same state broken in one way per invariant: it must pass the first and name the
// broken invariant in each of the others (a checker that cannot fail proves nothing).
func TestCheckerCatchesEachViolation(t *testing.T) {
	record := func(topic string, partition int32, offset int64, key string, headers ...string) *sarama.ConsumerMessage {
		m := &sarama.ConsumerMessage{Topic: topic, Partition: partition, Offset: offset, Key: []byte(key)}
		for i := 0; i+1 < len(headers); i += 2 {
			m.Headers = append(m.Headers, &sarama.RecordHeader{Key: []byte(headers[i]), Value: []byte(headers[i+1])})
		}
		return m
	}
	event := func(topic string, partition int32, offset int64, id, typ, subject string) *sarama.ConsumerMessage {
		return record(topic, partition, offset, subject, events.MetaID, id, events.MetaType, typ, events.MetaSubject, subject)
	}
	// Order 1 paid, 2 declined, 3 poisoned while PENDING.
	good := func() (*snapshot, *traffic) {
		s := &snapshot{
			orders: map[int64]dbOrder{1: {"PAID", 2}, 2: {"PAYMENT_FAILED", 2}, 3: {"PENDING", 1}},
			keys:   map[string]int64{"k1": 1, "k2": 2, "k3": 3},
			outbox: []outboxEvent{
				{"p.orders", "c1", events.TypeOrderCreated, "1"},
				{"p.orders", "c2", events.TypeOrderCreated, "2"},
				{"p.orders", "c3", events.TypeOrderCreated, "3"},
				{"p.payments", "o1", events.TypePaymentSucceeded, "1"},
				{"p.payments", "o2", events.TypePaymentFailed, "2"},
			},
			kafka: map[string][]*sarama.ConsumerMessage{
				events.TopicOrders: {
					event("p.orders", 0, 0, "c1", events.TypeOrderCreated, "1"),
					event("p.orders", 1, 0, "c2", events.TypeOrderCreated, "2"),
					event("p.orders", 1, 1, "c2", events.TypeOrderCreated, "2"), // a resend: allowed, counted
					event("p.orders", 0, 1, "c3", events.TypeOrderCreated, "3"),
				},
				events.TopicPayments: {
					event("p.payments", 0, 0, "o1", events.TypePaymentSucceeded, "1"),
					event("p.payments", 1, 0, "o2", events.TypePaymentFailed, "2"),
				},
				events.TopicOrdersPoison: {record("p.orders.poison", 0, 0, "3", middleware.ReasonForPoisonedKey, "payment provider answered 500")},
			},
			ledger: []payment{{1, "approved"}, {2, "declined"}},
		}
		tr := &traffic{}
		for i, key := range []string{"k1", "k2", "k3"} {
			body := []byte(`{"id":` + string(rune('1'+i)) + `,"status":"PENDING"}`)
			tr.reqs = append(tr.reqs, &clientRequest{key: key, answers: []answer{{status: 0}, {status: 201, body: body}}})
		}
		return s, tr
	}

	s, tr := good()
	r := s.evaluate(tr, checkOptions{})
	if len(r.violations) > 0 || !s.settled() {
		t.Fatalf("consistent state: settled %v, violations %v", s.settled(), r.violations)
	}
	if r.duplicateDeliveries != 1 || r.poisoned != 1 || r.orders != 3 {
		t.Errorf("figures: %+v, want 1 duplicate delivery, 1 poisoned, 3 orders", r)
	}

	for _, tc := range []struct {
		name, want string
		breakIt    func(*snapshot, *traffic)
		opts       checkOptions
	}{
		{"order answered 201 missing", "I1", func(s *snapshot, _ *traffic) { delete(s.orders, 2) }, checkOptions{}},
		{"order stuck PENDING, not poisoned", "I1", func(s *snapshot, _ *traffic) {
			s.kafka[events.TopicOrdersPoison] = nil
		}, checkOptions{}},
		{"poisoned without a reason", "I1", func(s *snapshot, _ *traffic) {
			s.kafka[events.TopicOrdersPoison][0].Headers = nil
		}, checkOptions{}},
		{"poisoned where nothing may be", "I1", func(*snapshot, *traffic) {}, checkOptions{noPoison: true}},
		{"second order for a key", "I2", func(s *snapshot, _ *traffic) {
			s.orders[4] = dbOrder{"PENDING", 1}
			s.outbox = append(s.outbox, outboxEvent{"p.orders", "c4", events.TypeOrderCreated, "4"})
			s.kafka[events.TopicOrders] = append(s.kafka[events.TopicOrders], event("p.orders", 0, 2, "c4", events.TypeOrderCreated, "4"))
			s.kafka[events.TopicOrdersPoison] = append(s.kafka[events.TopicOrdersPoison],
				record("p.orders.poison", 0, 1, "4", middleware.ReasonForPoisonedKey, "x"))
		}, checkOptions{}},
		{"two answers for one key", "I2", func(_ *snapshot, tr *traffic) {
			tr.reqs[0].answers = append(tr.reqs[0].answers, answer{status: 201, body: []byte(`{"id":2,"status":"PENDING"}`)})
		}, checkOptions{}},
		{"charged twice", "I3", func(s *snapshot, _ *traffic) { s.ledger = append(s.ledger, payment{1, "approved"}) }, checkOptions{}},
		{"charged but failed", "I3", func(s *snapshot, _ *traffic) { s.ledger = append(s.ledger, payment{2, "approved"}) }, checkOptions{}},
		{"outcome applied twice", "I4", func(s *snapshot, _ *traffic) { s.orders[1] = dbOrder{"PAID", 3} }, checkOptions{}},
		{"second outcome event", "I4", func(s *snapshot, _ *traffic) {
			s.outbox = append(s.outbox, outboxEvent{"p.payments", "o1b", events.TypePaymentFailed, "1"})
			s.kafka[events.TopicPayments] = append(s.kafka[events.TopicPayments], event("p.payments", 0, 1, "o1b", events.TypePaymentFailed, "1"))
		}, checkOptions{}},
		{"status went backwards", "I4", func(_ *snapshot, tr *traffic) {
			tr.backwards = append(tr.backwards, "order 1 read PENDING after PAID")
		}, checkOptions{}},
		{"outbox row never on Kafka", "I5", func(s *snapshot, _ *traffic) { s.kafka[events.TopicPayments] = s.kafka[events.TopicPayments][1:] }, checkOptions{}},
		{"half-written order", "I5", func(s *snapshot, _ *traffic) { s.outbox = s.outbox[1:] }, checkOptions{}},
		{"events out of order", "I6", func(s *snapshot, _ *traffic) {
			s.outbox = append(s.outbox, outboxEvent{"p.payments", "o1c", "test.later.v1", "1"})
			s.kafka[events.TopicPayments] = append([]*sarama.ConsumerMessage{event("p.payments", 0, 5, "o1", events.TypePaymentSucceeded, "1")},
				append(s.kafka[events.TopicPayments][1:], event("p.payments", 0, 3, "o1c", "test.later.v1", "1"))...)
		}, checkOptions{}},
		{"events of one order in two partitions", "I6", func(s *snapshot, _ *traffic) {
			s.outbox = append(s.outbox, outboxEvent{"p.payments", "o1c", "test.later.v1", "1"})
			s.kafka[events.TopicPayments] = append(s.kafka[events.TopicPayments], event("p.payments", 1, 7, "o1c", "test.later.v1", "1"))
		}, checkOptions{}},
		{"record keyed other than its order", "I6", func(s *snapshot, _ *traffic) { s.kafka[events.TopicOrders][0].Key = []byte("2") }, checkOptions{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, tr := good()
			tc.breakIt(s, tr)
			r := s.evaluate(tr, tc.opts)
			for _, v := range r.violations {
				if strings.HasPrefix(v, tc.want+":") {
					return
				}
			}
			t.Errorf("no %s violation; got %v", tc.want, r.violations)
		})
	}
}

// TestCacheCheck: I7 forgives a PENDING read of a decided order only for as long as a
// PENDING cache entry lives, and never a wrong final status.
func TestCacheCheck(t *testing.T) {
	start := time.Now()
	served := map[int64]func() string{
		1: func() string { return "PAID" }, // agrees
		2: func() string { // a stale PENDING entry that expires after a second
			if time.Since(start) < time.Second {
				return "PENDING"
			}
			return "PAID"
		},
		3: func() string { return "PENDING" },        // stale for good
		4: func() string { return "PAYMENT_FAILED" }, // wrong final status
	}
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/orders/"), 10, 64)
		if err != nil || served[id] == nil {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, `{"id":%d,"status":%q}`, id, served[id]())
	}))
	defer api.Close()
	s := &snapshot{orders: map[int64]dbOrder{1: {"PAID", 2}, 2: {"PAID", 2}, 3: {"PAID", 2}, 4: {"PAID", 2}}}
	r := &result{}
	(&pipeline{apiURL: api.URL}).checkCache(r, s)
	got := strings.Join(r.violations, "\n")
	if len(r.violations) != 2 || !strings.Contains(got, "/orders/3 says PENDING") || !strings.Contains(got, "/orders/4 says PAYMENT_FAILED") {
		t.Errorf("violations:\n%s\nwant exactly orders 3 (stale for good) and 4 (wrong status)", got)
	}
}
