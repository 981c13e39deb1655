package keyorder_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/keyorder"
)

// topic creates a topic with n partitions that no other test uses.
func topic(t *testing.T, partitions int32) string {
	t.Helper()
	name := testenv.TopicPrefix(t) + "keyorder"
	admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Consumer("keyorder-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	return name
}

// kv is a record to publish: its key, and its value, "key/sequence number".
type kv struct{ key, value string }

// publish sends the records in order, each key's to one partition (Sarama's hash
// partitioner), and waits for every ack.
func publish(t *testing.T, topic string, recs []kv) {
	t.Helper()
	p, err := sarama.NewSyncProducer(testenv.Brokers(), kafkaconf.Producer("keyorder-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	msgs := make([]*sarama.ProducerMessage, len(recs))
	for i, r := range recs {
		msgs[i] = &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(r.value)}
		if r.key != "" {
			msgs[i].Key = sarama.StringEncoder(r.key)
		}
	}
	if err := p.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
}

// keyed returns n records for each of the keys, interleaved: k0/0, k1/0, ..., k0/1, ...
func keyed(keys, n int) []kv {
	var recs []kv
	for seq := range n {
		for k := range keys {
			recs = append(recs, kv{fmt.Sprintf("k%d", k), fmt.Sprintf("k%d/%d", k, seq)})
		}
	}
	return recs
}

func subscribe(t *testing.T, cfg keyorder.Config, topic string) (*keyorder.Subscriber, <-chan *message.Message) {
	t.Helper()
	cfg.Brokers = testenv.Brokers()
	if cfg.ConsumerGroup == "" {
		cfg.ConsumerGroup = topic
	}
	c := kafkaconf.Consumer("keyorder-test")
	c.Consumer.Offsets.AutoCommit.Interval = 100 * time.Millisecond
	c.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
	cfg.Sarama = c
	sub, err := keyorder.NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	msgs, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	return sub, msgs
}

// committed returns the group's committed offset of each partition (-1: none).
func committed(t *testing.T, group, topic string, partitions int32) []int64 {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Consumer("keyorder-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var ps []int32
	for p := range partitions {
		ps = append(ps, p)
	}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: ps})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, partitions)
	for p := range partitions {
		out[p] = -1
		if b := resp.GetBlock(topic, p); b != nil {
			out[p] = b.Offset
		}
	}
	return out
}

func sequence(t *testing.T, msg *message.Message) (key string, seq int) {
	t.Helper()
	key, n, _ := strings.Cut(string(msg.Payload), "/")
	seq, err := strconv.Atoi(n)
	if err != nil {
		t.Fatalf("payload %q: %v", msg.Payload, err)
	}
	return key, seq
}

