package e2e

// The fault-injection suite (make chaos runs it at full size, make test shortened): each
// scenario runs the four daemons as processes under traffic, injects its faults, and
// then the checker (chaos_check_test.go) proves I1-I7 and prints the figures.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/outbox"
)

// openDB opens the pipeline's database for the test itself.
func (p *pipeline) openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), p.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// whileSending injects fault again and again, pause() apart, until the clients are done.
func whileSending(tr *traffic, pause func() time.Duration, fault func()) {
	for {
		select {
		case <-tr.sent:
			return
		case <-time.After(pause()):
		}
		select {
		case <-tr.sent:
			return
		default:
			fault()
		}
	}
}

// between returns a pause drawn uniformly from [lo, hi).
func between(lo, hi time.Duration) func() time.Duration {
	return func() time.Duration { return lo + rand.N(hi-lo) }
}

// someDeclines makes every tenth order one the payment simulator declines.
func someDeclines(i int) string {
	if i%10 == 0 {
		return "20.51"
	}
	return "20"
}

// answersOnly fails the test if any answer the clients got was not 201 or accepted by ok.
func answersOnly(t *testing.T, tr *traffic, ok func(answer) bool) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	bad := 0
	for _, r := range tr.reqs {
		for _, a := range r.answers {
			if a.status != http.StatusCreated && (ok == nil || !ok(a)) {
				if bad++; bad <= 10 {
					t.Errorf("key %s: answer %d %q after %s (%.200s)", r.key, a.status, a.contentType, a.took, a.body)
				}
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d unexpected answers in all", bad)
	}
}

// Scenario 1: the relay killed -9 at random every 0-2 s during 10,000 orders.
func TestChaosRelayKilled(t *testing.T) {
	p := startPipeline(t, options{workers: 2, env: []string{"LOG_LEVEL=info"}})
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 16, orders: size(2000, 10000), amount: someDeclines, readers: 2})
	var faults faultLog
	whileSending(tr, between(0, size(time.Second, 2*time.Second)), func() {
		p.relay.kill()
		p.relay = p.relay.restart(t)
		faults.ended()
	})
	tr.wait()
	p.check(t, tr, &faults, pr, checkOptions{})
}

