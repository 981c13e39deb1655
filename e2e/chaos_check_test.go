package e2e

// The fault-injection suite's instruments: the traffic (clients with idempotency keys
// that record every answer, and readers that watch statuses), the progress monitor, and
// the checker that proves the pipeline's promises (I1-I7) once the faults stop.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/orders"
)

// full is true under `make chaos` (CHAOS=full): the scenarios at the sizes the issue
// names. `make test` runs the same scenarios shortened.
var full = os.Getenv("CHAOS") == "full"

// size picks the shortened or the full value of a scenario's parameter.
func size[T any](short, long T) T {
	if full {
		return long
	}
	return short
}

// answer is one attempt at a request, as the client saw it.
type answer struct {
	status      int // 0: no answer (connection refused, reset, timeout)
	contentType string
	body        []byte
	took        time.Duration
}

// clientRequest is one order a client sent, with every attempt in order.
type clientRequest struct {
	key, body string
	answers   []answer
}

// final is the request's last answer with a status, if any.
func (r *clientRequest) final() (answer, bool) {
	for i := len(r.answers) - 1; i >= 0; i-- {
		if r.answers[i].status != 0 {
			return r.answers[i], true
		}
	}
	return answer{}, false
}

// trafficSpec is a scenario's load.
type trafficSpec struct {
	clients int                // concurrent clients
	orders  int                // orders to send in all
	pause   time.Duration      // each client's pause between two orders, bounding the rate
	amount  func(i int) string // amount of order i; default 20
	readers int                // goroutines reading random created orders meanwhile
}

// traffic is a running load: clients that send orders with their own idempotency keys
// and retry each until it is answered (as a careful client would), and readers that
// GET orders and check that no status ever goes backwards.
type traffic struct {
	p       *pipeline
	spec    trafficSpec
	run     string
	client  *http.Client
	next    atomic.Int64
	stopped atomic.Bool
	wg      sync.WaitGroup
	readWG  sync.WaitGroup
	readers chan struct{}
	sent    chan struct{} // closed when every client is done

	mu        sync.Mutex
	reqs      []*clientRequest
	ids       []int64  // orders answered 201, for the readers
	backwards []string // status regressions the readers saw
	gets      int
	getErrs   map[string]int // GET answers other than 200, by kind
}

func startTraffic(p *pipeline, spec trafficSpec) *traffic {
	if spec.amount == nil {
		spec.amount = func(int) string { return "20" }
	}
	tr := &traffic{p: p, spec: spec, run: strconv.FormatInt(time.Now().UnixNano(), 36), readers: make(chan struct{}),
		sent: make(chan struct{}), getErrs: map[string]int{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: spec.clients + spec.readers}}}
	for range spec.clients {
		tr.wg.Add(1)
		go tr.sendLoop()
	}
	for range spec.readers {
		tr.readWG.Add(1)
		go tr.readLoop()
	}
	go func() { tr.wg.Wait(); close(tr.sent) }()
	return tr
}

func (tr *traffic) sendLoop() {
	defer tr.wg.Done()
	for !tr.stopped.Load() {
		i := int(tr.next.Add(1))
		if i > tr.spec.orders {
			return
		}
		r := &clientRequest{key: fmt.Sprintf("chaos-%s-%d", tr.run, i),
			body: `{"customerId":"CHAOS","amount":` + tr.spec.amount(i) + `,"currency":"USD"}`}
		tr.mu.Lock()
		tr.reqs = append(tr.reqs, r)
		tr.mu.Unlock()
		tr.send(r)
		time.Sleep(tr.spec.pause)
	}
}

// send posts r until it gets a final answer: retried on no answer, 409 (in flight),
// 429 and 5xx with the same key, for up to two minutes.
func (tr *traffic) send(r *clientRequest) {
	giveUp := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequest(http.MethodPost, tr.p.apiURL+"/orders", strings.NewReader(r.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", r.key)
		start := time.Now()
		resp, err := tr.client.Do(req)
		a := answer{}
		if err == nil {
			a.status, a.contentType = resp.StatusCode, resp.Header.Get("Content-Type")
			a.body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				a = answer{} // cut off mid-body: no answer
			}
		}
		a.took = time.Since(start)
		tr.mu.Lock()
		r.answers = append(r.answers, a)
		if a.status == http.StatusCreated {
			var o order
			json.Unmarshal(a.body, &o)
			tr.ids = append(tr.ids, o.ID)
		}
		tr.mu.Unlock()
		retry := a.status == 0 || a.status == http.StatusConflict || a.status == http.StatusTooManyRequests || a.status >= 500
		if !retry || time.Now().After(giveUp) {
			return
		}
		time.Sleep(time.Duration(50+rand.IntN(100)) * time.Millisecond)
	}
}

