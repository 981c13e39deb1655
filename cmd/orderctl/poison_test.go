package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/worker"
)

// poisonSeed is a record the tests put on a poison topic, as the worker would have.
type poisonSeed struct {
	pos     poisonPos
	key     string // "" for none
	value   string
	age     time.Duration // how long ago it was poisoned
	headers map[string]string
}

const (
	reasonGateway     = "payment provider answered 503: gateway maintenance"
	reasonBoom        = "payment provider answered 500: boom"
	reasonNotFound    = "order not found"
	reasonUnknownType = `unknown event type "orders.order.exploded.v1"`
)

// poisonedEvent returns the headers of an OrderCreated poisoned by the worker.
func poisonedEvent(prefix, order, reason, attempts string, extra ...string) map[string]string {
	h := map[string]string{
		"_watermill_message_uuid":        "uuid-" + order,
		events.MetaSpecVersion:           "1.0",
		events.MetaID:                    "ce-" + order,
		events.MetaSource:                "/orderpipe/orders",
		events.MetaType:                  events.TypeOrderCreated,
		events.MetaTime:                  "2026-11-25T01:03:33Z",
		events.MetaSubject:               order,
		events.MetaContentType:           "application/json",
		middleware.ReasonForPoisonedKey:  reason,
		middleware.PoisonedTopicKey:      prefix + events.TopicOrders,
		middleware.PoisonedHandlerKey:    "payment",
		middleware.PoisonedSubscriberKey: "kafka.Subscriber",
		worker.MetaAttempts:              attempts,
		worker.MetaFirstFailedAt:         "2026-11-25T01:03:34Z",
		"correlation_id":                 "corr-" + order,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i]] = extra[i+1]
	}
	return h
}

func poisonCreatedJSON(order string) string {
	return `{"orderId":` + order + `,"customerId":"C1","amountMinor":1000,"currency":"USD","createdAt":"2026-11-25T01:03:33Z"}`
}

// seedPoison creates prefix's orders topic (2 partitions) and poison topic (3), and puts
// these records on the poison topic:
//
//	0:0 order 101, gateway 503, 10 minutes ago
//	0:1 order 102, gateway 503, 5 minutes ago
//	1:0 garbage of an unknown type, key 7, no subject
//	1:1 order 103, 500, replayed 3 times already
//	2:0 order 104, order not found, 3 hours ago
//	2:1 order 105, gateway 503, replayed once
func seedPoison(t *testing.T, prefix string) []poisonSeed {
	t.Helper()
	recs := []poisonSeed{
		{poisonPos{0, 0}, "101", poisonCreatedJSON("101"), 10 * time.Minute, poisonedEvent(prefix, "101", reasonGateway, "4")},
		{poisonPos{0, 1}, "102", poisonCreatedJSON("102"), 5 * time.Minute, poisonedEvent(prefix, "102", reasonGateway, "4")},
		{poisonPos{1, 0}, "7", "{not json\x1b[31m", 4 * time.Minute, map[string]string{
			"_watermill_message_uuid":        "",
			events.MetaType:                  "orders.order.exploded.v1",
			middleware.ReasonForPoisonedKey:  reasonUnknownType,
			middleware.PoisonedTopicKey:      prefix + events.TopicOrders,
			middleware.PoisonedHandlerKey:    "payment",
			middleware.PoisonedSubscriberKey: "kafka.Subscriber",
			worker.MetaAttempts:              "1",
			worker.MetaFirstFailedAt:         "2026-11-25T01:03:34Z",
		}},
		{poisonPos{1, 1}, "103", poisonCreatedJSON("103"), time.Minute, poisonedEvent(prefix, "103", reasonBoom, "4",
			metaReplayCount, "3", metaReplayedAt, "2026-11-25T02:00:00Z", metaReplayedFrom, prefix+"orders.poison/1:0")},
		{poisonPos{2, 0}, "104", poisonCreatedJSON("104"), 3 * time.Hour, poisonedEvent(prefix, "104", reasonNotFound, "1")},
		{poisonPos{2, 1}, "105", poisonCreatedJSON("105"), 0, poisonedEvent(prefix, "105", reasonGateway, "4",
			metaReplayCount, "1", metaReplayedAt, "2026-11-25T02:00:00Z")},
	}
	poisonCreateTopic(t, prefix+events.TopicOrders, 2)
	poisonCreateTopic(t, prefix+events.TopicOrdersPoison, 3)
	conf := kafkaconf.Producer("orderctl-test")
	conf.Producer.Partitioner = sarama.NewManualPartitioner
	prod, err := sarama.NewSyncProducer(testenv.Brokers(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	now := time.Now()
	for _, r := range recs {
		m := &sarama.ProducerMessage{Topic: prefix + events.TopicOrdersPoison, Partition: r.pos.partition,
			Value: sarama.StringEncoder(r.value), Timestamp: now.Add(-r.age)}
		if r.key != "" {
			m.Key = sarama.StringEncoder(r.key)
		}
		for k, v := range r.headers {
			m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
		p, off, err := prod.SendMessage(m)
		if err != nil {
			t.Fatal(err)
		}
		if (poisonPos{p, off}) != r.pos {
			t.Fatalf("seeded record landed at %d:%d, want %s", p, off, r.pos)
		}
	}
	return recs
}

func poisonCreateTopic(t *testing.T, name string, poisonPartitions int32) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Producer("orderctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: poisonPartitions, ReplicationFactor: 1}, false); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	t.Cleanup(func() {
		admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Producer("orderctl-test"))
		if err == nil {
			admin.DeleteTopic(name)
			admin.Close()
		}
	})
}