// Scenario 2: workers killed -9 and SIGTERMed again and again, 2-3 workers in one group
// (every stop and start is a rebalance), while the payment provider takes 100-200 ms (and
// 1 s for one order in twenty), so that each worker has many orders of each partition in
// flight when it dies or its partitions move. Nothing is lost or charged twice, the work
// redone after the faults is bounded by the window, and a rebalance cancels the payments
// in flight instead of waiting for them.
func TestChaosWorkersKilled(t *testing.T) {
	const window, partitions = 64, 8
	p := startPipeline(t, options{workers: size(2, 3), env: []string{"LOG_LEVEL=info"},
		paymentsimEnv: []string{"PAYMENTSIM_LATENCY=100ms", "PAYMENTSIM_LATENCY_JITTER=100ms", "PAYMENTSIM_SLOW_DELAY=1s"},
		workerEnv:     []string{fmt.Sprintf("WORKER_MAX_IN_FLIGHT=%d", window)}})
	pr := watchProgress(t, p.openDB(t))
	began := time.Now()
	// The window must hold what a partition receives while its slowest order is paid
	// (here about 20/s × 1 s): a smaller one pauses the partition behind every slow order.
	tr := startTraffic(p, trafficSpec{clients: 2, orders: 1_000_000, pause: 10 * time.Millisecond,
		amount: func(i int) string {
			switch {
			case i%10 == 0:
				return "20.51" // declined
			case i%20 == 5:
				return "20.71" // the provider takes PAYMENTSIM_SLOW_DELAY
			}
			return "20"
		}, readers: 2})
	workers := slices.Clone(p.workers) // every process, for their logs
	var faults faultLog
	kills := 0
	for range size(6, 20) {
		time.Sleep(between(500*time.Millisecond, 2*time.Second)())
		i := rand.IntN(len(p.workers))
		victim := p.workers[i]
		testenv.Eventually(t, 30*time.Second, func() (bool, string) {
			n := metricSum(t, victim, "keyorder_in_flight_messages")
			return n > 0, fmt.Sprintf("worker %d has %v messages in flight; want some before the fault", i, n)
		})
		if faults.n%2 == 0 {
			victim.kill()
			kills++
		} else {
			victim.stop() // SIGTERM: cancel the messages in hand, commit what finished, leave the group
		}
		p.workers[i] = victim.restart(t)
		workers = append(workers, p.workers[i])
		faults.ended()
	}
	tr.stop()
	tr.wait()
	sending := time.Since(began)
	// A stop or a rebalance cancels the work in hand; it is redone by the partition's next
	// owner, never poisoned.
	r := p.check(t, tr, &faults, pr, checkOptions{noPoison: true})

	// Work redone: deliveries of a message after its first, from every worker's log. A
	// release (a stop, or a rebalance) cancels the messages in flight, which are delivered
	// again, and commits what finished; a killed worker's successor also redoes what it
	// had finished and not committed: at most its window per partition, plus what
	// finished since the last offset commit (every second).
	redone := 0
	seen := map[string]int{}
	var rel []release
	for _, w := range workers {
		for _, id := range deliveries(w) {
			if seen[id]++; seen[id] > 1 {
				redone++
			}
		}
		rel = append(rel, releases(w)...)
	}
	if len(rel) == 0 {
		t.Fatal("no worker logged a partition released: the rebalances were not seen")
	}
	cancelled := 0
	var took []int
	for _, x := range rel {
		cancelled += x.InFlight
		took = append(took, x.TookMs)
	}
	rate := float64(r.orders) / sending.Seconds()
	bound := float64(cancelled) + float64(kills)*(partitions*window+rate)
	t.Logf("work redone: %d deliveries after the first (%d orders, %.0f/s); bound %.0f = %d cancelled by %d releases + %d kills × (%d partitions × window %d + 1 s × %.0f orders/s)",
		redone, r.orders, rate, bound, cancelled, len(rel), kills, partitions, window, rate)
	if float64(redone) > bound {
		t.Errorf("%d deliveries redone, more than the window bounds: %.0f", redone, bound)
	}
	// Without cancellation a release would wait for the slow payments in flight (up to 1 s).
	slices.Sort(took)
	t.Logf("time to release a partition: median %d ms, max %d ms", took[len(took)/2], took[len(took)-1])
	if took[len(took)-1] > 900 { // measured: at most 99 ms (make test), 326 ms (make chaos); 1,726 ms without cancelling
		t.Errorf("a partition took %d ms to release; want the payments in flight cancelled, not waited for (up to 1 s)", took[len(took)-1])
	}
}