// statusRank orders statuses: an order moves from PENDING to one terminal status.
func statusRank(s string) int {
	if s == "PENDING" {
		return 0
	}
	return 1
}

func (tr *traffic) readLoop() {
	defer tr.readWG.Done()
	seen := map[int64]string{} // this reader's last read of each order: its reads are sequential
	for {
		select {
		case <-tr.readers:
			return
		case <-time.After(5 * time.Millisecond):
		}
		tr.mu.Lock()
		if len(tr.ids) == 0 {
			tr.mu.Unlock()
			continue
		}
		id := tr.ids[rand.IntN(len(tr.ids))]
		tr.mu.Unlock()
		resp, err := tr.client.Get(fmt.Sprintf("%s/orders/%d", tr.p.apiURL, id))
		kind := ""
		var o order
		switch {
		case err != nil:
			kind = "no answer"
		case resp.StatusCode != http.StatusOK:
			kind = strconv.Itoa(resp.StatusCode)
		case json.NewDecoder(resp.Body).Decode(&o) != nil:
			kind = "bad body"
		}
		if resp != nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		tr.mu.Lock()
		tr.gets++
		if kind != "" {
			tr.getErrs[kind]++
		} else if last, ok := seen[id]; ok && (statusRank(o.Status) < statusRank(last) ||
			statusRank(last) == 1 && o.Status != last) {
			tr.backwards = append(tr.backwards, fmt.Sprintf("order %d read %s after %s", id, o.Status, last))
		}
		if kind == "" {
			seen[id] = o.Status
		}
		tr.mu.Unlock()
	}
}

// created is how many orders have been answered 201 so far.
func (tr *traffic) created() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.ids)
}

// wait lets the clients finish their orders, then stops the readers.
func (tr *traffic) wait() {
	<-tr.sent
	close(tr.readers)
	tr.readWG.Wait()
}

// stop makes the clients send no new order; those in flight are still retried.
func (tr *traffic) stop() { tr.stopped.Store(true) }

// progress samples, every 100 ms, how many orders are decided, so the scenario can
// report how long the pipeline took to complete orders again after each fault.
type progress struct {
	mu      sync.Mutex
	samples []sample
	done    chan struct{}
}

type sample struct {
	at               time.Time
	decided, pending int
}