// poisonTopicSize counts the records a topic holds.
func poisonTopicSize(t *testing.T, topic string) int64 {
	t.Helper()
	client, err := sarama.NewClient(testenv.Brokers(), kafkaconf.Consumer("orderctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, p := range parts {
		oldest, err1 := client.GetOffset(topic, p, sarama.OffsetOldest)
		newest, err2 := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		n += newest - oldest
	}
	return n
}

// poisonTestCmd is a poison command writing to buffers, with stdin not a terminal.
type poisonTestCmd struct {
	*poisonCmd
	out, errOut *bytes.Buffer
}

func newPoisonTestCmd(t *testing.T, env map[string]string) *poisonTestCmd {
	t.Helper()
	full := map[string]string{"KAFKA_BROKERS": strings.Join(testenv.Brokers(), ","), "HOME": t.TempDir()}
	for k, v := range env {
		full[k] = v
	}
	tc := &poisonTestCmd{out: &bytes.Buffer{}, errOut: &bytes.Buffer{}}
	tc.poisonCmd = &poisonCmd{getenv: envconf.Map(full), stdout: tc.out, stderr: tc.errOut,
		stdin: strings.NewReader(""), now: time.Now}
	return tc
}

// exec runs the command with a fresh output.
func (tc *poisonTestCmd) exec(args ...string) error {
	tc.out.Reset()
	tc.errOut.Reset()
	return tc.run(context.Background(), args)
}

func poisonListJSON(t *testing.T, tc *poisonTestCmd, args ...string) []poisonSummary {
	t.Helper()
	if err := tc.exec(append([]string{"list", "--json"}, args...)...); err != nil {
		t.Fatalf("list --json %q: %v", args, err)
	}
	var got []poisonSummary
	if err := json.Unmarshal(tc.out.Bytes(), &got); err != nil {
		t.Fatalf("list --json: %v\n%s", err, tc.out)
	}
	return got
}

func poisonPositions(ss []poisonSummary) []string {
	out := []string{}
	for _, s := range ss {
		out = append(out, s.Position)
	}
	return out
}

func TestPoisonList(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	recs := seedPoison(t, prefix)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})

	t.Run("json", func(t *testing.T) {
		got := poisonListJSON(t, tc)
		var want []poisonSummary
		for _, r := range recs {
			attempts, _ := strconv.Atoi(r.headers[worker.MetaAttempts])
			replays, _ := strconv.Atoi(r.headers[metaReplayCount])
			order := r.headers[events.MetaSubject]
			if order == "" {
				order = r.key
			}
			want = append(want, poisonSummary{
				Position: r.pos.String(), Partition: r.pos.partition, Offset: r.pos.offset,
				Topic: prefix + events.TopicOrders, Key: r.key, OrderID: order, Type: r.headers[events.MetaType],
				EventID: r.headers[events.MetaID], Reason: r.headers[middleware.ReasonForPoisonedKey], Handler: "payment",
				Attempts: attempts, FirstFailedAt: "2026-11-25T01:03:34Z", ReplayCount: replays,
				ReplayedAt: r.headers[metaReplayedAt],
			})
		}
		if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(poisonSummary{}, "PoisonedAt")); diff != "" {
			t.Errorf("list --json (-want +got):\n%s", diff)
		}
		for i, s := range got {
			if age := time.Since(s.PoisonedAt); age < recs[i].age || age > recs[i].age+time.Minute {
				t.Errorf("%s poisonedAt %s is %s ago, want about %s", s.Position, s.PoisonedAt, age, recs[i].age)
			}
		}
	})

	t.Run("table", func(t *testing.T) {
		if err := tc.exec("list"); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(tc.out.String()), "\n")
		if len(lines) != 1+len(recs) || !strings.HasPrefix(lines[0], "POSITION") {
			t.Fatalf("list printed %d lines, want a header and %d rows:\n%s", len(lines), len(recs), tc.out)
		}
		for i, r := range recs {
			row := strings.Fields(lines[i+1])
			if row[0] != r.pos.String() || row[2] != prefix+events.TopicOrders || !strings.Contains(lines[i+1], r.headers[middleware.ReasonForPoisonedKey]) {
				t.Errorf("row %d = %q, want %s, topic %s and reason %q", i, lines[i+1], r.pos, prefix+events.TopicOrders,
					r.headers[middleware.ReasonForPoisonedKey])
			}
		}
		if want := "6 of 6 poisoned messages in " + prefix + "orders.poison\n"; tc.errOut.String() != want {
			t.Errorf("stderr = %q, want %q", tc.errOut, want)
		}
	})

	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"reason, any case", []string{"--reason", "GATEWAY"}, []string{"0:0", "0:1", "2:1"}},
		{"order", []string{"--order", "103"}, []string{"1:1"}},
		{"order by key without a subject", []string{"--order", "7"}, []string{"1:0"}},
		{"several orders", []string{"--order", "101", "--order", "104"}, []string{"0:0", "2:0"}},
		{"unknown order", []string{"--order", "999"}, []string{}},
		{"type", []string{"--type", "orders.order.exploded.v1"}, []string{"1:0"}},
		{"since", []string{"--since", "2h"}, []string{"0:0", "0:1", "1:0", "1:1", "2:1"}},
		{"since, recent only", []string{"--since", "2m"}, []string{"1:1", "2:1"}},
		{"limit", []string{"--limit", "2"}, []string{"0:0", "0:1"}},
		{"limit after the filter", []string{"--reason", "gateway", "--limit", "2"}, []string{"0:0", "0:1"}},
		{"positions", []string{"2:0", "1:1"}, []string{"1:1", "2:0"}},
		{"positions and a filter", []string{"--reason", "gateway", "0:1", "1:1"}, []string{"0:1"}},
		{"flags after positions", []string{"0:1", "--reason", "boom"}, []string{}},
		{"filters combined", []string{"--reason", "503", "--since", "7m"}, []string{"0:1", "2:1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := poisonPositions(poisonListJSON(t, tc, tt.args...)); !slices.Equal(got, tt.want) {
				t.Errorf("list %q = %v, want %v", tt.args, got, tt.want)
			}
		})
	}
}