// deliveries returns the message id of each delivery a worker logged (processed,
// nacked or poisoned), in order.
func deliveries(d *daemon) []string {
	var out []string
	for _, line := range strings.Split(d.output(), "\n") {
		if !strings.Contains(line, `"msg":"message processed"`) && !strings.Contains(line, `"msg":"message nacked`) &&
			!strings.Contains(line, `"msg":"message poisoned"`) {
			continue
		}
		var l struct {
			MessageID string `json:"message_id"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.MessageID != "" {
			out = append(out, l.MessageID)
		}
	}
	return out
}

// release is a worker's "partition released" log line.
type release struct {
	TookMs   int `json:"took_ms"`
	InFlight int `json:"in_flight"` // messages whose handlers it cancelled
}

func releases(d *daemon) []release {
	var out []release
	for _, line := range strings.Split(d.output(), "\n") {
		if !strings.Contains(line, `"msg":"partition released"`) {
			continue
		}
		var r release
		if json.Unmarshal([]byte(line), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// Scenario 3: a worker dies after the payment was charged and before its outcome
// commits (the worker's failpoint); its successor charges again with the same
// idempotency key and gets the same charge back. No double charge.
func TestChaosWorkerCrashesAfterCharge(t *testing.T) {
	p := startPipeline(t, options{workers: 2, env: []string{"LOG_LEVEL=info"},
		workerEnv: []string{"WORKER_FAILPOINT_CRASH_AFTER_CHARGE=0.02"}})
	db := p.openDB(t)
	pr := watchProgress(t, db)
	tr := startTraffic(p, trafficSpec{clients: 4, orders: size(400, 1500), pause: 10 * time.Millisecond, readers: 1})
	var faults faultLog
	// Restart crashed workers until every order is decided (the failpoint stays on).
	deadline := time.Now().Add(size(3*time.Minute, 6*time.Minute))
	for sending := true; ; {
		select {
		case <-tr.sent:
			sending = false
		case <-time.After(100 * time.Millisecond):
		}
		for i, w := range p.workers {
			if w.exited() {
				// A crash redoes the crashed worker's window, and redone payments roll the
				// failpoint again: after three crashes, restarts come without it, which
				// bounds the scenario's length.
				env := w.env
				if faults.n >= 2 {
					env = slices.DeleteFunc(slices.Clone(env), func(e string) bool {
						return strings.HasPrefix(e, "WORKER_FAILPOINT_CRASH_AFTER_CHARGE=")
					})
				}
				p.workers[i] = startDaemon(t, w.name, env, w.healthURL)
				faults.ended()
			}
		}
		var pending int
		if err := db.QueryRow(`SELECT count(*) FROM orders WHERE status = 'PENDING'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if !sending && pending == 0 || time.Now().After(deadline) {
			break
		}
	}
	tr.wait()
	if faults.n == 0 {
		t.Fatal("the failpoint never fired: the scenario proved nothing")
	}
	p.check(t, tr, &faults, pr, checkOptions{})
}

// Scenario 4: the Kafka broker stopped (SIGTERM, then kill -9, alternately) under load:
// the API keeps answering 201, and everything flows once Kafka is back.
func TestChaosKafkaStopped(t *testing.T) {
	stack := testenv.PrivateStack(t, "kafka")
	p := startPipeline(t, options{stack: stack, env: []string{"LOG_LEVEL=info"}})
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 40 * time.Millisecond, readers: 1})
	var faults faultLog
	outage := size(5*time.Second, 30*time.Second)
	for i := range size(2, 3) {
		time.Sleep(3 * time.Second)
		if i%2 == 0 {
			stack.Stop("kafka")
		} else {
			stack.Crash("kafka")
		}
		time.Sleep(outage)
		stack.Start("kafka")
		faults.ended()
		relay, worker := resumption(t, p)
		t.Logf("Kafka back (outage %d): relay forwarding again after %s, worker consuming after %s", i+1, relay, worker)
	}
	time.Sleep(3 * time.Second)
	tr.stop()
	tr.wait()
	answersOnly(t, tr, nil)
	p.check(t, tr, &faults, pr, checkOptions{noPoison: true})
}

// resumption waits up to two minutes for the relay to forward and the first worker to
// handle a message again, and returns how long each took (0: not within the wait).
func resumption(t *testing.T, p *pipeline) (relay, worker time.Duration) {
	start := time.Now()
	forwarded, handled := metricSum(t, p.relay, "relay_forwarded_total"), metricSum(t, p.workers[0], "worker_messages_total")
	for time.Since(start) < 2*time.Minute && (relay == 0 || worker == 0) {
		time.Sleep(100 * time.Millisecond)
		if relay == 0 && metricSum(t, p.relay, "relay_forwarded_total") > forwarded {
			relay = time.Since(start)
		}
		if worker == 0 && metricSum(t, p.workers[0], "worker_messages_total") > handled {
			worker = time.Since(start)
		}
	}
	return relay.Round(100 * time.Millisecond), worker.Round(100 * time.Millisecond)
}

