package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/go-cmp/cmp"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// tailTime is the time of every record the tests publish.
var tailTime = time.Date(2026, 11, 25, 1, 3, 33, 660835000, time.UTC)

// tailRun is runTail running in a goroutine.
type tailRun struct {
	stdout, stderr testenv.Buffer
	cancel         context.CancelFunc
	done           chan error
	stopped        bool
}

func startTail(t *testing.T, env map[string]string, args ...string) *tailRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &tailRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- runTail(ctx, args, func(k string) string { return env[k] }, &r.stdout, &r.stderr) }()
	t.Cleanup(func() {
		if !r.stopped {
			r.stop(t)
		}
	})
	return r
}

// stop cancels the context, as Ctrl-C does, and expects tail to end without an error.
func (r *tailRun) stop(t *testing.T) {
	t.Helper()
	r.stopped = true
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("tail stopped with %v, want nil after Ctrl-C", err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("tail did not stop after its context was canceled; stderr:\n%s", r.stderr.String())
	}
}

// wait polls until cond holds for tail's output, failing early if tail ended.
func (r *tailRun) wait(t *testing.T, what string, cond func(stdout, stderr string) bool) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		select {
		case err := <-r.done:
			r.stopped = true
			t.Fatalf("tail ended early with %v; stderr:\n%s", err, r.stderr.String())
		default:
		}
		out, errOut := r.stdout.String(), r.stderr.String()
		return cond(out, errOut), fmt.Sprintf("waiting for %s; stdout:\n%s\nstderr:\n%s", what, out, errOut)
	})
}

func (r *tailRun) waitFollowing(t *testing.T, topics ...string) {
	t.Helper()
	r.wait(t, "tail to follow "+strings.Join(topics, ", "), func(_, stderr string) bool {
		for _, topic := range topics {
			if !strings.Contains(stderr, "following "+topic+" ") {
				return false
			}
		}
		return true
	})
}

// waitLines waits until stdout holds every wanted line (as many times as wanted) and
// returns all lines.
func (r *tailRun) waitLines(t *testing.T, want []string) []string {
	t.Helper()
	r.wait(t, fmt.Sprintf("%d lines", len(want)), func(stdout, _ string) bool {
		have := map[string]int{}
		for _, l := range tailLines(stdout) {
			have[l]++
		}
		for _, w := range want {
			if have[w]--; have[w] < 0 {
				return false
			}
		}
		return true
	})
	return tailLines(r.stdout.String())
}

func tailLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// tailTopics is a private orders and payments topic pair (and a poison topic) with two
// partitions each, and a producer that puts each record on the partition the test chooses.
type tailTopics struct {
	prefix   string
	producer sarama.SyncProducer
}

