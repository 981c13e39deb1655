// Package e2e drives the four daemons as real processes against the real local stack.
package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
)

// pipeline is the whole system for one test: its own database, topics and ports.
type pipeline struct {
	apiURL, paymentURL, topicPrefix string
}

func startPipeline(t *testing.T) pipeline {
	t.Helper()
	dbURL := testenv.DatabaseURL(t)
	prefix := testenv.TopicPrefix(t)
	brokers := strings.Join(testenv.Brokers(), ",")
	apiAddr, payAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	relayAdmin, workerAdmin := testenv.FreeAddr(t), testenv.FreeAddr(t)
	p := pipeline{apiURL: "http://" + apiAddr, paymentURL: "http://" + payAddr, topicPrefix: prefix}

	startDaemon(t, "paymentsim", []string{"HTTP_ADDR=" + payAddr}, p.paymentURL+"/healthz")
	startDaemon(t, "api", []string{"HTTP_ADDR=" + apiAddr, "DATABASE_URL=" + dbURL, "KAFKA_TOPIC_PREFIX=" + prefix,
		"REDIS_URL=" + testenv.RedisURL(), "CACHE_KEY_PREFIX=" + prefix + "order:"},
		p.apiURL+"/healthz")
	startDaemon(t, "relay", []string{"ADMIN_ADDR=" + relayAdmin, "DATABASE_URL=" + dbURL, "KAFKA_BROKERS=" + brokers},
		"http://"+relayAdmin+"/healthz")
	startDaemon(t, "worker", []string{"ADMIN_ADDR=" + workerAdmin, "DATABASE_URL=" + dbURL, "KAFKA_BROKERS=" + brokers,
		"KAFKA_TOPIC_PREFIX=" + prefix, "WORKER_GROUP=worker-" + testenv.ID(), "PAYMENT_URL=" + p.paymentURL,
		"REDIS_URL=" + testenv.RedisURL(), "CACHE_KEY_PREFIX=" + prefix + "order:"},
		"http://"+workerAdmin+"/healthz")
	return p
}

type order struct {
	ID         int64       `json:"id"`
	CustomerID string      `json:"customerId"`
	Amount     json.Number `json:"amount"`
	Currency   string      `json:"currency"`
	Status     string      `json:"status"`
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestOrderFlowsEndToEnd sends the seed README's request and follows the order through
// Postgres, the relay, Kafka, the worker and the payment simulator to PAID, with both
// events on Kafka and exactly one charge.
func TestOrderFlowsEndToEnd(t *testing.T) {
	p := startPipeline(t)

	req, _ := http.NewRequest(http.MethodPost, p.apiURL+"/orders",
		strings.NewReader(`{"customerId": "CUST001", "amount": 200, "currency": "USD"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "abc123")
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /orders = %d %s, want 201", resp.StatusCode, body)
	}
	var created order
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	want := order{ID: 1, CustomerID: "CUST001", Amount: "200", Currency: "USD", Status: "PENDING"}
	if created != want {
		t.Errorf("created = %+v, want %+v", created, want)
	}
	if got := resp.Header.Get("Location"); got != "/orders/1" {
		t.Errorf("Location = %q, want /orders/1", got)
	}

	var final order
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		req, _ := http.NewRequest(http.MethodGet, p.apiURL+"/orders/1", nil)
		resp, body := do(t, req)
		if resp.StatusCode != http.StatusOK {
			return false, "GET /orders/1 = " + resp.Status
		}
		json.Unmarshal(body, &final)
		return final.Status == "PAID", "order status " + final.Status
	})

	hasType := func(typ string) func([]*sarama.ConsumerMessage) bool {
		return func(ms []*sarama.ConsumerMessage) bool {
			for _, m := range ms {
				if testenv.Header(m, events.MetaType) == typ {
					return true
				}
			}
			return false
		}
	}
	for _, tc := range []struct{ topic, typ string }{
		{events.TopicOrders, events.TypeOrderCreated},
		{events.TopicPayments, events.TypePaymentSucceeded},
	} {
		msgs := testenv.Consume(t, p.topicPrefix+tc.topic, 20*time.Second, hasType(tc.typ))
		if len(msgs) != 1 {
			t.Fatalf("%s holds %d messages, want 1 (%s)", tc.topic, len(msgs), tc.typ)
		}
		m := msgs[0]
		if string(m.Key) != "1" || testenv.Header(m, events.MetaType) != tc.typ || testenv.Header(m, events.MetaSubject) != "1" {
			t.Errorf("%s message: key %q, ce_type %q, ce_subject %q; want key 1, %s, subject 1",
				tc.topic, m.Key, testenv.Header(m, events.MetaType), testenv.Header(m, events.MetaSubject), tc.typ)
		}
	}

	req, _ = http.NewRequest(http.MethodGet, p.paymentURL+"/payments?orderId=1", nil)
	_, body = do(t, req)
	var charges []struct{ Status string }
	if err := json.Unmarshal(body, &charges); err != nil {
		t.Fatalf("ledger: %v: %s", err, body)
	}
	if len(charges) != 1 || charges[0].Status != "approved" {
		t.Errorf("ledger for order 1 = %s, want exactly one approved charge", body)
	}
}
