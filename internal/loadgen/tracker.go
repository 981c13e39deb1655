package loadgen

import (
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// tracker holds what a run has seen, from the api's answers and from the topics, under
// one lock so that an outcome that arrives before its POST's answer still counts.
type tracker struct {
	mu       sync.Mutex
	created  map[int64]time.Time // order id → when its POST was scheduled
	outcomes map[int64]outcome   // any order's first outcome event seen
	lags     map[int64]time.Duration
	terminal int64 // created orders with an outcome
	posts    []time.Duration
	errs     map[string]int64
}

// outcome is what the payments topic said about an order.
type outcome struct {
	status string
	at     time.Time
}

func newTracker() *tracker {
	return &tracker{created: map[int64]time.Time{}, outcomes: map[int64]outcome{},
		lags: map[int64]time.Duration{}, errs: map[string]int64{}}
}

func (t *tracker) accepted(id int64, scheduled time.Time, lat time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, dup := t.created[id]; dup {
		return
	}
	t.created[id] = scheduled
	t.posts = append(t.posts, lat)
	if _, ok := t.outcomes[id]; ok {
		t.terminal++
	}
}

func (t *tracker) failed(kind string) {
	t.mu.Lock()
	t.errs[kind]++
	t.mu.Unlock()
}

func (t *tracker) outstanding() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int64(len(t.created)) - t.terminal
}

// record notes an event from the orders or payments topic, seen at at.
func (t *tracker) record(m *sarama.ConsumerMessage, at time.Time) {
	var typ, ceTime string
	for _, h := range m.Headers {
		switch string(h.Key) {
		case events.MetaType:
			typ = string(h.Value)
		case events.MetaTime:
			ceTime = string(h.Value)
		}
	}
	id, _ := strconv.ParseInt(string(m.Key), 10, 64)
	t.mu.Lock()
	defer t.mu.Unlock()
	switch typ {
	case events.TypeOrderCreated:
		// First delivery only: a resend (at-least-once) is not a second sample.
		if _, seen := t.lags[id]; !seen {
			if ct, err := time.Parse(time.RFC3339Nano, ceTime); err == nil && !m.Timestamp.IsZero() {
				t.lags[id] = max(m.Timestamp.Sub(ct), 0)
			}
		}
	case events.TypePaymentSucceeded, events.TypePaymentFailed:
		if _, seen := t.outcomes[id]; seen {
			return
		}
		status := "PAID"
		if typ == events.TypePaymentFailed {
			status = "PAYMENT_FAILED"
		}
		t.outcomes[id] = outcome{status: status, at: at}
		if _, ok := t.created[id]; ok {
			t.terminal++
		}
	}
}

// sample records the backlog every interval from start until the returned func is
// called, which takes a last sample and returns them all.
func (t *tracker) sample(start time.Time, interval time.Duration) func() []BacklogSample {
	var samples []BacklogSample
	take := func() {
		t.mu.Lock()
		created, terminal := int64(len(t.created)), t.terminal
		t.mu.Unlock()
		samples = append(samples, BacklogSample{AtS: round3(time.Since(start).Seconds()), Created: created,
			Terminal: terminal, Backlog: created - terminal})
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				take()
			}
		}
	}()
	return func() []BacklogSample {
		close(stop)
		<-done
		take()
		return samples
	}
}

func round3(f float64) float64 { return float64(int64(f*1000)) / 1000 }

// status is the progress line.
func (t *tracker) status(start time.Time, sent int64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var nerr int64
	for _, n := range t.errs {
		nerr += n
	}
	p := percentilesOf(append([]time.Duration(nil), t.posts...))
	return fmt.Sprintf("%6.1fs  sent %d  %.0f/s  errors %d  POST p99 %.1f ms  final %d  backlog %d",
		time.Since(start).Seconds(), sent, float64(sent)/time.Since(start).Seconds(), nerr, p.P99,
		t.terminal, int64(len(t.created))-t.terminal)
}

func (t *tracker) report(sent int64, elapsed time.Duration) Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	errs := make(map[string]int64, len(t.errs))
	for k, n := range t.errs {
		errs[k] = n
	}
	r := Report{Sent: sent, Created: int64(len(t.created)), Errors: errs, DurationS: elapsed.Seconds(),
		RatePerS: float64(len(t.created)) / elapsed.Seconds(), PostMs: percentilesOf(t.posts),
		FinalStatus: map[string]int64{}}
	var toFinal, lags []time.Duration
	for id, at := range t.created {
		if lag, ok := t.lags[id]; ok {
			lags = append(lags, lag)
		}
		o, ok := t.outcomes[id]
		if !ok {
			r.FinalStatus["PENDING"]++
			continue
		}
		r.FinalStatus[o.status]++
		toFinal = append(toFinal, o.at.Sub(at))
	}
	r.CreateToFinalMs = percentilesOf(toFinal)
	r.OutboxToKafkaMs = percentilesOf(lags)
	return r
}

// watch follows the orders and payments topics from their current end into t until the
// returned func is called.
func watch(brokers []string, topicPrefix string, t *tracker) (stop func(), err error) {
	consumer, err := sarama.NewConsumer(brokers, kafkaconf.Consumer("orderctl-load"))
	if err != nil {
		return nil, fmt.Errorf("kafka at %v: %w", brokers, err)
	}
	var (
		wg  sync.WaitGroup
		pcs []sarama.PartitionConsumer
	)
	stop = func() {
		for _, pc := range pcs {
			pc.AsyncClose() // closes pc.Messages(), ending its goroutine
		}
		wg.Wait()
		consumer.Close()
	}
	for _, topic := range []string{topicPrefix + events.TopicOrders, topicPrefix + events.TopicPayments} {
		partitions, err := consumer.Partitions(topic)
		if err != nil {
			stop()
			return nil, fmt.Errorf("topic %s: %w", topic, err)
		}
		for _, p := range partitions {
			pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetNewest)
			if err != nil {
				stop()
				return nil, fmt.Errorf("consume %s/%d: %w", topic, p, err)
			}
			pcs = append(pcs, pc)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := range pc.Messages() {
					t.record(m, time.Now())
				}
			}()
		}
	}
	return stop, nil
}