// Many keys on several partitions, handlers taking random time (a few of them longer
// than several offset commits): each key's records are
// handled one at a time in offset order, a partition's records run concurrently, and a
// committed offset never passes a record whose handler has not finished.
func TestKeyOrderAndOrderedCommits(t *testing.T) {
	const partitions, keys, perKey = 4, 40, 25
	name := topic(t, partitions)
	publish(t, name, keyed(keys, perKey))
	_, msgs := subscribe(t, keyorder.Config{MaxInFlight: 32}, name)

	var (
		mu         sync.Mutex
		finished   = map[int32]map[int64]bool{}
		lastDone   = map[string]int{}
		inHandler  = map[int32]int{}
		maxHandler = map[int32]int{}
		violations []string
		total      int
	)
	for p := range int32(partitions) {
		finished[p] = map[int64]bool{}
	}
	for k := range keys {
		lastDone[fmt.Sprintf("k%d", k)] = -1
	}
	allDone := make(chan struct{})
	go func() {
		for msg := range msgs {
			go func() {
				rec, ok := keyorder.RecordFromContext(msg.Context())
				if !ok {
					t.Error("message context carries no record")
				}
				key, seq := sequence(t, msg)
				mu.Lock()
				if lastDone[key] != seq-1 {
					violations = append(violations, fmt.Sprintf("%s/%d started after %s/%d finished", key, seq, key, lastDone[key]))
				}
				inHandler[rec.Partition]++
				maxHandler[rec.Partition] = max(maxHandler[rec.Partition], inHandler[rec.Partition])
				mu.Unlock()
				// Most handlers are quick; a few are slow enough to outlast several
				// offset commits, which must not pass them.
				delay := rand.N(10 * time.Millisecond)
				if rand.N(50) == 0 {
					delay = 300*time.Millisecond + rand.N(300*time.Millisecond)
				}
				time.Sleep(delay)
				mu.Lock()
				inHandler[rec.Partition]--
				lastDone[key] = seq
				finished[rec.Partition][rec.Offset] = true
				if total++; total == keys*perKey {
					close(allDone)
				}
				mu.Unlock()
				msg.Ack()
			}()
		}
	}()

	// While it runs, every committed offset must lie at or below the first unfinished record.
	checkCommits := func() {
		offs := committed(t, name, name, partitions)
		mu.Lock()
		defer mu.Unlock()
		for p, c := range offs {
			for o := int64(0); o < c; o++ {
				if !finished[int32(p)][o] {
					violations = append(violations, fmt.Sprintf("partition %d committed at %d before offset %d finished", p, c, o))
					break
				}
			}
		}
	}
	timeout := time.After(2 * time.Minute)
	for running := true; running; {
		select {
		case <-allDone:
			running = false
		case <-timeout:
			t.Fatalf("%d of %d records handled after 2 min", total, keys*perKey)
		case <-time.After(20 * time.Millisecond):
			checkCommits()
		}
	}
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		offs := committed(t, name, name, partitions)
		var sum int64
		for _, o := range offs {
			sum += o
		}
		return sum == keys*perKey, fmt.Sprintf("committed offsets %v, want them to add up to %d", offs, keys*perKey)
	})
	checkCommits()

	mu.Lock()
	defer mu.Unlock()
	for i, v := range violations {
		if i == 10 {
			t.Errorf("... %d violations in all", len(violations))
			break
		}
		t.Error(v)
	}
	for p, n := range maxHandler {
		if n < 2 {
			t.Errorf("partition %d: at most %d record(s) with the handler at once; want concurrency within a partition", p, n)
		}
	}
	t.Logf("most records with the handler at once, per partition: %v", maxHandler)
}

// One key whose handler does not finish holds only its own key: the partition's other
// records are handled until the window is full, then the partition pauses; once the key
// finishes, everything completes and is committed.
func TestHeldKeyPausesOnlyWhenTheWindowIsFull(t *testing.T) {
	const window, others = 10, 30
	name := topic(t, 1)
	recs := []kv{{"held", "held/0"}}
	for i := range others {
		recs = append(recs, kv{fmt.Sprintf("k%d", i), fmt.Sprintf("k%d/0", i)})
	}
	publish(t, name, recs)
	reg := prometheus.NewRegistry()
	_, msgs := subscribe(t, keyorder.Config{MaxInFlight: window, Registerer: reg}, name)

	release := make(chan struct{})
	var mu sync.Mutex
	handled := 0
	go func() {
		for msg := range msgs {
			go func() {
				if key, _ := sequence(t, msg); key == "held" {
					<-release
				}
				mu.Lock()
				handled++
				mu.Unlock()
				msg.Ack()
			}()
		}
	}()
	paused := func() float64 { return gauge(t, reg, "keyorder_partition_paused") }
	testenv.Eventually(t, time.Minute, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return handled == window-1 && paused() == 1,
			fmt.Sprintf("%d others handled, paused %v; want %d handled (the window less the held one) and paused", handled, paused(), window-1)
	})
	if c := committed(t, name, name, 1)[0]; c > 0 {
		t.Errorf("committed offset %d passes the held record at offset 0", c)
	}
	close(release)
	testenv.Eventually(t, time.Minute, func() (bool, string) {
		c := committed(t, name, name, 1)[0]
		mu.Lock()
		defer mu.Unlock()
		return handled == others+1 && c == others+1 && paused() == 0,
			fmt.Sprintf("handled %d, committed %d, paused %v; want %d, %d and resumed", handled, c, paused(), others+1, others+1)
	})
}