func newTailTopics(t *testing.T, prefix string) *tailTopics {
	t.Helper()
	tt := &tailTopics{prefix: prefix}
	tt.create(t)
	cfg := kafkaconf.Producer("orderctl-test")
	cfg.Producer.Partitioner = sarama.NewManualPartitioner
	p, err := sarama.NewSyncProducer(testenv.Brokers(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	tt.producer = p
	return tt
}

func (tt *tailTopics) create(t *testing.T) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Consumer("orderctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, topic := range []string{events.TopicOrders, events.TopicPayments} {
		err := admin.CreateTopic(tt.prefix+topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false)
		if err != nil {
			t.Fatalf("create topic %s: %v", tt.prefix+topic, err)
		}
	}
}

// send publishes a record on a partition and returns its offset.
func (tt *tailTopics) send(t *testing.T, partition int32, pm *sarama.ProducerMessage) int64 {
	t.Helper()
	pm.Partition = partition
	p, offset, err := tt.producer.SendMessage(pm)
	if err != nil {
		t.Fatalf("send to %s/%d: %v", pm.Topic, partition, err)
	}
	if p != partition {
		t.Fatalf("record went to partition %d, want %d", p, partition)
	}
	return offset
}

// event is the Kafka record of an event, as the relay writes it.
func (tt *tailTopics) event(t *testing.T, e events.Event) *sarama.ProducerMessage {
	t.Helper()
	msg, err := events.NewMessage(e, tailTime)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := kafkaconf.Marshaler.Marshal(tt.prefix+e.Topic(), msg)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

// raw is a record a foreign or broken producer might write.
func (tt *tailTopics) raw(topic, key, typ, value string) *sarama.ProducerMessage {
	return &sarama.ProducerMessage{Topic: tt.prefix + topic, Key: sarama.StringEncoder(key), Value: sarama.StringEncoder(value),
		Headers: []sarama.RecordHeader{
			{Key: []byte(events.MetaType), Value: []byte(typ)},
			{Key: []byte(events.MetaTime), Value: []byte(tailTime.Format(time.RFC3339Nano))},
		}}
}

var (
	tailCreated1  = events.OrderCreated{ID: 1, CustomerID: "CUST001", AmountMinor: 20000, Currency: "USD", CreatedAt: tailTime}
	tailCreated2  = events.OrderCreated{ID: 2, CustomerID: "CUST002", AmountMinor: 1951, Currency: "USD", CreatedAt: tailTime}
	tailPaid1     = events.PaymentSucceeded{ID: 1, PaymentID: "pay_1", AmountMinor: 20000, Currency: "USD", PaidAt: tailTime}
	tailDeclined2 = events.PaymentFailed{ID: 2, PaymentID: "pay_2", Reason: "insufficient_funds", FailedAt: tailTime}
	// Fences are published last on every partition, for order 2 so that --order 2 keeps
	// them: once tail has printed them, it has read everything before them.
	tailFenceCreated = events.OrderCreated{ID: 2, CustomerID: "FENCE", AmountMinor: 100, Currency: "EUR", CreatedAt: tailTime}
	tailFenceFailed  = events.PaymentFailed{ID: 2, PaymentID: "pay_fence", Reason: "fence", FailedAt: tailTime}
)

// tailSent records where each test record went.
type tailSent map[string]*sarama.ProducerMessage

// publishBase writes the records that exist before tail starts (or, for a topic tail
// waits for, right after the topics are created).
func (tt *tailTopics) publishBase(t *testing.T) tailSent {
	t.Helper()
	s := tailSent{}
	put := func(name string, partition int32, pm *sarama.ProducerMessage) {
		pm.Offset = tt.send(t, partition, pm)
		s[name] = pm
	}
	put("created1", 0, tt.event(t, tailCreated1))
	put("garbage", 0, tt.raw(events.TopicOrders, "3", events.TypeOrderCreated, "{not json"))
	put("created2", 1, tt.event(t, tailCreated2))
	put("unknown", 1, tt.raw(events.TopicOrders, "4", "orders.order.exploded.v1", `{"orderId":4}`))
	put("paid1", 0, tt.event(t, tailPaid1))
	put("declined2", 1, tt.event(t, tailDeclined2))
	return s
}

func (tt *tailTopics) publishFences(t *testing.T, s tailSent) {
	t.Helper()
	for _, p := range []int32{0, 1} {
		for _, e := range []events.Event{tailFenceCreated, tailFenceFailed} {
			pm := tt.event(t, e)
			pm.Offset = tt.send(t, p, pm)
			s[fmt.Sprintf("fence %s %d", e.Topic(), p)] = pm
		}
	}
}

const (
	tailLineCreated1  = "2026-11-25T01:03:33.660Z  orders.order.created.v1  order=1  customer=CUST001 amount=200 USD"
	tailLineCreated2  = "2026-11-25T01:03:33.660Z  orders.order.created.v1  order=2  customer=CUST002 amount=19.51 USD"
	tailLinePaid1     = "2026-11-25T01:03:33.660Z  payments.payment.succeeded.v1  order=1  payment=pay_1 amount=200 USD"
	tailLineDeclined2 = "2026-11-25T01:03:33.660Z  payments.payment.failed.v1  order=2  payment=pay_2 reason=insufficient_funds"
	tailLineFenceO    = "2026-11-25T01:03:33.660Z  orders.order.created.v1  order=2  customer=FENCE amount=1 EUR"
	tailLineFenceP    = "2026-11-25T01:03:33.660Z  payments.payment.failed.v1  order=2  payment=pay_fence reason=fence"
)

func tailGarbageLines(prefix string) []string {
	return []string{
		`2026-11-25T01:03:33.660Z  orders.order.created.v1  key=3  undecodable: malformed event: orders.order.created.v1: ` +
			`invalid character 'n' looking for beginning of object key string (` + prefix + `orders/0@1)`,
		`2026-11-25T01:03:33.660Z  orders.order.exploded.v1  key=4  undecodable: unknown event type "orders.order.exploded.v1" (` +
			prefix + `orders/1@1)`,
	}
}

func tailSorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// TestTailText follows both topics and prints every event, garbage included, as one
// readable line; without --from-beginning only events published after the start.
func TestTailText(t *testing.T) {
	tests := []struct {
		name          string
		args          []string
		topicsLater   bool // the topics are created only after tail started
		wantBase      bool // the records published before the start are printed
		wantFollowing string
	}{
		{name: "from the beginning", args: []string{"--from-beginning"}, wantBase: true, wantFollowing: "from the oldest event"},
		{name: "new events only", args: nil, wantBase: false, wantFollowing: "from new events"},
		{name: "topics created after the start", args: nil, topicsLater: true, wantBase: true, wantFollowing: "from the oldest event"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefix := testenv.TopicPrefix(t)
			env := map[string]string{"KAFKA_BROKERS": strings.Join(testenv.Brokers(), ","), "KAFKA_TOPIC_PREFIX": prefix}
			var r *tailRun
			if tc.topicsLater {
				r = startTail(t, env, tc.args...)
				r.wait(t, "tail to wait for the topics", func(_, stderr string) bool {
					return strings.Contains(stderr, "waiting for topic "+prefix+"orders") &&
						strings.Contains(stderr, "waiting for topic "+prefix+"payments")
				})
			}
			tt := newTailTopics(t, prefix)
			s := tt.publishBase(t)
			if r == nil {
				r = startTail(t, env, tc.args...)
			}
			r.waitFollowing(t, tt.prefix+"orders", tt.prefix+"payments")
			if !strings.Contains(r.stderr.String(), tc.wantFollowing) {
				t.Errorf("stderr = %q, want it to say %q", r.stderr.String(), tc.wantFollowing)
			}
			tt.publishFences(t, s)

			want := []string{tailLineFenceO, tailLineFenceO, tailLineFenceP, tailLineFenceP}
			if tc.wantBase {
				want = append(want, tailLineCreated1, tailLineCreated2, tailLinePaid1, tailLineDeclined2)
				want = append(want, tailGarbageLines(tt.prefix)...)
			}
			got := r.waitLines(t, want)
			r.stop(t)
			if diff := cmp.Diff(tailSorted(want), tailSorted(got)); diff != "" {
				t.Errorf("printed lines (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTailJSON prints one JSON object per record, with --order and --topic selecting.
func TestTailJSON(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		topics []string // followed, before the prefix
		want   []string // names of the records printed (see publishBase, publishFences)
	}{
		{
			name:   "one order",
			args:   []string{"--json", "--from-beginning", "--order", "2"},
			topics: []string{"orders", "payments"},
			want: []string{"created2", "declined2", "fence orders 0", "fence orders 1",
				"fence payments 0", "fence payments 1"},
		},
		{
			name:   "one topic",
			args:   []string{"--json", "--from-beginning", "--topic", "orders"},
			topics: []string{"orders"},
			want:   []string{"created1", "garbage", "created2", "unknown", "fence orders 0", "fence orders 1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tt := newTailTopics(t, testenv.TopicPrefix(t))
			s := tt.publishBase(t)
			r := startTail(t, map[string]string{"KAFKA_BROKERS": strings.Join(testenv.Brokers(), ","), "KAFKA_TOPIC_PREFIX": tt.prefix}, tc.args...)
			var followed []string
			for _, topic := range tc.topics {
				followed = append(followed, tt.prefix+topic)
			}
			r.waitFollowing(t, followed...)
			tt.publishFences(t, s)

			var want []string
			for _, name := range tc.want {
				want = append(want, tailJSONLine(t, s[name]))
			}
			got := r.waitLines(t, want)
			r.stop(t)
			if diff := cmp.Diff(tailSorted(want), tailSorted(got)); diff != "" {
				t.Errorf("printed lines (-want +got):\n%s", diff)
			}
			if strings.Contains(r.stderr.String(), "following "+tt.prefix+"payments") != (len(tc.topics) == 2) {
				t.Errorf("stderr = %q; want payments followed only without --topic", r.stderr.String())
			}
		})
	}
}

// tailJSONLine is the --json line expected for a published record, written out by hand.
func tailJSONLine(t *testing.T, pm *sarama.ProducerMessage) string {
	t.Helper()
	key, _ := pm.Key.Encode()
	value, _ := pm.Value.Encode()
	var typ string
	for _, h := range pm.Headers {
		if string(h.Key) == events.MetaType {
			typ = string(h.Value)
		}
	}
	fields := []string{`"time":"2026-11-25T01:03:33.660835Z"`, `"type":"` + typ + `"`}
	data := string(value)
	var errText string
	switch string(value) {
	case "{not json":
		data = `"{not json"`
		errText = `,"error":"malformed event: orders.order.created.v1: invalid character 'n' looking for beginning of object key string"`
	case `{"orderId":4}`:
		errText = `,"error":"unknown event type \"orders.order.exploded.v1\""`
	default:
		fields = append(fields, `"orderId":`+string(key))
	}
	fields = append(fields, `"key":"`+string(key)+`"`, `"topic":"`+pm.Topic+`"`,
		fmt.Sprintf(`"partition":%d`, pm.Partition), fmt.Sprintf(`"offset":%d`, pm.Offset), `"data":`+data)
	line := "{" + strings.Join(fields, ",") + errText + "}"
	if !json.Valid([]byte(line)) {
		t.Fatalf("test bug: %s is not JSON", line)
	}
	return line
}

func TestTailUsageErrors(t *testing.T) {
	// An unreachable broker: a usage error must be reported before any connection.
	env := map[string]string{"KAFKA_BROKERS": "127.0.0.1:1"}
	for _, args := range [][]string{
		{"--bogus"},
		{"extra"},
		{"--topic", "orderz"},
		{"--topic"},
		{"--order", "abc"},
		{"--order", "0"},
		{"--order", "-1"},
		{"--order", "007"},
		{"--json=maybe"},
	} {
		var out bytes.Buffer
		err := runTail(context.Background(), args, func(k string) string { return env[k] }, &out, &out)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("runTail(%q) = %v, want a usage error", args, err)
		}
	}
}

func TestTailOptions(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want tailOptions
	}{
		{"defaults", nil, nil,
			tailOptions{brokers: []string{"localhost:9092"}, topics: []string{"orders", "payments"}}},
		{"everything", []string{"--topic", "orders.poison", "--order", "12", "--from-beginning", "--json"},
			map[string]string{"KAFKA_BROKERS": "k1:9092, k2:9092", "KAFKA_TOPIC_PREFIX": "staging."},
			tailOptions{brokers: []string{"k1:9092", "k2:9092"}, topics: []string{"staging.orders.poison"}, order: "12",
				fromBeginning: true, json: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTail(tt.args, func(k string) string { return tt.env[k] }, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(tailOptions{})); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTailUnreachableBroker expects a clear error, not a hang, when no broker answers.
func TestTailUnreachableBroker(t *testing.T) {
	addr := testenv.FreeAddr(t) // nothing listens there
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- runTail(context.Background(), nil, func(k string) string { return map[string]string{"KAFKA_BROKERS": addr}[k] }, &out, &out)
	}()
	select {
	case err := <-done:
		var ue usageError
		if err == nil || errors.As(err, &ue) {
			t.Fatalf("runTail = %v, want a failure", err)
		}
		if msg := err.Error(); !strings.Contains(msg, "kafka") || !strings.Contains(msg, addr) {
			t.Errorf("error %q does not say that Kafka at %s is unreachable", msg, addr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("runTail still running after 20s with no broker: it hangs")
	}
}

// TestTailFormat renders records that need no broker: a poisoned event, and garbage
// without a usable ce_time, with an unprintable key and a value that is not JSON.
func TestTailFormat(t *testing.T) {
	created, err := events.NewMessage(tailCreated1, tailTime)
	if err != nil {
		t.Fatal(err)
	}
	poisoned, err := kafkaconf.Marshaler.Marshal("orders.poison", created)
	if err != nil {
		t.Fatal(err)
	}
	value, _ := poisoned.Value.Encode()
	hs := []*sarama.RecordHeader{{Key: []byte("reason_poisoned"), Value: []byte("payment provider answered 500:\nboom")}}
	for i := range poisoned.Headers {
		hs = append(hs, &poisoned.Headers[i])
	}
	kafkaTime := time.Date(2026, 11, 25, 9, 0, 0, 0, time.FixedZone("CET", 3600))
	tests := []struct {
		name       string
		m          *sarama.ConsumerMessage
		text, json string
	}{
		{
			name: "poisoned",
			m:    &sarama.ConsumerMessage{Topic: "orders.poison", Partition: 3, Offset: 7, Key: []byte("1"), Value: value, Headers: hs},
			text: "2026-11-25T01:03:33.660Z  orders.order.created.v1  order=1  customer=CUST001 amount=200 USD  " +
				"poisoned: payment provider answered 500: boom",
			json: `{"time":"2026-11-25T01:03:33.660835Z","type":"orders.order.created.v1","orderId":1,"key":"1",` +
				`"topic":"orders.poison","partition":3,"offset":7,"data":` + string(value) +
				`,"poisoned":"payment provider answered 500:\nboom"}`,
		},
		{
			name: "garbage",
			m: &sarama.ConsumerMessage{Topic: "orders", Partition: 0, Offset: 9, Key: []byte("a b\x00"), Value: []byte("\x01bin"),
				Timestamp: kafkaTime, Headers: []*sarama.RecordHeader{{Key: []byte(events.MetaTime), Value: []byte("yesterday")}}},
			text: `2026-11-25T08:00:00.000Z  -  key="a b\x00"  undecodable: unknown event type "" (orders/0@9)`,
			json: `{"time":"2026-11-25T08:00:00Z","type":"","key":"a b\u0000","topic":"orders","partition":0,"offset":9,` +
				`"data":"\u0001bin","error":"unknown event type \"\""}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range []struct {
				json bool
				want string
			}{{false, tc.text}, {true, tc.json}} {
				var out bytes.Buffer
				if err := newTailRecord(tc.m).write(&out, mode.json); err != nil {
					t.Fatal(err)
				}
				if got := out.String(); got != mode.want+"\n" {
					t.Errorf("json=%v:\n got %q\nwant %q", mode.json, got, mode.want+"\n")
				}
			}
		})
	}
}