func watchProgress(t *testing.T, db *sql.DB) *progress {
	pr := &progress{done: make(chan struct{})}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-pr.done:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			var s sample
			err := db.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE status <> 'PENDING'),
				count(*) FILTER (WHERE status = 'PENDING') FROM orders`).Scan(&s.decided, &s.pending)
			cancel()
			if err == nil {
				s.at = time.Now()
				pr.mu.Lock()
				pr.samples = append(pr.samples, s)
				pr.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { pr.stop(); <-stopped })
	return pr
}

func (pr *progress) stop() {
	select {
	case <-pr.done:
	default:
		close(pr.done)
	}
}

// recovery is the longest time, over the moments a fault ended, until one more order
// was decided (0 for a fault that ended with nothing pending).
func (pr *progress) recovery(ends []time.Time) time.Duration {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	var longest time.Duration
	for _, end := range ends {
		i, _ := slices.BinarySearchFunc(pr.samples, end, func(s sample, t time.Time) int { return s.at.Compare(t) })
		if i >= len(pr.samples) {
			continue
		}
		base := pr.samples[max(i-1, 0)]
		if base.pending == 0 {
			continue
		}
		for _, s := range pr.samples[i:] {
			if s.decided > base.decided {
				longest = max(longest, s.at.Sub(end))
				break
			}
		}
	}
	return longest
}

// faultLog counts the faults a scenario injected and when each ended.
type faultLog struct {
	mu   sync.Mutex
	n    int
	ends []time.Time
}

// ended records one fault that is over now.
func (f *faultLog) ended() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.ends = append(f.ends, time.Now())
}

// checkOptions tune the checker for a scenario.
type checkOptions struct {
	settle   time.Duration  // how long the pipeline may go without progress after the load
	keyless  map[int64]bool // orders the test wrote itself, without an idempotency key
	noPoison bool           // nothing may be poisoned
}

// dbOrder is an order as Postgres has it.
type dbOrder struct {
	status  string
	version int
}

// outboxEvent is one outbox row: the event inside Watermill's forwarder envelope.
type outboxEvent struct {
	topic, id, typ, subject string
}

// payment is a paymentsim ledger entry.
type payment struct {
	OrderID int64  `json:"orderId"`
	Status  string `json:"status"`
}

// snapshot is everything the checker reads once the faults stopped.
type snapshot struct {
	orders map[int64]dbOrder
	keys   map[string]int64 // idempotency key → order id
	outbox []outboxEvent    // in the relay's order: (transaction_id, offset)
	kafka  map[string][]*sarama.ConsumerMessage
	ledger []payment
}

func (p *pipeline) state(ctx context.Context, db *sql.DB) (*snapshot, error) {
	s := &snapshot{orders: map[int64]dbOrder{}, keys: map[string]int64{}, kafka: map[string][]*sarama.ConsumerMessage{}}
	rows, err := db.QueryContext(ctx, `SELECT id, status, version FROM orders`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var id int64
		var o dbOrder
		if err := rows.Scan(&id, &o.status, &o.version); err != nil {
			return nil, err
		}
		s.orders[id] = o
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = db.QueryContext(ctx, `SELECT key, order_id FROM idempotency_keys WHERE order_id IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var key string
		var id int64
		if err := rows.Scan(&key, &id); err != nil {
			return nil, err
		}
		s.keys[key] = id
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = db.QueryContext(ctx, `SELECT payload FROM watermill_outbox ORDER BY transaction_id, "offset"`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var payload []byte
		if err := rows.Scan(&payload); err != nil {
			return nil, err
		}
		var env struct {
			DestinationTopic string            `json:"destination_topic"`
			Metadata         map[string]string `json:"metadata"`
		}
		if err := json.Unmarshal(payload, &env); err != nil {
			return nil, fmt.Errorf("outbox row: %w", err)
		}
		s.outbox = append(s.outbox, outboxEvent{topic: env.DestinationTopic, id: env.Metadata[events.MetaID],
			typ: env.Metadata[events.MetaType], subject: env.Metadata[events.MetaSubject]})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, topic := range []string{events.TopicOrders, events.TopicPayments, events.TopicOrdersPoison} {
		if s.kafka[topic], err = readTopic(strings.Split(p.brokers, ","), p.topicPrefix+topic); err != nil {
			return nil, err
		}
	}
	b, err := os.ReadFile(p.ledgerPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var pay payment
		if line != "" && json.Unmarshal([]byte(line), &pay) == nil {
			s.ledger = append(s.ledger, pay)
		}
	}
	return s, nil
}

// readTopic reads every record of topic up to its current end; a topic that does not
// exist is empty.
func readTopic(brokers []string, topic string) ([]*sarama.ConsumerMessage, error) {
	cfg := kafkaconf.Consumer("chaos-check")
	cfg.Metadata.AllowAutoTopicCreation = false
	// Closing a partition consumer waits for its fetch in flight, which at the end of a
	// partition lingers for MaxWaitTime (Sarama's default 500 ms): with 24 partitions
	// read one after another, that made every look at the state take 7-11 s.
	cfg.Consumer.MaxWaitTime = 10 * time.Millisecond
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	partitions, err := client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("topic %s: %w", topic, err)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	var out []*sarama.ConsumerMessage
	for _, part := range partitions {
		end, err := client.GetOffset(topic, part, sarama.OffsetNewest)
		if err != nil {
			return nil, fmt.Errorf("end of %s/%d: %w", topic, part, err)
		}
		start, err := client.GetOffset(topic, part, sarama.OffsetOldest)
		if err != nil {
			return nil, fmt.Errorf("start of %s/%d: %w", topic, part, err)
		}
		if start >= end {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, part, start)
		if err != nil {
			return nil, fmt.Errorf("consume %s/%d: %w", topic, part, err)
		}
		timeout := time.After(30 * time.Second)
	read:
		for {
			select {
			case m := <-pc.Messages():
				out = append(out, m)
				if m.Offset >= end-1 {
					break read
				}
			case <-timeout:
				pc.Close()
				return nil, fmt.Errorf("%s/%d: read %d of %d records in 30s", topic, part, len(out), end-start)
			}
		}
		pc.Close()
	}
	return out, nil
}