// Scenario 5: Postgres stopped immediately (pg_ctl stop -m immediate, a crash) for 10 s,
// twice: the API answers 503 problem+json within 5 s, nothing is half-written and
// nothing is poisoned because of the outage.
func TestChaosPostgresStopped(t *testing.T) {
	stack := testenv.PrivateStack(t, "postgres")
	p := startPipeline(t, options{stack: stack, env: []string{"LOG_LEVEL=info"}})
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 40 * time.Millisecond,
		amount: someDeclines, readers: 1})
	var faults faultLog
	for range size(1, 2) {
		time.Sleep(3 * time.Second)
		stack.Crash("postgres")
		time.Sleep(size(5*time.Second, 10*time.Second))
		stack.Start("postgres")
		faults.ended()
	}
	time.Sleep(3 * time.Second)
	tr.stop()
	tr.wait()
	unavailable := 0
	answersOnly(t, tr, func(a answer) bool {
		ok := a.status == http.StatusServiceUnavailable && a.contentType == "application/problem+json" &&
			a.took <= 5*time.Second
		if ok {
			unavailable++
		}
		return ok
	})
	if unavailable == 0 {
		t.Error("no request was answered 503 during the outages: the scenario proved nothing")
	}
	t.Logf("%d answers were 503 problem+json within 5 s; clients retried them with their keys", unavailable)
	p.check(t, tr, &faults, pr, checkOptions{noPoison: true})
}

// redisCmd sends one inline command to a Redis server and returns its first reply line.
func redisCmd(t *testing.T, addr, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%s\r\n", cmd)
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	return strings.TrimSpace(string(buf[:n]))
}

// Scenario 6: Redis flushed, then killed and restarted empty, mid-run: every read is
// still answered (from Postgres while Redis is away), and after settle what the API
// serves equals Postgres (I7).
func TestChaosRedisLost(t *testing.T) {
	addr := testenv.FreeAddr(t)
	redis := testenv.StartRedis(t, addr)
	p := startPipeline(t, options{redisURL: "redis://" + addr + "/0", env: []string{"LOG_LEVEL=info"}})
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 20 * time.Millisecond,
		amount: someDeclines, readers: 4})
	var faults faultLog
	time.Sleep(3 * time.Second)
	if got := redisCmd(t, addr, "FLUSHALL"); got != "+OK" {
		t.Fatalf("FLUSHALL = %q", got)
	}
	faults.ended()
	time.Sleep(2 * time.Second)
	redis.Kill()
	time.Sleep(size(5*time.Second, 30*time.Second))
	testenv.StartRedis(t, addr)
	faults.ended()
	time.Sleep(3 * time.Second)
	redisCmd(t, addr, "FLUSHALL")
	faults.ended()
	time.Sleep(3 * time.Second)
	tr.stop()
	tr.wait()
	answersOnly(t, tr, nil)
	tr.mu.Lock()
	if len(tr.getErrs) > 0 {
		t.Errorf("of %d reads, these failed: %v; without Redis they are answered from Postgres", tr.gets, tr.getErrs)
	}
	tr.mu.Unlock()
	p.check(t, tr, &faults, pr, checkOptions{noPoison: true})
}

// Scenario 7: the payment provider down (60 s), then slow, then failing 30 % of calls
// with 503: orders wait and are charged once it answers, none is poisoned.
func TestChaosPaymentProviderFaults(t *testing.T) {
	p := startPipeline(t, options{env: []string{"LOG_LEVEL=info"}})
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 40 * time.Millisecond,
		amount: someDeclines, readers: 1})
	var faults faultLog
	base := p.paymentsim.env
	phase := func(d time.Duration, env ...string) {
		p.paymentsim.stop()
		p.paymentsim = startDaemon(t, "paymentsim", append(slices.Clone(base), env...), p.paymentsim.healthURL)
		time.Sleep(d)
	}
	time.Sleep(3 * time.Second)
	p.paymentsim.kill()
	time.Sleep(size(5*time.Second, 60*time.Second))
	p.paymentsim = p.paymentsim.restart(t)
	faults.ended()
	phase(size(5*time.Second, 30*time.Second), "PAYMENTSIM_LATENCY=250ms")
	faults.ended()
	phase(size(5*time.Second, 30*time.Second), "PAYMENTSIM_FAIL_RATE=0.3")
	faults.ended()
	phase(3 * time.Second)
	tr.stop()
	tr.wait()
	answersOnly(t, tr, nil)
	p.check(t, tr, &faults, pr, checkOptions{noPoison: true})
}

