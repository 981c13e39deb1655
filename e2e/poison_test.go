package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/go-cmp/cmp"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

var (
	orderctlOnce sync.Once
	orderctlErr  error
)

// orderctlPath builds cmd/orderctl into binDir, once for the package.
func orderctlPath(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "orderctl")
	orderctlOnce.Do(func() {
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", append(args, "../cmd/orderctl")...)
		cmd.Dir = filepath.Dir(file)
		if out, err := cmd.CombinedOutput(); err != nil {
			orderctlErr = fmt.Errorf("build orderctl: %v\n%s", err, out)
		}
	})
	if orderctlErr != nil {
		t.Fatal(orderctlErr)
	}
	return bin
}

// ctlResult is what one orderctl run printed and its exit code.
type ctlResult struct {
	stdout, stderr string
	code           int
}

func (r ctlResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// poisonCtl runs `orderctl poison args...` against the pipeline's Kafka and topics, with
// stdin not a terminal; env is added last.
func poisonCtl(t *testing.T, p *pipeline, env []string, args ...string) ctlResult {
	t.Helper()
	cmd := exec.Command(orderctlPath(t), append([]string{"poison"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"KAFKA_BROKERS=" + p.brokers, "KAFKA_TOPIC_PREFIX=" + p.topicPrefix}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := ctlResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("orderctl poison %q: %v", args, err)
	}
	return r
}

// poisonListed is an element of `orderctl poison list --json`.
type poisonListed struct {
	Position    string `json:"position"`
	Topic       string `json:"topic"`
	Key         string `json:"key"`
	OrderID     string `json:"orderId"`
	Type        string `json:"type"`
	Reason      string `json:"reason"`
	Attempts    int    `json:"attempts"`
	ReplayCount int    `json:"replayCount"`
}

func poisonList(t *testing.T, p *pipeline, args ...string) []poisonListed {
	t.Helper()
	r := poisonCtl(t, p, nil, append([]string{"list", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("poison list --json %q: %s", args, r)
	}
	var out []poisonListed
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("poison list --json: %v\n%s", err, r)
	}
	return out
}

// topicRecords counts the records a topic holds, from its offsets: exact and immediate.
func topicRecords(t *testing.T, topic string) int64 {
	t.Helper()
	client, err := sarama.NewClient(testenv.Brokers(), kafkaconf.Consumer("e2e-"+testenv.ID()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	var n int64
	for _, part := range parts {
		oldest, err1 := client.GetOffset(topic, part, sarama.OffsetOldest)
		newest, err2 := client.GetOffset(topic, part, sarama.OffsetNewest)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		n += newest - oldest
	}
	return n
}

// gateway stands between the workers and paymentsim, as a provider's front end would.
// While its card processor is broken it answers 500 to every charge of an amount ending
// in 44 (minor units): the cause of the poisoning that the test later removes. (A 503
// would not do: the worker holds such orders, it does not poison them.) Everything
// else goes through to paymentsim untouched.
type gateway struct {
	URL     string
	failing atomic.Bool
	proxy   atomic.Pointer[httputil.ReverseProxy]
}

func startGateway(t *testing.T) *gateway {
	g := &gateway{}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	g.URL = srv.URL
	return g
}

func (g *gateway) forwardTo(rawURL string) {
	u, _ := url.Parse(rawURL)
	g.proxy.Store(httputil.NewSingleHostReverseProxy(u))
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.failing.Load() && r.Method == http.MethodPost && r.URL.Path == "/payments" {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		var charge struct {
			Amount int64 `json:"amount"`
		}
		if json.Unmarshal(body, &charge) == nil && charge.Amount%100 == 44 {
			http.Error(w, "card processor error", http.StatusInternalServerError)
			return
		}
	}
	proxy := g.proxy.Load()
	if proxy == nil {
		http.Error(w, "no upstream yet", http.StatusBadGateway)
		return
	}
	proxy.ServeHTTP(w, r)
}

// linesStarting counts the lines of s that start with prefix.
func linesStarting(s, prefix string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// approvedCharges counts an order's approved ledger entries.
func approvedCharges(t *testing.T, p *pipeline, id int64) int {
	n := 0
	for _, ch := range p.ledger(t, id) {
		if ch.Status == "approved" {
			n++
		}
	}
	return n
}

// replayedSources returns, for every record on topic carrying replayed_from, that
// header's value.
func replayedSources(t *testing.T, topic string, records int64) []string {
	t.Helper()
	msgs := testenv.Consume(t, topic, 20*time.Second, func(ms []*sarama.ConsumerMessage) bool { return int64(len(ms)) >= records })
	var out []string
	for _, m := range msgs {
		if s := testenv.Header(m, "replayed_from"); s != "" {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// journalReplays counts the "replayed" entries of a replay journal by source.
func journalReplays(t *testing.T, path string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var e struct{ Event, Source string }
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("journal line %q: %v", line, err)
		}
		if e.Event == "replayed" {
			out[e.Source]++
		}
	}
	return out
}

// TestPoisonReplayEndToEnd poisons messages through real failures — a payment gateway
// failing some orders, a provider failing one order for good, garbage on the orders
// topic — lists and inspects them with orderctl, checks that mistakes publish nothing,
// removes the cause, replays exactly the gateway's victims (once interrupted and
// resumed) and finds each of them PAID with one charge; a second replay changes nothing,
// and the loop guard stops the order whose cause remains.
func TestPoisonReplayEndToEnd(t *testing.T) {
	gw := startGateway(t)
	gw.failing.Store(true)
	p := startPipeline(t, options{workerEnv: append([]string{"PAYMENT_URL=" + gw.URL}, fastRetries...)})
	gw.forwardTo(p.paymentURL)
	ordersTopic, poisonTopic := p.topicPrefix+events.TopicOrders, p.topicPrefix+events.TopicOrdersPoison
	dir := t.TempDir()

	good := p.create(t, "8", "USD")
	var victims []int64 // their charges meet the gateway's broken processor
	for range 3 {
		victims = append(victims, p.create(t, "8.44", "USD"))
	}
	hopeless := p.create(t, "8.61", "USD") // paymentsim answers 500 every time
	created := header(events.MetaType, events.TypeOrderCreated)
	produce(t, ordersTopic,
		&sarama.ProducerMessage{Key: sarama.StringEncoder("g-1"), Value: sarama.StringEncoder("{not json"),
			Headers: []sarama.RecordHeader{created, header(events.MetaSubject, "g-1")}},
		&sarama.ProducerMessage{Key: sarama.StringEncoder("g-2"), Value: sarama.StringEncoder(`{"orderId":1}`),
			Headers: []sarama.RecordHeader{header(events.MetaType, "orders.order.exploded.v1"), header(events.MetaSubject, "g-2")}},
		&sarama.ProducerMessage{Key: sarama.StringEncoder("999999"), Value: sarama.StringEncoder(`{"orderId":999999,"amountMinor":1,"currency":"USD"}`),
			Headers: []sarama.RecordHeader{created, header(events.MetaSubject, "999999"), header(events.MetaID, "foreign-999999")}},
	)
	p.waitStatus(t, good, "PAID", 60*time.Second)
	id := func(n int64) string { return strconv.FormatInt(n, 10) }
	wantReason := map[string]string{
		id(victims[0]): "payment provider answered 500: card processor error",
		id(victims[1]): "payment provider answered 500: card processor error",
		id(victims[2]): "payment provider answered 500: card processor error",
		id(hopeless):   "payment provider answered 500",
		"g-1":          "malformed event",
		"g-2":          "unknown event type",
		"999999":       "order not found",
	}
	var subjects []string
	for s := range wantReason {
		subjects = append(subjects, s)
	}
	p.poisoned(t, subjects...)

	// list shows each with the right reason, topic and attempts.
	listed := poisonList(t, p)
	if len(listed) != len(wantReason) {
		t.Fatalf("list shows %d messages, want %d: %+v", len(listed), len(wantReason), listed)
	}
	pos := map[string]string{} // order (subject) -> position
	for _, m := range listed {
		pos[m.OrderID] = m.Position
		wantAttempts := 4 // 1 + 3 retries
		if m.OrderID == "g-1" || m.OrderID == "g-2" || m.OrderID == "999999" {
			wantAttempts = 1 // permanent: no retries
		}
		if !strings.Contains(m.Reason, wantReason[m.OrderID]) || m.Topic != ordersTopic || m.Attempts != wantAttempts || m.ReplayCount != 0 {
			t.Errorf("listed %+v; want reason %q, topic %s, %d attempts, no replays", m, wantReason[m.OrderID], ordersTopic, wantAttempts)
		}
	}
	if r := poisonCtl(t, p, nil, "list"); r.code != 0 || strings.Count(r.stdout, "\n") != 1+len(wantReason) {
		t.Errorf("list: want a header and %d rows: %s", len(wantReason), r)
	}
	victimPositions := []string{pos[id(victims[0])], pos[id(victims[1])], pos[id(victims[2])]}
	if r := poisonCtl(t, p, nil, "show", pos[id(victims[0])]); r.code != 0 ||
		!strings.Contains(r.stdout, "card processor error") || !strings.Contains(r.stdout, `"orderId": `+id(victims[0])+",") {
		t.Errorf("show %s: want the reason and the indented payload: %s", pos[id(victims[0])], r)
	}
	var stats struct {
		Total   int
		ByTopic []struct {
			Value string
			Count int
		}
	}
	if r := poisonCtl(t, p, nil, "stats", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &stats) != nil ||
		stats.Total != 7 || len(stats.ByTopic) != 1 || stats.ByTopic[0].Value != ordersTopic || stats.ByTopic[0].Count != 7 {
		t.Errorf("stats --json = %+v: %s", stats, r)
	}

	// Mistakes: a clear message, a non-zero exit, nothing published.
	ordersBefore, poisonBefore := topicRecords(t, ordersTopic), topicRecords(t, poisonTopic)
	journal := filepath.Join(dir, "replay.journal")
	unreachable := []string{"KAFKA_BROKERS=" + testenv.FreeAddr(t)}
	for _, tc := range []struct {
		env    []string
		args   []string
		code   int
		stderr string
	}{
		{nil, []string{"replay"}, 2, "give a selection"},
		{nil, []string{"replay", "--reason", "processor", "--max-replays", "0"}, 2, "--max-replays 0"},
		{nil, []string{"list", "--limit", "-1"}, 2, "-limit"},
		{nil, []string{"list", "--since", "yesterday"}, 2, "-since"},
		{nil, []string{"show", "1"}, 2, "PARTITION:OFFSET"},
		{nil, []string{"frobnicate"}, 2, "unknown command"},
		{nil, []string{"show", "0:999999"}, 1, "no message at 0:999999"},
		{nil, []string{"replay", "--reason", "card processor error", "--journal", journal}, 1, "pass --yes"},
		{unreachable, []string{"replay", "--reason", "card processor error", "--yes", "--journal", journal}, 1, "is not reachable"},
	} {
		if r := poisonCtl(t, p, tc.env, tc.args...); r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
			t.Errorf("poison %q: want exit %d and %q on stderr; got %s", tc.args, tc.code, tc.stderr, r)
		}
	}
	// A dry run lists what it would do and does nothing.
	r := poisonCtl(t, p, nil, "replay", "--reason", "card processor error", "--dry-run", "--journal", journal)
	if r.code != 0 || linesStarting(r.stdout, "would replay ") != 3 {
		t.Errorf("dry run: want 3 'would replay' lines: %s", r)
	}
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the mistakes or the dry run wrote the journal (%v)", err)
	}
	time.Sleep(time.Second) // room for anything wrongly published to reach a worker
	if o, q := topicRecords(t, ordersTopic), topicRecords(t, poisonTopic); o != ordersBefore || q != poisonBefore {
		t.Fatalf("orders/poison topics went from %d/%d to %d/%d records without a replay", ordersBefore, poisonBefore, o, q)
	}
	for _, v := range victims {
		if s := p.status(t, v); s != "PENDING" {
			t.Errorf("order %d is %s before the replay, want PENDING", v, s)
		}
	}

	// The cause is removed. A replay stopped after one message (--limit) and run again
	// replays each victim exactly once, and nothing else.
	gw.failing.Store(false)
	if r := poisonCtl(t, p, nil, "replay", "--reason", "card processor error", "--yes", "--limit", "1", "--journal", journal); r.code != 0 ||
		!strings.Contains(r.stdout, "replayed 1, already replayed 0, skipped 0 of 1 selected") {
		t.Fatalf("first part of the replay: %s", r)
	}
	if r := poisonCtl(t, p, nil, "replay", "--reason", "card processor error", "--yes", "--journal", journal); r.code != 0 ||
		!strings.Contains(r.stdout, "replayed 2, already replayed 1, skipped 0 of 3 selected") {
		t.Fatalf("resumed replay: %s", r)
	}
	for _, v := range victims {
		p.waitStatus(t, v, "PAID", 60*time.Second)
		if n := approvedCharges(t, p, v); n != 1 {
			t.Errorf("order %d has %d approved charges, want 1", v, n)
		}
	}
	wantSources := []string{}
	for _, vp := range victimPositions {
		wantSources = append(wantSources, poisonTopic+"/"+vp)
	}
	sort.Strings(wantSources)
	if got := topicRecords(t, ordersTopic); got != ordersBefore+3 {
		t.Errorf("orders topic grew by %d records, want 3 (the victims only)", got-ordersBefore)
	}
	if diff := cmp.Diff(wantSources, replayedSources(t, ordersTopic, ordersBefore+3)); diff != "" {
		t.Errorf("replayed records on %s by source (-want +got):\n%s", ordersTopic, diff)
	}
	wantJournal := map[string]int{}
	for _, s := range wantSources {
		wantJournal[s] = 1
	}
	if diff := cmp.Diff(wantJournal, journalReplays(t, journal)); diff != "" {
		t.Errorf("journal's replayed entries (-want +got):\n%s", diff)
	}
	if s, n := p.status(t, hopeless), len(p.ledger(t, hopeless)); s != "PENDING" || n != 0 {
		t.Errorf("order %d (not selected) is %s with %d charges, want PENDING with none", hopeless, s, n)
	}

	// The same selection again with a new journal republishes; the worker's inbox and
	// forward-only status make it a no-op.
	paymentsTopic := p.topicPrefix + events.TopicPayments
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		n := topicRecords(t, paymentsTopic)
		return n == 4, fmt.Sprintf("payments topic holds %d outcome events, want 4", n)
	})
	ids := append([]int64{good}, victims...)
	before := p.snapshot(t, ids)
	handled := metricSum(t, p.workers[0], "worker_messages_total")
	if r := poisonCtl(t, p, nil, "replay", "--reason", "card processor error", "--yes", "--journal", filepath.Join(dir, "again.journal")); r.code != 0 ||
		!strings.Contains(r.stdout, "replayed 3, already replayed 0") {
		t.Fatalf("second replay: %s", r)
	}
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		n := metricSum(t, p.workers[0], "worker_messages_total")
		return n >= handled+3, fmt.Sprintf("worker handled %v of the 3 replayed again", n-handled)
	})
	time.Sleep(time.Second) // room for a wrong outcome event to reach Kafka
	if after := p.snapshot(t, ids); after != before {
		t.Errorf("a second replay changed statuses or charges:\nbefore %s\nafter  %s", before, after)
	}
	if n := topicRecords(t, paymentsTopic); n != 4 {
		t.Errorf("payments topic holds %d outcome events after a second replay, want still 4", n)
	}

	// The loop guard: the hopeless order fails again and comes back with replay_count 1;
	// with --max-replays 1 it is not replayed a second time.
	guard := filepath.Join(dir, "guard.journal")
	if r := poisonCtl(t, p, nil, "replay", "--order", id(hopeless), "--max-replays", "1", "--yes", "--journal", guard); r.code != 0 {
		t.Fatalf("replay of order %d: %s", hopeless, r)
	}
	testenv.Eventually(t, 60*time.Second, func() (bool, string) {
		l := poisonList(t, p, "--order", id(hopeless))
		return len(l) == 2, fmt.Sprintf("order %d poisoned %d times, want 2", hopeless, len(l))
	})
	again := poisonList(t, p, "--order", id(hopeless))
	if again[1].ReplayCount != 1 || !strings.Contains(again[1].Reason, "500") || again[1].Attempts != 4 {
		t.Errorf("poisoned again as %+v, want replay count 1, the 500, 4 fresh attempts", again[1])
	}
	ordersBefore = topicRecords(t, ordersTopic)
	r = poisonCtl(t, p, nil, "replay", "--order", id(hopeless), "--max-replays", "1", "--yes", "--journal", guard)
	if r.code != 1 || !strings.Contains(r.stdout, "already replayed "+again[0].Position) ||
		!strings.Contains(r.stdout, "skipped "+again[1].Position) || !strings.Contains(r.stdout, "(--max-replays 1)") {
		t.Errorf("replay past the maximum: want exit 1, the first already replayed and the second skipped: %s", r)
	}
	if n := topicRecords(t, ordersTopic); n != ordersBefore {
		t.Errorf("the loop guard let %d records through", n-ordersBefore)
	}
}

// snapshot renders every order's status and ledger.
func (p *pipeline) snapshot(t *testing.T, ids []int64) string {
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, "%d:%s:%v ", id, p.status(t, id), p.ledger(t, id))
	}
	return b.String()
}