// result is what a scenario prints: its figures and the invariants it broke.
type result struct {
	orders, faults, lost, duplicateCharges, duplicateDeliveries, poisoned int
	recovery                                                              time.Duration
	poisonReasons                                                         map[string]int
	violations                                                            []string
	state                                                                 *snapshot // what was checked
}

func (r *result) violate(inv, format string, args ...any) {
	if len(r.violations) < 200 {
		r.violations = append(r.violations, inv+": "+fmt.Sprintf(format, args...))
	}
}

// evaluate checks I1-I6 on a snapshot; I7 needs the API and is checked after.
func (s *snapshot) evaluate(tr *traffic, opts checkOptions) *result {
	r := &result{orders: len(s.orders), poisonReasons: map[string]int{}, state: s}

	poisoned := map[int64]bool{}
	for _, m := range s.kafka[events.TopicOrdersPoison] {
		id, _ := strconv.ParseInt(string(m.Key), 10, 64)
		reason := testenv.Header(m, middleware.ReasonForPoisonedKey)
		if reason == "" {
			r.violate("I1", "poisoned record %s/%d has no reason", m.Topic, m.Offset)
		}
		r.poisonReasons[reason]++
		poisoned[id] = true
	}
	r.poisoned = len(poisoned)
	if opts.noPoison && len(poisoned) > 0 {
		r.violate("I1", "%d orders poisoned; none may be", len(poisoned))
	}

	// I1: every 201 names an order that exists and is decided (or poisoned with a reason);
	// I2: every answer for a key names the same order, the one the key holds.
	tr.mu.Lock()
	for _, req := range tr.reqs {
		var first []byte
		for _, a := range req.answers {
			if a.status != http.StatusCreated {
				continue
			}
			var o order
			if err := json.Unmarshal(a.body, &o); err != nil || o.ID == 0 {
				r.violate("I1", "key %s: unreadable 201 body %q", req.key, a.body)
				continue
			}
			if first == nil {
				first = a.body
			} else if string(a.body) != string(first) {
				r.violate("I2", "key %s answered 201 twice with different bodies: %s and %s", req.key, first, a.body)
			}
			if got, ok := s.keys[req.key]; !ok || got != o.ID {
				r.violate("I2", "key %s answered order %d but holds %d", req.key, o.ID, got)
			}
			if _, ok := s.orders[o.ID]; !ok {
				r.lost++
				r.violate("I1", "order %d (key %s) answered 201 but does not exist", o.ID, req.key)
			}
		}
	}
	tr.mu.Unlock()
	byOrder := map[int64]int{}
	for _, id := range s.keys {
		byOrder[id]++
	}
	for id, o := range s.orders {
		switch {
		case byOrder[id] > 1:
			r.violate("I2", "order %d is held by %d idempotency keys", id, byOrder[id])
		case byOrder[id] == 0 && !opts.keyless[id]:
			r.violate("I2", "order %d has no idempotency key: created outside its key's transaction", id)
		}
		if o.status == "PENDING" && !poisoned[id] {
			r.lost++
			r.violate("I1", "order %d still PENDING and not in the poison queue", id)
		}
	}

	// I3: at most one approved charge per order, and only for a PAID one.
	approved := map[int64]int{}
	for _, pay := range s.ledger {
		if pay.Status == "approved" {
			approved[pay.OrderID]++
		}
	}
	for id, n := range approved {
		if n > 1 {
			r.duplicateCharges += n - 1
			r.violate("I3", "order %d charged %d times", id, n)
		}
		if o := s.orders[id]; o.status != "PAID" && !(o.status == "PENDING" && poisoned[id]) {
			r.violate("I3", "order %d charged but %s", id, o.status)
		}
	}

	// I4: each outcome applied once: one outcome event per decided order, matching its
	// status, and one status change (version 2). Statuses never went backwards.
	outcomes := map[int64][]string{}
	created := map[int64]int{}
	for _, e := range s.outbox {
		id, _ := strconv.ParseInt(e.subject, 10, 64)
		switch e.typ {
		case events.TypeOrderCreated:
			created[id]++
		case events.TypePaymentSucceeded, events.TypePaymentFailed:
			outcomes[id] = append(outcomes[id], e.typ)
		}
	}
	for id, o := range s.orders {
		if created[id] != 1 {
			r.violate("I5", "order %d has %d OrderCreated events in the outbox, want 1 (half-written?)", id, created[id])
		}
		want := map[string]string{"PAID": events.TypePaymentSucceeded, "PAYMENT_FAILED": events.TypePaymentFailed}[o.status]
		switch {
		case o.status == "PENDING" && (len(outcomes[id]) > 0 || o.version != 1):
			r.violate("I4", "order %d PENDING (version %d) with outcome events %v", id, o.version, outcomes[id])
		case o.status != "PENDING" && (len(outcomes[id]) != 1 || outcomes[id][0] != want || o.version != 2):
			r.violate("I4", "order %d %s (version %d) with outcome events %v, want one %s", id, o.status, o.version, outcomes[id], want)
		}
		if o.status == "PAID" && approved[id] != 1 {
			r.violate("I3", "order %d PAID with %d approved charges", id, approved[id])
		}
	}
	tr.mu.Lock()
	for _, b := range tr.backwards {
		r.violate("I4", "%s", b)
	}
	tr.mu.Unlock()

	// I5: every outbox row reached Kafka (duplicates counted); I6: each order's events
	// sit in one partition, first occurrences in outbox order.
	type place struct {
		partition int32
		offset    int64
	}
	first := map[string]place{} // event id → its first occurrence
	for _, topic := range []string{events.TopicOrders, events.TopicPayments} {
		for _, m := range s.kafka[topic] {
			id := testenv.Header(m, events.MetaID)
			if _, dup := first[id]; dup {
				r.duplicateDeliveries++
				continue
			}
			first[id] = place{m.Partition, m.Offset}
			if string(m.Key) != testenv.Header(m, events.MetaSubject) {
				r.violate("I6", "%s/%d@%d keyed %q, subject %q", m.Topic, m.Partition, m.Offset, m.Key, testenv.Header(m, events.MetaSubject))
			}
		}
	}
	last := map[string]place{} // topic + order → the latest event's first occurrence
	for _, e := range s.outbox {
		at, ok := first[e.id]
		if !ok {
			r.violate("I5", "outbox event %s (%s of order %s) not on Kafka", e.id, e.typ, e.subject)
			continue
		}
		k := e.topic + "/" + e.subject
		if prev, ok := last[k]; ok && (prev.partition != at.partition || prev.offset > at.offset) {
			r.violate("I6", "order %s on %s: event %s at %d@%d before an earlier one at %d@%d",
				e.subject, e.topic, e.id, at.partition, at.offset, prev.partition, prev.offset)
		}
		last[k] = at
	}
	return r
}