// gauge returns the value of the first series of a gauge family in reg, -1 if none.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) > 0 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	return -1
}

// A second member joins while the first has handlers in flight that wait on their
// contexts: the rebalance cancels them, the first member lets its partitions go without
// waiting for the handlers' work, and every record is still handled and committed.
func TestRebalanceCancelsHandlersInFlight(t *testing.T) {
	const partitions, keys, perKey = 4, 8, 5
	name := topic(t, partitions)
	publish(t, name, keyed(keys, perKey))

	var (
		mu        sync.Mutex
		acked     = map[string]bool{}
		cancelled int
		received  = map[string]int{} // per member
	)
	proceed := make(chan struct{}) // closed once the rebalance was seen: handlers then finish
	handle := func(member string, msgs <-chan *message.Message) {
		for msg := range msgs {
			mu.Lock()
			received[member]++
			mu.Unlock()
			go func() {
				select {
				case <-msg.Context().Done():
					mu.Lock()
					cancelled++
					mu.Unlock()
					msg.Nack()
					return
				case <-proceed:
				}
				mu.Lock()
				acked[string(msg.Payload)] = true
				mu.Unlock()
				msg.Ack()
			}()
		}
	}
	regA := prometheus.NewRegistry()
	_, msgsA := subscribe(t, keyorder.Config{Registerer: regA}, name)
	go handle("a", msgsA)
	testenv.Eventually(t, time.Minute, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return received["a"] == keys, fmt.Sprintf("member a holds %d records; want one per key, %d", received["a"], keys)
	})

	joined := time.Now()
	_, msgsB := subscribe(t, keyorder.Config{}, name)
	go handle("b", msgsB)
	// Without cancellation the first member would hold its partitions until the group's
	// rebalance timeout (60 s) expelled it.
	testenv.Eventually(t, 45*time.Second, func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return cancelled > 0 && received["b"] > 0,
			fmt.Sprintf("%d handlers cancelled, member b received %d; want the rebalance to hand b partitions", cancelled, received["b"])
	})
	t.Logf("rebalance: member b's first record %s after it joined; member a's partitions released in %.2f ms each on average",
		time.Since(joined).Round(time.Millisecond), releaseMs(t, regA))
	close(proceed)

	testenv.Eventually(t, time.Minute, func() (bool, string) {
		offs := committed(t, name, name, partitions)
		var sum int64
		for _, o := range offs {
			sum += o
		}
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == keys*perKey && sum == keys*perKey,
			fmt.Sprintf("%d records acked, committed offsets %v; want all %d", len(acked), offs, keys*perKey)
	})
	// Records that waited behind their key when the partitions moved gave their bytes back.
	if b := gauge(t, regA, "keyorder_buffered_bytes"); b != 0 {
		t.Errorf("member a holds %v bytes with every record finished; want 0", b)
	}
}

// releaseMs is the mean of keyorder_partition_release_seconds in reg, in milliseconds.
func releaseMs(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "keyorder_partition_release_seconds" && len(mf.Metric) > 0 {
			h := mf.Metric[0].GetHistogram()
			if h.GetSampleCount() > 0 {
				return 1000 * h.GetSampleSum() / float64(h.GetSampleCount())
			}
		}
	}
	return -1
}

// A nacked record is delivered again with its delivery count.
func TestRedeliveryCountsDeliveries(t *testing.T) {
	name := topic(t, 1)
	publish(t, name, keyed(1, 1))
	_, msgs := subscribe(t, keyorder.Config{NackResendSleep: time.Millisecond}, name)
	for want := 1; want <= 3; want++ {
		var msg *message.Message
		select {
		case msg = <-msgs:
		case <-time.After(time.Minute):
			t.Fatalf("delivery %d did not come", want)
		}
		rec, ok := keyorder.RecordFromContext(msg.Context())
		if !ok || rec.Delivery != want {
			t.Fatalf("delivery %d: record %+v (ok %v), want Delivery %d", want, rec, ok, want)
		}
		if want < 3 {
			msg.Nack()
		} else {
			msg.Ack()
		}
	}
}