func TestPoisonShow(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	recs := seedPoison(t, prefix)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})

	if err := tc.exec("show", "0:1"); err != nil {
		t.Fatal(err)
	}
	text := tc.out.String()
	for k, v := range recs[1].headers {
		if !strings.Contains(text, k) || !strings.Contains(text, v) {
			t.Errorf("show 0:1 lacks header %s: %s:\n%s", k, v, text)
		}
	}
	for _, want := range []string{"message 0:1 of " + prefix + "orders.poison", "key 102", "headers (15):",
		"reason_poisoned " + reasonGateway, "original topic " + prefix + "orders"} {
		if !hasLine(text, want) {
			t.Errorf("show 0:1 lacks the line %q:\n%s", want, text)
		}
	}
	if !strings.Contains(text, "\n{\n  \"orderId\": 102,\n  \"customerId\": \"C1\",\n") {
		t.Errorf("show 0:1 does not indent the payload:\n%s", text)
	}

	// Not JSON, and with a terminal escape: quoted, never passed to the terminal raw.
	if err := tc.exec("show", "--json", "1:0"); err != nil {
		t.Fatal(err)
	}
	var got poisonShown
	if err := json.Unmarshal(tc.out.Bytes(), &got); err != nil {
		t.Fatalf("show --json: %v\n%s", err, tc.out)
	}
	var payload string
	if err := json.Unmarshal(got.Payload, &payload); err != nil || payload != recs[2].value {
		t.Errorf("show --json payload = %s, want the string %q", got.Payload, recs[2].value)
	}
	if got.Key == nil || *got.Key != "7" || len(got.Headers) != len(recs[2].headers) || got.Position != "1:0" {
		t.Errorf("show --json = %+v, want key 7, position 1:0 and %d headers", got, len(recs[2].headers))
	}
	if err := tc.exec("show", "1:0"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(tc.out.String(), "\x1b") || !strings.Contains(tc.out.String(), `(not JSON) "{not json\x1b[31m"`) {
		t.Errorf("show 1:0 printed the payload unquoted:\n%q", tc.out)
	}

	for _, tt := range []struct{ pos, want string }{
		{"0:2", "partition 0 of " + prefix + "orders.poison holds offsets 0 to 1"},
		{"0:99", "holds offsets 0 to 1"},
		{"3:0", "has partitions 0 to 2"},
	} {
		err := tc.exec("show", tt.pos)
		var ue usageError
		if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("show %s = %v, want a failure mentioning %q", tt.pos, err, tt.want)
		}
	}
}

// hasLine reports whether text has a line equal to want once runs of spaces (table
// alignment) are made single.
func hasLine(text, want string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.Join(strings.Fields(l), " ") == want {
			return true
		}
	}
	return false
}

func TestPoisonStats(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	seedPoison(t, prefix)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})

	if err := tc.exec("stats", "--json"); err != nil {
		t.Fatal(err)
	}
	var got poisonStatistics
	if err := json.Unmarshal(tc.out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := poisonStatistics{
		Topic:    prefix + "orders.poison",
		Total:    6,
		ByReason: []poisonCount{{reasonGateway, 3}, {reasonNotFound, 1}, {reasonBoom, 1}, {reasonUnknownType, 1}},
		ByType:   []poisonCount{{events.TypeOrderCreated, 5}, {"orders.order.exploded.v1", 1}},
		ByTopic:  []poisonCount{{prefix + "orders", 6}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stats --json (-want +got):\n%s", diff)
	}

	if err := tc.exec("stats", "--order", "101", "--order", "7"); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"2 poisoned messages in " + prefix + "orders.poison", "1 " + reasonGateway,
		"1 orders.order.exploded.v1", "2 " + prefix + "orders"} {
		if !hasLine(tc.out.String(), line) {
			t.Errorf("stats lacks %q:\n%s", line, tc.out)
		}
	}
}