// settled reports whether the pipeline has finished: nothing pending but poisoned orders,
// every outbox row on Kafka.
func (s *snapshot) settled() bool {
	poisoned := map[string]bool{}
	for _, m := range s.kafka[events.TopicOrdersPoison] {
		poisoned[string(m.Key)] = true
	}
	for id, o := range s.orders {
		if o.status == "PENDING" && !poisoned[strconv.FormatInt(id, 10)] {
			return false
		}
	}
	onKafka := map[string]bool{}
	for _, topic := range []string{events.TopicOrders, events.TopicPayments} {
		for _, m := range s.kafka[topic] {
			onKafka[testenv.Header(m, events.MetaID)] = true
		}
	}
	for _, e := range s.outbox {
		if !onKafka[e.id] {
			return false
		}
	}
	return true
}

// check waits for the pipeline to settle after the faults stopped, checks I1-I7, prints
// the scenario's figures and fails the test on any violation.
func (p *pipeline) check(t *testing.T, tr *traffic, faults *faultLog, pr *progress, opts checkOptions) *result {
	t.Helper()
	if opts.settle == 0 {
		opts.settle = 2 * time.Minute
	}
	s := p.settle(t, opts.settle)
	pr.stop()
	r := s.evaluate(tr, opts)
	faults.mu.Lock()
	r.faults, r.recovery = faults.n, pr.recovery(faults.ends)
	faults.mu.Unlock()
	p.checkCache(r, s)

	t.Logf("figures: orders %d, faults injected %d, lost %d, duplicate charges %d, duplicate deliveries %d, "+
		"poisoned %d, longest recovery %s", r.orders, r.faults, r.lost, r.duplicateCharges, r.duplicateDeliveries,
		r.poisoned, r.recovery.Round(100*time.Millisecond))
	if len(r.poisonReasons) > 0 {
		t.Logf("poisoned, by reason: %v", r.poisonReasons)
	}
	if len(r.violations) > 0 {
		t.Errorf("%d invariant violations:\n%s", len(r.violations), strings.Join(r.violations, "\n"))
	}
	return r
}