// Scenario 8: the API killed -9 again and again while 200 clients keep retrying their
// orders with their idempotency keys: one order per key, and each client's final answer
// is what a later replay of its request returns.
func TestChaosAPIKilled(t *testing.T) {
	p := startPipeline(t, options{env: []string{"LOG_LEVEL=info"}})
	pr := watchProgress(t, p.openDB(t))
	clients := size(50, 200)
	tr := startTraffic(p, trafficSpec{clients: clients, orders: 1_000_000, pause: 100 * time.Millisecond,
		amount: someDeclines})
	var faults faultLog
	for range size(6, 20) {
		time.Sleep(between(500*time.Millisecond, 2*time.Second)())
		p.api.kill()
		p.api = p.api.restart(t)
		faults.ended()
	}
	tr.stop()
	tr.wait()
	p.check(t, tr, &faults, pr, checkOptions{})

	// Every key again: the stored answer, byte for byte.
	tr.mu.Lock()
	defer tr.mu.Unlock()
	mismatches := 0
	for _, r := range tr.reqs {
		final, ok := r.final()
		if !ok || final.status != http.StatusCreated {
			t.Errorf("key %s never got its 201: %d answers, last %d %.200s", r.key, len(r.answers), final.status, final.body)
			continue
		}
		req, _ := http.NewRequest(http.MethodPost, p.apiURL+"/orders", strings.NewReader(r.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", r.key)
		resp, body := do(t, req)
		if resp.StatusCode != final.status || string(body) != string(final.body) || resp.Header.Get("Idempotent-Replayed") != "true" {
			if mismatches++; mismatches <= 10 {
				t.Errorf("key %s: replay = %d %s (replayed %q), the client's final answer was %d %s",
					r.key, resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), final.status, final.body)
			}
		}
	}
	t.Logf("%d clients, %d keys replayed, %d mismatches", clients, len(tr.reqs), mismatches)
}

// Scenario 9: the whole orders topic replayed from offset 0 by a new consumer group of
// the worker: no new charge, status change or outcome event.
func TestChaosReplayFromOffsetZero(t *testing.T) {
	p := startPipeline(t, options{env: []string{"LOG_LEVEL=info"}, workerEnv: fastRetries})
	pr := watchProgress(t, p.openDB(t))
	// Every behaviour with an outcome: approvals, declines, a 503 then approval, poison.
	amounts := []string{"20", "20.51", "20.52", "20.63", "20.61", "20", "20", "20", "20", "20"}
	tr := startTraffic(p, trafficSpec{clients: 4, orders: size(300, 2000),
		amount: func(i int) string { return amounts[i%len(amounts)] }})
	tr.wait()
	before := p.settle(t, 2*time.Minute)
	if !before.settled() {
		t.Fatal("the pipeline did not finish the orders before the replay")
	}

	var faults faultLog
	group := "replay-" + testenv.ID()
	p.startWorker(group, fastRetries...)
	brokers := strings.Split(p.brokers, ",")
	testenv.Eventually(t, 2*time.Minute, func() (bool, string) {
		done, behind := groupCaughtUp(brokers, group, p.topicPrefix+events.TopicOrders)
		return done, fmt.Sprintf("replay group %d records behind", behind)
	})
	faults.ended()
	time.Sleep(2 * time.Second) // room for anything the replay might wrongly publish to reach Kafka
	after := p.check(t, tr, &faults, pr, checkOptions{}).state
	if len(after.ledger) != len(before.ledger) {
		t.Errorf("ledger grew from %d to %d entries during the replay", len(before.ledger), len(after.ledger))
	}
	for id, o := range before.orders {
		if after.orders[id] != o {
			t.Errorf("order %d changed during the replay: %+v -> %+v", id, o, after.orders[id])
		}
	}
	if len(after.outbox) != len(before.outbox) || len(after.kafka[events.TopicPayments]) != len(before.kafka[events.TopicPayments]) {
		t.Errorf("outcome events: outbox %d -> %d rows, payments topic %d -> %d records", len(before.outbox),
			len(after.outbox), len(before.kafka[events.TopicPayments]), len(after.kafka[events.TopicPayments]))
	}
	t.Logf("replayed %d orders: %d ledger entries, %d outcome events, unchanged", len(before.orders),
		len(after.ledger), len(after.kafka[events.TopicPayments]))
}

// groupCaughtUp reports whether group has committed the end of every partition of topic.
func groupCaughtUp(brokers []string, group, topic string) (bool, int64) {
	client, err := sarama.NewClient(brokers, kafkaconf.Consumer("chaos-check"))
	if err != nil {
		return false, -1
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return false, -1
	}
	partitions, err := client.Partitions(topic)
	if err != nil {
		return false, -1
	}
	offsets, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: partitions})
	if err != nil {
		return false, -1
	}
	var behind int64
	for _, part := range partitions {
		end, err := client.GetOffset(topic, part, sarama.OffsetNewest)
		if err != nil {
			return false, -1
		}
		committed := int64(0)
		if b := offsets.GetBlock(topic, part); b != nil && b.Offset > 0 {
			committed = b.Offset
		}
		behind += end - committed
	}
	return behind == 0, behind
}