// poisonCopies reads the records replayed to topic, by the poison record they came from.
func poisonCopies(t *testing.T, topic string, want int) map[string][]*sarama.ConsumerMessage {
	t.Helper()
	msgs := testenv.Consume(t, topic, 10*time.Second, func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= want })
	if n := poisonTopicSize(t, topic); n != int64(want) || len(msgs) != want {
		t.Fatalf("%s holds %d records (read %d), want %d", topic, n, len(msgs), want)
	}
	out := map[string][]*sarama.ConsumerMessage{}
	for _, m := range msgs {
		src := testenv.Header(m, metaReplayedFrom)
		out[src] = append(out[src], m)
	}
	return out
}

func poisonSources(prefix string, pos ...string) []string {
	var out []string
	for _, p := range pos {
		out = append(out, prefix+"orders.poison/"+p)
	}
	return out
}

func poisonKeys(m map[string][]*sarama.ConsumerMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestPoisonReplay(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	recs := seedPoison(t, prefix)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	journal := filepath.Join(t.TempDir(), "replay.journal")
	target := prefix + events.TopicOrders

	t.Run("dry run publishes and writes nothing", func(t *testing.T) {
		if err := tc.exec("replay", "--reason", "gateway", "--dry-run", "--journal", journal); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"would replay 0:0 order=101", "would replay 0:1 order=102", "would replay 2:1 order=105",
			"replay_count=2", "dry run: would replay 3, already replayed 0, would skip 0 of 3 selected; nothing published"} {
			if !strings.Contains(tc.out.String(), want) {
				t.Errorf("dry run lacks %q:\n%s", want, tc.out)
			}
		}
		if n := poisonTopicSize(t, target); n != 0 {
			t.Errorf("%s holds %d records after a dry run, want 0", target, n)
		}
		if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("dry run wrote the journal: %v", err)
		}
	})

	t.Run("needs confirmation", func(t *testing.T) {
		err := tc.exec("replay", "--reason", "gateway", "--journal", journal)
		if err == nil || !strings.Contains(err.Error(), "pass --yes") {
			t.Errorf("replay without --yes, stdin not a terminal = %v, want a refusal naming --yes", err)
		}
		if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the refusal wrote the journal: %v", err)
		}
		tc.interactive, tc.stdin = true, strings.NewReader("n\n")
		err = tc.exec("replay", "--reason", "gateway", "--journal", journal)
		tc.interactive = false
		if err == nil || !strings.Contains(err.Error(), "not confirmed") {
			t.Errorf("replay answered n = %v, want not confirmed", err)
		}
		if !strings.Contains(tc.errOut.String(), "replay 3 messages to "+target+"? [y/N]") {
			t.Errorf("question = %q", tc.errOut)
		}
		if n := poisonTopicSize(t, target); n != 0 {
			t.Errorf("%s holds %d records after refusals, want 0", target, n)
		}
	})

	t.Run("exact selection", func(t *testing.T) {
		tc.interactive, tc.stdin = true, strings.NewReader("y\n")
		err := tc.exec("replay", "--reason", "gateway", "--journal", journal)
		tc.interactive = false
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(tc.out.String(), "replayed 3, already replayed 0, skipped 0 of 3 selected") {
			t.Errorf("summary missing:\n%s", tc.out)
		}
		got := poisonCopies(t, target, 3)
		if diff := cmp.Diff(poisonSources(prefix, "0:0", "0:1", "2:1"), poisonKeys(got)); diff != "" {
			t.Fatalf("replayed sources (-want +got):\n%s", diff)
		}
		for _, i := range []int{0, 1, 5} {
			r := recs[i]
			m := got[poisonSources(prefix, r.pos.String())[0]][0]
			if string(m.Key) != r.key || string(m.Value) != r.value {
				t.Errorf("%s replayed as key %q value %s, want %q %s", r.pos, m.Key, m.Value, r.key, r.value)
			}
			want := map[string]string{}
			for k, v := range r.headers {
				if !deliveryHeaders[k] {
					want[k] = v
				}
			}
			prev, _ := strconv.Atoi(r.headers[metaReplayCount])
			want[metaReplayCount] = strconv.Itoa(prev + 1)
			want[metaReplayedFrom] = poisonSources(prefix, r.pos.String())[0]
			gotHeaders := map[string]string{}
			for _, h := range m.Headers {
				gotHeaders[string(h.Key)] = string(h.Value)
			}
			at, err := time.Parse(time.RFC3339, gotHeaders[metaReplayedAt])
			if err != nil || time.Since(at) > time.Minute {
				t.Errorf("%s replayed_at = %q, want about now", r.pos, gotHeaders[metaReplayedAt])
			}
			delete(gotHeaders, metaReplayedAt)
			if diff := cmp.Diff(want, gotHeaders); diff != "" {
				t.Errorf("%s replayed headers (-want +got):\n%s", r.pos, diff)
			}
		}
	})

	t.Run("again replays nothing", func(t *testing.T) {
		if err := tc.exec("replay", "--reason", "gateway", "--yes", "--journal", journal); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(tc.out.String(), "replayed 0, already replayed 3, skipped 0 of 3 selected") ||
			!strings.Contains(tc.out.String(), "already replayed 0:0 order=101") {
			t.Errorf("second replay:\n%s", tc.out)
		}
		if n := poisonTopicSize(t, target); n != 3 {
			t.Errorf("%s holds %d records, want still 3", target, n)
		}
	})

	t.Run("loop guard", func(t *testing.T) {
		err := tc.exec("replay", "--order", "103", "--yes", "--journal", journal)
		if err == nil || !strings.Contains(err.Error(), "1 of the 1 selected messages were skipped") {
			t.Errorf("replay of a message replayed 3 times = %v, want it skipped with an error", err)
		}
		if !strings.Contains(tc.out.String(), "skipped 1:1 order=103 type="+events.TypeOrderCreated+": replayed 3 times already, the maximum (--max-replays 3)") {
			t.Errorf("no audit line for the skip:\n%s", tc.out)
		}
		if n := poisonTopicSize(t, target); n != 3 {
			t.Errorf("%s holds %d records, want still 3", target, n)
		}
		// The maximum is configurable, by environment and by flag.
		env := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix, "POISON_MAX_REPLAYS": "1"})
		err = env.exec("replay", "--order", "105", "--yes", "--journal", filepath.Join(t.TempDir(), "j"))
		if err == nil || !strings.Contains(env.out.String(), "(--max-replays 1)") {
			t.Errorf("POISON_MAX_REPLAYS=1, replay of a message replayed once = %v, want it skipped:\n%s", err, env.out)
		}
		if err := tc.exec("replay", "--order", "103", "--yes", "--max-replays", "4", "--journal", journal); err != nil {
			t.Fatal(err)
		}
		got := poisonCopies(t, target, 4)
		if m := got[poisonSources(prefix, "1:1")[0]]; len(m) != 1 || testenv.Header(m[0], metaReplayCount) != "4" {
			t.Errorf("1:1 replayed %d times, want once with replay_count 4", len(m))
		}
	})
}

