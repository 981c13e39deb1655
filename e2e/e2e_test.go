// Package e2e drives the four daemons as real processes against the real local stack.
package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
)

// pipeline is the whole system for one test: its own database, topics and ports.
type pipeline struct {
	t                               *testing.T
	apiURL, paymentURL, topicPrefix string
	dbURL, brokers, cachePrefix     string
	redisURL, ledgerPath            string
	api, relay, paymentsim          *daemon
	workers                         []*daemon
	workerGroup                     string
	workerEnv                       []string // extra environment of the workers, for startWorker
}

// options change how startPipeline runs the daemons.
type options struct {
	env           []string       // extra environment for every daemon
	workers       int            // worker processes in the group; default 1
	paymentsimEnv []string       // extra environment for paymentsim
	workerEnv     []string       // extra environment for every worker
	stack         *testenv.Stack // private Postgres and/or Kafka instead of the shared ones
	redisURL      string         // a private Redis instead of the shared one
}

func startPipeline(t *testing.T, opts ...options) *pipeline {
	t.Helper()
	var o options
	if len(opts) > 0 {
		o = opts[0]
	}
	p := &pipeline{t: t, topicPrefix: testenv.TopicPrefix(t), redisURL: testenv.RedisURL(),
		ledgerPath: filepath.Join(t.TempDir(), "ledger.jsonl")}
	p.dbURL, p.brokers = testenv.DatabaseURL(t), strings.Join(testenv.Brokers(), ",")
	if o.stack != nil && o.stack.Has("postgres") {
		p.dbURL = o.stack.DatabaseURL()
	}
	if o.stack != nil && o.stack.Has("kafka") {
		p.brokers = strings.Join(o.stack.Brokers(), ",")
	}
	if o.redisURL != "" {
		p.redisURL = o.redisURL
	}
	p.cachePrefix = p.topicPrefix + "order:"
	apiAddr, payAddr, relayAdmin := testenv.FreeAddr(t), testenv.FreeAddr(t), testenv.FreeAddr(t)
	p.apiURL, p.paymentURL = "http://"+apiAddr, "http://"+payAddr

	with := func(env []string, extra ...[]string) []string {
		for _, e := range extra {
			env = append(env, e...)
		}
		return env
	}
	p.paymentsim = startDaemon(t, "paymentsim", with([]string{"HTTP_ADDR=" + payAddr, "PAYMENTSIM_LEDGER=" + p.ledgerPath},
		o.env, o.paymentsimEnv),
		p.paymentURL+"/healthz")
	p.api = startDaemon(t, "api", with([]string{"HTTP_ADDR=" + apiAddr, "DATABASE_URL=" + p.dbURL,
		"KAFKA_TOPIC_PREFIX=" + p.topicPrefix, "REDIS_URL=" + p.redisURL, "CACHE_KEY_PREFIX=" + p.cachePrefix}, o.env),
		p.apiURL+"/healthz")
	p.relay = startDaemon(t, "relay", with([]string{"ADMIN_ADDR=" + relayAdmin, "DATABASE_URL=" + p.dbURL,
		"KAFKA_BROKERS=" + p.brokers}, o.env), "http://"+relayAdmin+"/healthz")
	p.workerGroup, p.workerEnv = "worker-"+testenv.ID(), with(nil, o.env, o.workerEnv)
	for i := 0; i < max(o.workers, 1); i++ {
		p.workers = append(p.workers, p.startWorker(p.workerGroup, p.workerEnv...))
	}
	return p
}

// startWorker starts one more worker process in group.
func (p *pipeline) startWorker(group string, env ...string) *daemon {
	p.t.Helper()
	admin := testenv.FreeAddr(p.t)
	return startDaemon(p.t, "worker", append([]string{"ADMIN_ADDR=" + admin, "DATABASE_URL=" + p.dbURL,
		"KAFKA_BROKERS=" + p.brokers, "KAFKA_TOPIC_PREFIX=" + p.topicPrefix, "WORKER_GROUP=" + group,
		"PAYMENT_URL=" + p.paymentURL, "REDIS_URL=" + p.redisURL, "CACHE_KEY_PREFIX=" + p.cachePrefix},
		env...), "http://"+admin+"/healthz")
}

// create posts an order, with the headers given as name, value pairs, and returns its id.
func (p *pipeline) create(t *testing.T, amount, currency string, headers ...string) int64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, p.apiURL+"/orders",
		strings.NewReader(`{"customerId":"E2E","amount":`+amount+`,"currency":"`+currency+`"}`))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /orders = %d %s", resp.StatusCode, body)
	}
	var o order
	if err := json.Unmarshal(body, &o); err != nil {
		t.Fatal(err)
	}
	return o.ID
}

// status reads an order's status through the API.
func (p *pipeline) status(t *testing.T, id int64) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/orders/%d", p.apiURL, id), nil)
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /orders/%d = %d %s", id, resp.StatusCode, body)
	}
	var o order
	json.Unmarshal(body, &o)
	return o.Status
}

// waitStatus waits until the order has the status.
func (p *pipeline) waitStatus(t *testing.T, id int64, want string, timeout time.Duration) {
	t.Helper()
	testenv.Eventually(t, timeout, func() (bool, string) {
		got := p.status(t, id)
		return got == want, fmt.Sprintf("order %d is %s, want %s", id, got, want)
	})
}

// charge is a paymentsim ledger entry.
type charge struct {
	ID, Status, Reason, IdempotencyKey string
}

// ledger returns paymentsim's ledger entries for an order.
func (p *pipeline) ledger(t *testing.T, id int64) []charge {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/payments?orderId=%d", p.paymentURL, id), nil)
	resp, body := do(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ledger = %d %s", resp.StatusCode, body)
	}
	var out []charge
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	return out
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
	req.Header.Set("X-Correlation-ID", "corr-e2e-1")
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
	if got := resp.Header.Get("X-Correlation-ID"); got != "corr-e2e-1" {
		t.Errorf("X-Correlation-ID = %q, want the request's", got)
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
		if got := testenv.Header(m, events.MetaCorrelationID); got != "corr-e2e-1" {
			t.Errorf("%s correlation_id header = %q, want the request's corr-e2e-1", tc.typ, got)
		}
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