// Scenario 10: a commit-order gap in the outbox: a transaction takes an earlier
// transaction id and holds it open while the API commits later orders; its event is
// forwarded once it commits, and its order is paid like the rest.
func TestChaosOutboxGap(t *testing.T) {
	p := startPipeline(t, options{env: []string{"LOG_LEVEL=info"}})
	db := p.openDB(t)
	pr := watchProgress(t, db)
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 20 * time.Millisecond, readers: 1})
	var faults faultLog
	keyless := map[int64]bool{}
	for range size(2, 3) {
		time.Sleep(2 * time.Second)
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		if err := tx.QueryRow(`INSERT INTO orders (customer_id, amount_minor, currency) VALUES ('GAP', 2000, 'USD')
			RETURNING id`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		msg, err := events.NewMessage(events.OrderCreated{ID: id, CustomerID: "GAP", AmountMinor: 2000, Currency: "USD"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := outbox.New(p.topicPrefix).Publish(tx, events.TopicOrders, msg); err != nil {
			t.Fatal(err)
		}
		before := tr.created()
		time.Sleep(size(3*time.Second, 15*time.Second)) // later orders commit meanwhile
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if tr.created() == before {
			t.Fatal("no order committed while the gap was open: the scenario proved nothing")
		}
		keyless[id] = true
		faults.ended()
	}
	time.Sleep(2 * time.Second)
	tr.stop()
	tr.wait()
	p.check(t, tr, &faults, pr, checkOptions{keyless: keyless, noPoison: true})
}

// Scenario 11: a relay and a worker frozen with SIGSTOP past their timeouts (the worker's
// Kafka session, 10 s), then resumed: zombies. A second worker takes over the frozen
// one's partitions; the standby relay takes over once the frozen one's session times out
// (RELAY_SESSION_TIMEOUT, 30 s: only at make chaos size); after SIGCONT nothing is lost,
// charged twice or applied twice.
func TestChaosZombies(t *testing.T) {
	p := startPipeline(t, options{workers: 2, env: []string{"LOG_LEVEL=info"}})
	admin := testenv.FreeAddr(t)
	standby := startDaemon(t, "relay", append(slices.Clone(p.relay.env), "ADMIN_ADDR="+admin),
		"http://"+admin+"/healthz")
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 20 * time.Millisecond,
		amount: someDeclines, readers: 1})
	var faults faultLog
	time.Sleep(3 * time.Second)
	frozen := size(15*time.Second, 45*time.Second)
	p.relay.signal(syscall.SIGSTOP)
	p.workers[0].signal(syscall.SIGSTOP)
	time.Sleep(frozen)
	leader := metricSum(t, standby, "relay_leader")
	p.relay.signal(syscall.SIGCONT)
	p.workers[0].signal(syscall.SIGCONT)
	faults.ended()
	time.Sleep(5 * time.Second)
	tr.stop()
	tr.wait()
	t.Logf("frozen %s; the standby relay was leader at the end of it: %v", frozen, leader == 1)
	p.check(t, tr, &faults, pr, checkOptions{})
}