// settle waits until the pipeline has finished and returns its state. It gives up after
// timeout without progress (orders decided, records on Kafka), or after five times
// timeout in all: a pipeline that is slow on a busy machine still settles, one that is
// stuck does not, and what is unfinished then is reported as lost.
func (p *pipeline) settle(t *testing.T, timeout time.Duration) *snapshot {
	t.Helper()
	db, err := postgres.Open(context.Background(), p.dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var (
		s        *snapshot
		start    = time.Now()
		done     = -1 // progress at the last look
		progress = start
	)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		s, err = p.state(ctx, db)
		cancel()
		if err == nil && s.settled() {
			break
		}
		if err == nil {
			if n := s.progress(); n > done {
				done, progress = n, time.Now()
			}
		}
		if time.Since(progress) > timeout || time.Since(start) > 5*timeout {
			t.Logf("the pipeline did not settle within %s (%s without progress)",
				time.Since(start).Round(time.Second), time.Since(progress).Round(time.Second))
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("checker cannot read the pipeline's state: %v", err)
	}
	return s
}

// progress counts what the pipeline has done: orders decided and records on Kafka.
func (s *snapshot) progress() int {
	n := 0
	for _, o := range s.orders {
		if o.status != "PENDING" {
			n++
		}
	}
	for _, ms := range s.kafka {
		n += len(ms)
	}
	return n
}

// checkCache is I7: after settle, what the API serves (through Redis) equals Postgres.
// The cache promises that much within its PENDING entries' lifetime (a worker's
// invalidation can fail, say on a Redis timeout under load, and a PENDING entry then
// lives out its 2 s): an order read as PENDING is read again after that before it counts.
func (p *pipeline) checkCache(r *result, s *snapshot) {
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		ids     = make(chan int64)
		pending []int64 // read as PENDING, or changing between reads, while decided
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				got, err := p.read(id)
				mu.Lock()
				switch want := s.orders[id].status; {
				case want != "PENDING" && (got == "PENDING" || errors.Is(err, errStatusChanged)):
					pending = append(pending, id)
				case err != nil:
					r.violate("I7", "GET /orders/%d: %v", id, err)
				case got != want:
					r.violate("I7", "GET /orders/%d says %s, Postgres %s", id, got, want)
				}
				mu.Unlock()
			}
		}()
	}
	for id := range s.orders {
		ids <- id
	}
	close(ids)
	wg.Wait()
	if len(pending) == 0 {
		return
	}
	time.Sleep(orders.DefaultPendingTTL + 500*time.Millisecond)
	for _, id := range pending {
		if got, err := p.read(id); err != nil || got != s.orders[id].status {
			r.violate("I7", "GET /orders/%d says %s (%v), Postgres %s, still after the PENDING entries' %s",
				id, got, err, s.orders[id].status, orders.DefaultPendingTTL)
		}
	}
}

// errStatusChanged: two reads of an order in a row gave different statuses.
var errStatusChanged = errors.New("status changed between two reads")

// read is GET /orders/{id}'s status, read twice: the first read may fill the cache, the
// second is then served from it; they must agree.
func (p *pipeline) read(id int64) (string, error) {
	var o order
	prev := ""
	for range 2 {
		resp, err := http.Get(fmt.Sprintf("%s/orders/%d", p.apiURL, id))
		if err != nil {
			return "", err
		}
		err = json.NewDecoder(resp.Body).Decode(&o)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			return "", fmt.Errorf("status %d, %v", resp.StatusCode, err)
		}
		if prev != "" && o.Status != prev {
			return "", fmt.Errorf("%w: %s, then %s", errStatusChanged, prev, o.Status)
		}
		prev = o.Status
	}
	return o.Status, nil
}