// TestPoisonReplayResumes stops a replay the two ways a kill can: between two messages,
// and after Kafka acknowledged a message but before the journal recorded it. Run again,
// the replay publishes every selected message exactly once in all.
func TestPoisonReplayResumes(t *testing.T) {
	for _, tt := range []struct {
		name string
		// stop is the afterAck hook of the first run: it runs after each message's ack.
		stop      func(cancel context.CancelFunc, n int) error
		wantFirst string // in the first run's error
		wantAgain string // in the second run's output
	}{
		{
			name: "between messages",
			stop: func(cancel context.CancelFunc, n int) error {
				if n == 2 {
					cancel() // as SIGINT would: the message in flight is finished and recorded
				}
				return nil
			},
			wantFirst: "interrupted after replaying 2 of 3",
			wantAgain: "replayed 1, already replayed 2, skipped 0 of 3 selected",
		},
		{
			name: "after the ack, before the journal",
			stop: func(_ context.CancelFunc, n int) error {
				if n == 2 {
					return errors.New("killed")
				}
				return nil
			},
			wantFirst: "killed",
			wantAgain: "already replayed 0:1 order=102 type=" + events.TypeOrderCreated + ": an interrupted replay reached",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := testenv.TopicPrefix(t)
			seedPoison(t, prefix)
			target := prefix + events.TopicOrders
			journal := filepath.Join(t.TempDir(), "replay.journal")
			tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := 0
			tc.afterAck = func(string) error { n++; return tt.stop(cancel, n) }
			err := tc.run(ctx, []string{"replay", "--reason", "gateway", "--yes", "--journal", journal})
			if err == nil || !strings.Contains(err.Error(), tt.wantFirst) {
				t.Fatalf("first run = %v, want %q", err, tt.wantFirst)
			}
			if got := poisonCopies(t, target, 2); len(got) != 2 {
				t.Fatalf("first run replayed %v, want 2 messages", poisonKeys(got))
			}
			// A kill while writing the journal leaves a torn line; it must not stop the rerun.
			f, err := os.OpenFile(journal, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(`{"event":"replayed","source":"` + prefix + `orders.poison/2:1","poisonedAt":"20`)
			f.Close()

			tc.afterAck = nil
			if err := tc.exec("replay", "--reason", "gateway", "--yes", "--journal", journal); err != nil {
				t.Fatalf("second run: %v\n%s", err, tc.out)
			}
			if !strings.Contains(tc.out.String(), tt.wantAgain) {
				t.Errorf("second run lacks %q:\n%s", tt.wantAgain, tc.out)
			}
			got := poisonCopies(t, target, 3)
			for _, src := range poisonSources(prefix, "0:0", "0:1", "2:1") {
				if len(got[src]) != 1 {
					t.Errorf("%s replayed %d times, want once", src, len(got[src]))
				}
			}
			// The journal records each message as replayed once (twice would mean a double).
			data, err := os.ReadFile(journal)
			if err != nil {
				t.Fatal(err)
			}
			replayed := map[string]int{}
			for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
				var e replayJournalEntry
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("journal line %q: %v", line, err)
				}
				if e.Event == "replayed" {
					replayed[e.Source]++
				}
			}
			if diff := cmp.Diff(map[string]int{poisonSources(prefix, "0:0")[0]: 1, poisonSources(prefix, "0:1")[0]: 1,
				poisonSources(prefix, "2:1")[0]: 1}, replayed); diff != "" {
				t.Errorf("journal's replayed entries (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPoisonJournalIsLocked(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	seedPoison(t, prefix)
	journal := filepath.Join(t.TempDir(), "replay.journal")
	held, err := openReplayJournal(journal, true)
	if err != nil {
		t.Fatal(err)
	}
	defer held.close()
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	err = tc.exec("replay", "--all", "--yes", "--journal", journal)
	if err == nil || !strings.Contains(err.Error(), "in use by another replay") {
		t.Errorf("replay with the journal held = %v, want it refused", err)
	}
	if n := poisonTopicSize(t, prefix+events.TopicOrders); n != 0 {
		t.Errorf("%d records published", n)
	}
}

func TestPoisonJournalRejectsAForeignFile(t *testing.T) {
	journal := filepath.Join(t.TempDir(), "replay.journal")
	os.WriteFile(journal, []byte("{\"event\":\"replayed\",\"source\":\"x/0:1\"}\nhello\n{}\n"), 0o644)
	if _, err := openReplayJournal(journal, true); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("openJournal of an edited journal = %v, want an error naming line 2", err)
	}
}

func TestPoisonUsageErrors(t *testing.T) {
	// Nothing listens here: a usage error must come before any connection attempt.
	env := map[string]string{"KAFKA_BROKERS": "127.0.0.1:1"}
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"list", "--bogus"},
		{"list", "--limit", "-1"},
		{"list", "--limit", "x"},
		{"list", "--since", "banana"},
		{"list", "--since", "-5m"},
		{"list", "--order", ""},
		{"list", "3"},
		{"list", "a:b"},
		{"list", "1:-2"},
		{"list", "--all"},
		{"stats", "--all"},
		{"show"},
		{"show", "1:2", "3:4"},
		{"show", "x"},
		{"show", "--reason", "x", "1:2"},
		{"replay"},
		{"replay", "--limit", "3"},
		{"replay", "--all", "--reason", "x"},
		{"replay", "--reason", "x", "--max-replays", "0"},
		{"replay", "--reason", "x", "--journal", ""},
		{"replay", "--all", "--json"},
		{"replay", "--all", "--dry-run=maybe"},
	} {
		tc := newPoisonTestCmd(t, env)
		err := tc.exec(args...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("poison %q = %v, want a usage error", args, err)
		}
	}
}

func TestPoisonHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"list", "-h"}, {"replay", "--help"}} {
		tc := newPoisonTestCmd(t, nil)
		if err := tc.exec(args...); err != nil || !strings.Contains(tc.out.String(), "usage: orderctl poison") {
			t.Errorf("poison %q = %v, %q; want the usage", args, err, tc.out)
		}
	}
}

func TestPoisonBadEnvironment(t *testing.T) {
	tc := newPoisonTestCmd(t, map[string]string{"POISON_MAX_REPLAYS": "0"})
	err := tc.exec("list")
	var ue usageError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "POISON_MAX_REPLAYS") {
		t.Errorf("list with POISON_MAX_REPLAYS=0 = %v, want a config error naming it", err)
	}
}

func TestPoisonUnreachableBroker(t *testing.T) {
	testenv.Integration(t)
	addr := testenv.FreeAddr(t)
	journal := filepath.Join(t.TempDir(), "replay.journal")
	for _, args := range [][]string{{"list"}, {"show", "0:0"}, {"stats"}, {"replay", "--all", "--yes", "--journal", journal}} {
		tc := newPoisonTestCmd(t, map[string]string{"KAFKA_BROKERS": addr})
		start := time.Now()
		err := tc.exec(args...)
		var ue usageError
		if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "kafka at "+addr+" is not reachable") {
			t.Errorf("poison %q with no broker = %v, want a failure naming the broker", args, err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("poison %q took %s to give up", args, d)
		}
	}
}

func TestPoisonMissingTopic(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	for _, args := range [][]string{{"list"}, {"show", "0:0"}, {"replay", "--all", "--yes"}} {
		err := tc.exec(args...)
		if err == nil || !strings.Contains(err.Error(), "poison topic "+prefix+"orders.poison does not exist") {
			t.Errorf("poison %q without the topic = %v", args, err)
		}
	}
}