// Scenario 12: the payment provider refuses every request (401: rotated credentials)
// for a while, and answers 503 forever to one order in fifty (amount .62). Nothing is
// poisoned for the refusal (payments pause, probing, and resume), and exactly the .62
// orders are poisoned, once their unavailability budget is spent while the others are
// paid.
func TestChaosProviderRefusesEveryone(t *testing.T) {
	p := startPipeline(t, options{env: []string{"LOG_LEVEL=info"},
		workerEnv: append([]string{"WORKER_UNAVAILABLE_BUDGET=1s", "PAYMENT_PROBE_INTERVAL=500ms"}, fastRetries...)})
	pr := watchProgress(t, p.openDB(t))
	tr := startTraffic(p, trafficSpec{clients: 4, orders: 1_000_000, pause: 40 * time.Millisecond, readers: 1,
		amount: func(i int) string {
			if i%50 == 7 {
				return "20.62"
			}
			return someDeclines(i)
		}})
	var faults faultLog
	worker := p.workers[0]
	paid := func() float64 { return metricSum(t, worker, "worker_payments_total") }
	testenv.Eventually(t, time.Minute, func() (bool, string) {
		return paid() >= 20, fmt.Sprintf("%v payments recorded; want 20 before the fault", paid())
	})
	base := p.paymentsim.env
	p.paymentsim.stop()
	p.paymentsim = startDaemon(t, "paymentsim", append(slices.Clone(base), "PAYMENTSIM_REFUSE_WITH=401"), p.paymentsim.healthURL)
	testenv.Eventually(t, time.Minute, func() (bool, string) {
		v := metricSum(t, worker, "worker_payment_provider_refusing")
		return v == 1, fmt.Sprintf("worker_payment_provider_refusing = %v; want 1 while the provider answers 401", v)
	})
	created := func() int {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		return len(tr.ids)
	}
	// The fault lasts while this many orders are created (about 1 s, or 20 at full size).
	during, from := size(100, 2000), created()
	testenv.Eventually(t, 5*time.Minute, func() (bool, string) {
		return created() >= from+during, fmt.Sprintf("%d orders created while the provider refuses; want %d", created()-from, during)
	})
	p.paymentsim.stop()
	p.paymentsim = startDaemon(t, "paymentsim", base, p.paymentsim.healthURL)
	faults.ended()
	before := paid()
	testenv.Eventually(t, time.Minute, func() (bool, string) {
		v := metricSum(t, worker, "worker_payment_provider_refusing")
		return v == 0 && paid() > before+20, fmt.Sprintf("refusing = %v, %v payments since the provider came back; want 0 and 20", v, paid()-before)
	})
	tr.stop()
	tr.wait()
	answersOnly(t, tr, nil)
	r := p.check(t, tr, &faults, pr, checkOptions{})

	// Exactly the .62 orders are poisoned, each for its spent budget.
	want := map[int64]bool{}
	tr.mu.Lock()
	for _, req := range tr.reqs {
		if a, ok := req.final(); ok && a.status == http.StatusCreated && strings.Contains(req.body, `"amount":20.62`) {
			var o order
			if json.Unmarshal(a.body, &o) == nil {
				want[o.ID] = true
			}
		}
	}
	tr.mu.Unlock()
	got := map[int64]bool{}
	for _, m := range r.state.kafka[events.TopicOrdersPoison] {
		id, _ := strconv.ParseInt(string(m.Key), 10, 64)
		got[id] = true
		if reason := testenv.Header(m, middleware.ReasonForPoisonedKey); !strings.Contains(reason, "unavailable for") {
			t.Errorf("order %d poisoned for %q, want its spent unavailability budget", id, reason)
		}
	}
	if len(want) == 0 || !maps.Equal(got, want) {
		t.Errorf("poisoned orders %v, want exactly the .62 orders %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}