func TestParsePosition(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want poisonPos
		ok   bool
	}{
		{"3:17", poisonPos{3, 17}, true},
		{"0:0", poisonPos{0, 0}, true},
		{"3", poisonPos{}, false},
		{":1", poisonPos{}, false},
		{"1:", poisonPos{}, false},
		{"-1:2", poisonPos{}, false},
		{"1:2:3", poisonPos{}, false},
		{"99999999999:1", poisonPos{}, false},
	} {
		got, err := parsePoisonPos(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parsePosition(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestProgress(t *testing.T) {
	var b bytes.Buffer
	p := newReplayProgress(&b, 4, true)
	p.set(1)
	p.clear()
	if want := "\r[" + strings.Repeat("=", 10) + strings.Repeat(" ", 30) + "] 1/4\r\033[K"; b.String() != want {
		t.Errorf("progress drew %q, want %q", b.String(), want)
	}
	b.Reset()
	off := newReplayProgress(&b, 4, false)
	off.set(2)
	off.clear()
	if b.Len() != 0 {
		t.Errorf("a progress bar that is off drew %q", b.String())
	}
}

// stallingPartition holds back the record at offset at of one partition for hold, as a
// fetch that stalls mid-partition would (a leader change, a slow broker, a GC pause).
type stallingPartition struct {
	sarama.PartitionConsumer
	out       chan *sarama.ConsumerMessage
	done      chan struct{}
	closeOnce sync.Once
}

func stallAt(partition int32, at int64, hold time.Duration) func(sarama.PartitionConsumer) sarama.PartitionConsumer {
	return func(pc sarama.PartitionConsumer) sarama.PartitionConsumer {
		s := &stallingPartition{PartitionConsumer: pc, out: make(chan *sarama.ConsumerMessage), done: make(chan struct{})}
		go func() {
			defer close(s.out)
			for m := range pc.Messages() {
				if m.Partition == partition && m.Offset == at {
					select {
					case <-time.After(hold):
					case <-s.done:
						return
					}
				}
				select {
				case s.out <- m:
				case <-s.done:
					return
				}
			}
		}()
		return s
	}
}

func (s *stallingPartition) Messages() <-chan *sarama.ConsumerMessage { return s.out }

func (s *stallingPartition) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return s.PartitionConsumer.Close()
}

// TestPoisonReadOutlastsAStalledFetch: a fetch that delivers nothing for longer than the
// reader's idle check, in the middle of a partition, must not end the read there.
func TestPoisonReadOutlastsAStalledFetch(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	seedPoison(t, prefix)
	target := prefix + events.TopicOrders
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	tc.wrapPartition = stallAt(0, 1, 3*poisonIdleCheck)

	if got, want := poisonPositions(poisonListJSON(t, tc)), []string{"0:0", "0:1", "1:0", "1:1", "2:0", "2:1"}; !slices.Equal(got, want) {
		t.Errorf("list with a fetch stalled at 0:1 = %v, want %v", got, want)
	}
	err := tc.exec("replay", "--reason", "gateway", "--yes", "--journal", filepath.Join(t.TempDir(), "replay.journal"))
	if err != nil || !strings.Contains(tc.out.String(), "replayed 3, already replayed 0, skipped 0 of 3 selected") {
		t.Errorf("replay --reason gateway with a fetch stalled at 0:1 = %v:\n%s", err, tc.out)
	}
	if n := poisonTopicSize(t, target); n != 3 {
		t.Errorf("%s holds %d records, want 3 (0:0, 0:1, 2:1)", target, n)
	}
}

// TestPoisonReadStalledForGoodFails: a read that cannot reach the end fails, naming the
// partition, the offset it reached and the end; it never reports what it read as all.
func TestPoisonReadStalledForGoodFails(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	seedPoison(t, prefix)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	tc.wrapPartition = stallAt(0, 1, time.Hour)
	tc.stallTimeout = 3 * poisonIdleCheck
	err := tc.exec("replay", "--all", "--yes", "--journal", filepath.Join(t.TempDir(), "replay.journal"))
	want := "read " + prefix + "orders.poison/0: no record for 3s at offset 1, before the end 2"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("replay --all with partition 0 stalled for good = %v, want an error containing %q", err, want)
	}
	if n := poisonTopicSize(t, prefix+events.TopicOrders); n != 0 {
		t.Errorf("%d records replayed, want none", n)
	}
}

// TestPoisonReadEndsAtTransactionMarkers: offsets that hold transaction markers (a
// transactional producer's commits) deliver nothing; a read whose last offsets are
// markers ends there at once, with every record.
func TestPoisonReadEndsAtTransactionMarkers(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	topic := prefix + events.TopicOrdersPoison
	poisonCreateTopic(t, topic, 1)
	conf := kafkaconf.Producer("orderctl-test")
	conf.Producer.Transaction.ID = "orderctl-test-" + prefix
	prod, err := sarama.NewSyncProducer(testenv.Brokers(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	for _, txn := range [][]string{{"a", "b", "c"}, {"d"}} { // offsets 0-2, marker 3, 4, marker 5
		if err := prod.BeginTxn(); err != nil {
			t.Fatal(err)
		}
		for _, v := range txn {
			if _, _, err := prod.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(v)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := prod.CommitTxn(); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() (bool, string) {
		n := poisonTopicSize(t, topic)
		return n == 6, fmt.Sprintf("%s ends at offset %d, want 6 (4 records, 2 markers)", topic, n)
	})

	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	tc.stallTimeout = 5 * poisonIdleCheck // were the markers taken for records, the read would fail
	if got, want := poisonPositions(poisonListJSON(t, tc)), []string{"0:0", "0:1", "0:2", "0:4"}; !slices.Equal(got, want) {
		t.Errorf("list = %v, want %v", got, want)
	}
	// The end is a marker, and so is the offset after the one asked for.
	if err := tc.exec("show", "0:2"); err != nil || !hasLine(tc.out.String(), "message 0:2 of "+topic) {
		t.Errorf("show 0:2 = %v:\n%s", err, tc.out)
	}
	if err := tc.exec("show", "0:3"); err == nil || !strings.Contains(err.Error(), "the offset holds no record") {
		t.Errorf("show 0:3 (a marker) = %v, want no record", err)
	}
}

// TestPoisonReplayKeepsTheRecordKey: the replayed record has the poison record's key,
// which is the original record's (a foreign key, or none), not one derived from ce_subject.
func TestPoisonReplayKeepsTheRecordKey(t *testing.T) {
	for _, tt := range []struct {
		name string
		key  []byte
	}{
		{"foreign key", []byte("k-foreign")},
		{"no key", nil},
		{"empty key", []byte{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := poisonRecord{key: tt.key, value: []byte("v"), headers: []poisonHeader{{events.MetaSubject, "7"}}}
			m := poisonReplayMessage(replayStep{rec: rec, source: "orders.poison/0:1", target: "orders"}, time.Now())
			var got []byte
			if m.Key != nil {
				got, _ = m.Key.Encode()
			}
			if (got == nil) != (tt.key == nil) || string(got) != string(tt.key) {
				t.Errorf("replayed key = %q (nil %v), want %q (nil %v)", got, got == nil, tt.key, tt.key == nil)
			}
		})
	}
}

// TestPoisonJournalCreationIsDurable: creating the journal syncs the directory that holds
// its entry, and the parent of every directory created for it, once the file exists;
// a failed sync fails the replay before anything is published. (What a crash keeps is
// the file system's business; this checks that orderctl asks for it.)
func TestPoisonJournalCreationIsDurable(t *testing.T) {
	real := syncDir
	t.Cleanup(func() { syncDir = real })
	root := t.TempDir()
	journal := filepath.Join(root, "state", "orderctl", "replay.journal")
	var synced []string
	syncDir = func(dir string) error {
		if _, err := os.Stat(journal); err != nil {
			t.Errorf("directory %s synced before the journal exists: %v", dir, err)
		}
		synced = append(synced, dir)
		return real(dir)
	}
	j, err := openReplayJournal(journal, true)
	if err != nil {
		t.Fatal(err)
	}
	j.close()
	want := []string{filepath.Join(root, "state", "orderctl"), filepath.Join(root, "state"), root}
	sort.Strings(synced)
	sort.Strings(want)
	if diff := cmp.Diff(want, slices.Compact(synced)); diff != "" {
		t.Errorf("directories synced (-want +got):\n%s", diff)
	}

	syncDir = func(dir string) error { return errors.New("input/output error") }
	prefix := testenv.TopicPrefix(t)
	seedPoison(t, prefix)
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	err = tc.exec("replay", "--reason", "gateway", "--yes", "--journal", filepath.Join(t.TempDir(), "new", "replay.journal"))
	if err == nil || !strings.Contains(err.Error(), "sync directory") || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("replay whose journal directory cannot be synced = %v, want the sync error", err)
	}
	if n := poisonTopicSize(t, prefix+events.TopicOrders); n != 0 {
		t.Errorf("%d records replayed, want none", n)
	}
}

// TestPoisonReplaySkipsTruncatedCopies: a copy the worker truncated (the whole message was
// too large for the poison topic) is not the message; replaying it would publish a
// fragment. Replay skips it and says where the original is.
func TestPoisonReplaySkipsTruncatedCopies(t *testing.T) {
	prefix := testenv.TopicPrefix(t)
	seedPoison(t, prefix)
	prod, err := sarama.NewSyncProducer(testenv.Brokers(), kafkaconf.Producer("orderctl-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	h := poisonedEvent(prefix, "106", "malformed event", "1", worker.MetaTruncated, "payload",
		worker.MetaOriginalBytes, "2097599", worker.MetaOriginalRecord, prefix+"orders/4:1234")
	m := &sarama.ProducerMessage{Topic: prefix + events.TopicOrdersPoison, Key: sarama.StringEncoder("106"), Value: sarama.StringEncoder("xxxx")}
	for k, v := range h {
		m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	p, off, err := prod.SendMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	tc := newPoisonTestCmd(t, map[string]string{"KAFKA_TOPIC_PREFIX": prefix})
	err = tc.exec("replay", "--order", "106", "--yes", "--journal", filepath.Join(t.TempDir(), "replay.journal"))
	want := fmt.Sprintf("skipped %d:%d order=106 type=%s: a truncated copy (it lost its payload: the whole message, 2097599 bytes, was too large for the poison topic); the original is at %sorders/4:1234",
		p, off, events.TypeOrderCreated, prefix)
	if err == nil || !strings.Contains(tc.out.String(), want) {
		t.Errorf("replay of a truncated copy = %v, want it skipped with %q:\n%s", err, want, tc.out)
	}
	if n := poisonTopicSize(t, prefix+events.TopicOrders); n != 0 {
		t.Errorf("%d records replayed, want none", n)
	}
}
