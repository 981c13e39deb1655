package e2e

// Observability: one trace per order across every hop, metrics that move with traffic,
// log lines that lead to orders and traces, /readyz per daemon, and the Prometheus,
// Grafana and compose files that watch it all.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.yaml.in/yaml/v4"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/admin"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/paymentsim"
	"github.com/orderpipe/orderpipe/relay"
	"github.com/orderpipe/orderpipe/worker"
)

// callerTrace is the trace a client starts: its traceparent goes with POST /orders.
const (
	callerTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerTraceparent = "00-" + callerTraceID + "-00f067aa0ba902b7-01"
)

// repoFile is the path of a file of the repository.
func repoFile(parts ...string) string { return filepath.Join(append([]string{".."}, parts...)...) }

// TestTraceFollowsAnOrder wires the api, relay, worker and payment simulator in this
// process around one in-memory span exporter, on the real Postgres, Kafka and Redis, and
// checks that one order makes one trace with every hop in its place:
//
//	POST /orders (api, server)
//	└─ create order (api)
//	   └─ send <prefix>orders (relay, producer)
//	      └─ process <prefix>orders (worker, consumer)
//	         ├─ POST /payments (worker, client)
//	         │  └─ POST /payments (paymentsim, server)
//	         └─ send <prefix>payments (relay, producer)
func TestTraceFollowsAnOrder(t *testing.T) {
	tp, exp := testenv.Tracing(t)
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cache, err := orders.OpenCache(testenv.RedisURL(), orders.CacheConfig{KeyPrefix: testenv.CachePrefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })

	sim, err := paymentsim.New(paymentsim.Config{TracerProvider: tp}, logger)
	if err != nil {
		t.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	t.Cleanup(simSrv.Close)
	store := orders.NewStore(db, outbox.New(prefix))
	apiSrv := httptest.NewServer(api.New(store, db, logger, api.Config{Cache: cache, TracerProvider: tp}))
	t.Cleanup(apiSrv.Close)
	r, err := relay.New(db, relay.Config{Brokers: testenv.Brokers(), PollInterval: 10 * time.Millisecond, TracerProvider: tp}, logger)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(store, worker.Config{Brokers: testenv.Brokers(), TopicPrefix: prefix,
		ConsumerGroup: "worker-" + testenv.ID(), PaymentURL: simSrv.URL, Cache: cache, TracerProvider: tp}, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- r.Run(ctx) }()
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
		}
	})

	p := &pipeline{t: t, apiURL: apiSrv.URL}
	id := p.create(t, "200", "USD")
	p.waitStatus(t, id, "PAID", 60*time.Second)

	type key struct {
		name string
		kind trace.SpanKind
	}
	want := []key{
		{"POST /orders", trace.SpanKindServer},
		{"create order", trace.SpanKindInternal},
		{"send " + prefix + events.TopicOrders, trace.SpanKindProducer},
		{"process " + prefix + events.TopicOrders, trace.SpanKindConsumer},
		{"POST /payments", trace.SpanKindClient},
		{"POST /payments", trace.SpanKindServer},
		{"send " + prefix + events.TopicPayments, trace.SpanKindProducer},
	}
	spans := map[key]tracetest.SpanStub{}
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		for _, s := range exp.GetSpans() {
			spans[key{s.Name, s.SpanKind}] = s
		}
		var missing []key
		for _, k := range want {
			if _, ok := spans[k]; !ok {
				missing = append(missing, k)
			}
		}
		return len(missing) == 0, fmt.Sprintf("spans missing: %v", missing)
	})

	root := spans[want[0]]
	if root.Parent.IsValid() {
		t.Errorf("%s has parent %v, want a root span", root.Name, root.Parent)
	}
	parentOf := map[key]key{want[1]: want[0], want[2]: want[1], want[3]: want[2], want[4]: want[3], want[5]: want[4], want[6]: want[3]}
	for _, k := range want[1:] {
		s, parent := spans[k], spans[parentOf[k]]
		if s.SpanContext.TraceID() != root.SpanContext.TraceID() {
			t.Errorf("%s (%s) is in trace %v, want the order's %v", k.name, k.kind, s.SpanContext.TraceID(), root.SpanContext.TraceID())
		}
		if s.Parent.SpanID() != parent.SpanContext.SpanID() {
			t.Errorf("%s (%s) has parent %v, want %s (%s) %v", k.name, k.kind, s.Parent.SpanID(),
				parentOf[k].name, parentOf[k].kind, parent.SpanContext.SpanID())
		}
	}
}

// watched is the four daemons as processes, each reachable for /metrics and /readyz.
type watched struct {
	*pipeline
	api, relay, worker, paymentsim *daemon
}

// startWatched starts the pipeline with env added to every daemon and keeps every
// daemon's handle.
func startWatched(t *testing.T, env ...string) *watched {
	t.Helper()
	p := startPipeline(t, options{env: append(env, "RELAY_PRUNE_INTERVAL=200ms"), workerEnv: fastRetries})
	return &watched{pipeline: p, api: p.api, relay: p.relay, worker: p.workers[0], paymentsim: p.paymentsim}
}

// post creates an order with the caller's traceparent and a correlation id.
func (p *pipeline) post(t *testing.T, amount, correlationID string) int64 {
	t.Helper()
	return p.create(t, amount, "USD", "traceparent", callerTraceparent, "X-Correlation-ID", correlationID)
}

// readiness GETs /readyz and returns the status and the Readiness header.
func readiness(t *testing.T, d *daemon) (int, string) {
	t.Helper()
	resp, err := http.Get(d.adminURL + "/readyz")
	if err != nil {
		t.Fatalf("%s /readyz: %v", d.name, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get(admin.ReadinessHeader)
}

// logLines returns the JSON log lines of a daemon whose msg is msg.
func logLines(d *daemon, msg string) []map[string]any {
	var out []map[string]any
	for sc := bufio.NewScanner(strings.NewReader(d.output())); sc.Scan(); {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] == msg {
			out = append(out, line)
		}
	}
	return out
}

// findLine waits until d logged a line msg whose fields include want.
func findLine(t *testing.T, d *daemon, msg string, want map[string]any) map[string]any {
	t.Helper()
	var found map[string]any
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		for _, line := range logLines(d, msg) {
			match := true
			for k, v := range want {
				match = match && fmt.Sprint(line[k]) == fmt.Sprint(v)
			}
			if match {
				found = line
				return true, ""
			}
		}
		return false, fmt.Sprintf("%s logged no %q line with %v", d.name, msg, want)
	})
	return found
}

// families scrapes a daemon's /metrics and returns its metric families by type.
func families(t *testing.T, d *daemon) map[string]string {
	t.Helper()
	resp, err := http.Get(d.adminURL + "/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", d.name, err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = f[3]
		}
	}
	return out
}

// TestMetricsLogsAndReadiness runs the daemons as processes with tracing off, sends a
// client's traceparent with three orders (approved, declined, poisoned after retries)
// and checks that every daemon is ready, that the metrics of each daemon move, that
// the log lines carry the order, correlation and trace ids, that the client's trace
// context reaches the payments topic through every hop, and that every metric the
// Grafana dashboard plots is one the daemons export.
func TestMetricsLogsAndReadiness(t *testing.T) {
	w := startWatched(t)
	for _, c := range []struct {
		d    *daemon
		want string
	}{
		{w.api, "postgres=ok, redis=ok"},
		{w.relay, "postgres=ok, kafka=ok"},
		{w.worker, "consumer=ok, postgres=ok, kafka=ok, payments=ok, redis=ok"},
	} {
		testenv.Eventually(t, 30*time.Second, func() (bool, string) {
			code, header := readiness(t, c.d)
			return code == 200 && header == c.want, fmt.Sprintf("%s /readyz = %d %q, want 200 %q", c.d.name, code, header, c.want)
		})
	}
	if code, _ := readiness(t, w.paymentsim); code != 200 {
		t.Errorf("paymentsim /readyz = %d, want 200", code)
	}

	paid := w.post(t, "200", "corr-obs-paid")
	declined := w.post(t, "19.51", "corr-obs-declined")
	poisoned := w.post(t, "19.61", "corr-obs-poison")
	w.waitStatus(t, paid, "PAID", 60*time.Second)
	w.waitStatus(t, declined, "PAYMENT_FAILED", 60*time.Second)
	w.poisoned(t, strconv.FormatInt(poisoned, 10))

	t.Run("metrics", func(t *testing.T) {
		tests := []struct {
			d    *daemon
			name string
			min  float64
		}{
			{w.api, "orders_created_total", 3},
			{w.api, "http_request_duration_seconds_count", 5}, // 3 POSTs, 2+ status GETs
			{w.api, "order_cache_lookups_total", 2},
			{w.api, "go_sql_max_open_connections", 1},
			{w.relay, "relay_forwarded_total", 5}, // 3 OrderCreated, 2 outcomes
			{w.relay, "relay_lag_seconds_count", 5},
			{w.relay, "relay_batch_rows_count", 1},
			{w.relay, "relay_leader", 1},
			{w.relay, "go_sql_open_connections", 1},
			{w.worker, "worker_messages_total", 3},
			{w.worker, "worker_payments_total", 2},
			{w.worker, "worker_retries_total", 3}, // fastRetries: 3 for the poisoned order
			{w.worker, "worker_poisoned_total", 1},
			{w.worker, "worker_handler_seconds_count", 6},
			{w.worker, "handler_execution_time_seconds_count", 3},
			{w.paymentsim, "paymentsim_payments_total", 6},
			{w.paymentsim, "http_request_duration_seconds_count", 6},
		}
		for _, tt := range tests {
			testenv.Eventually(t, 10*time.Second, func() (bool, string) {
				got := metricSum(t, tt.d, tt.name)
				return got >= tt.min, fmt.Sprintf("%s %s = %g, want >= %g", tt.d.name, tt.name, got, tt.min)
			})
		}
		for _, d := range []*daemon{w.api, w.relay, w.worker, w.paymentsim} {
			if _, ok := families(t, d)["go_goroutines"]; !ok {
				t.Errorf("%s exports no Go runtime metrics", d.name)
			}
		}
		if _, ok := families(t, w.relay)["relay_backlog_rows"]; !ok {
			t.Errorf("relay exports no relay_backlog_rows")
		}
	})

	t.Run("logs", func(t *testing.T) {
		id := strconv.FormatInt(paid, 10)
		findLine(t, w.api, "request", map[string]any{"method": "POST", "status": 201, "order_id": id,
			"correlation_id": "corr-obs-paid", "trace_id": callerTraceID})
		findLine(t, w.worker, "message processed", map[string]any{"order_id": id, "correlation_id": "corr-obs-paid",
			"trace_id": callerTraceID, "type": events.TypeOrderCreated})
		findLine(t, w.worker, "payment recorded", map[string]any{"order_id": paid, "trace_id": callerTraceID})
		findLine(t, w.paymentsim, "payment", map[string]any{"order_id": paid, "correlation_id": "corr-obs-paid",
			"trace_id": callerTraceID})
		line := findLine(t, w.worker, "message poisoned", map[string]any{"order_id": strconv.FormatInt(poisoned, 10),
			"correlation_id": "corr-obs-poison", "trace_id": callerTraceID, "level": "ERROR"})
		if line["err"] == nil {
			t.Errorf("poisoned line has no err: %v", line)
		}
		if n := len(logLines(w.worker, "message processed")); n != 2 {
			t.Errorf("%d \"message processed\" lines, want 2: one per processed message", n)
		}
	})

	t.Run("trace context reaches the payments topic", func(t *testing.T) {
		msgs := testenv.Consume(t, w.topicPrefix+events.TopicPayments, 20*time.Second,
			func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= 2 })
		if len(msgs) != 2 {
			t.Fatalf("payments topic holds %d messages, want 2", len(msgs))
		}
		for _, m := range msgs {
			if got := testenv.Header(m, "traceparent"); !strings.HasPrefix(got, "00-"+callerTraceID+"-") {
				t.Errorf("%s traceparent = %q, want the client's trace %s", testenv.Header(m, events.MetaType), got, callerTraceID)
			}
		}
	})

	t.Run("dashboard plots exported metrics", func(t *testing.T) {
		exported := map[string]string{"up": "gauge"} // Prometheus' own, per target
		for _, d := range []*daemon{w.api, w.relay, w.worker, w.paymentsim} {
			maps.Copy(exported, families(t, d))
		}
		for _, q := range dashboardQueries(t) {
			names := metricNames(q.expr)
			if len(names) == 0 {
				t.Errorf("panel %q: no metric found in %s", q.panel, q.expr)
			}
			for _, name := range names {
				if !isExported(exported, name) {
					t.Errorf("panel %q plots %s, which no daemon exports", q.panel, name)
				}
			}
		}
	})
}

// TestReadinessReflectsDependencies starts daemons whose dependencies are down: the
// relay without Kafka is not ready; the worker without the payment provider stays ready
// and says so (an outage delays orders, restarting the worker would not help).
func TestReadinessReflectsDependencies(t *testing.T) {
	dbURL := testenv.DatabaseURL(t)
	dead := testenv.FreeAddr(t)
	relayAdmin := testenv.FreeAddr(t)
	r := startDaemon(t, "relay", []string{"ADMIN_ADDR=" + relayAdmin, "DATABASE_URL=" + dbURL, "KAFKA_BROKERS=" + dead},
		"http://"+relayAdmin+"/healthz")
	if code, header := readiness(t, r); code != http.StatusServiceUnavailable || header != "postgres=ok, kafka=down" {
		t.Errorf("relay without Kafka: /readyz = %d %q, want 503 \"postgres=ok, kafka=down\"", code, header)
	}

	p := &pipeline{t: t, dbURL: dbURL, topicPrefix: testenv.TopicPrefix(t), brokers: strings.Join(testenv.Brokers(), ","),
		paymentURL: "http://" + dead}
	p.cachePrefix = p.topicPrefix + "order:"
	w := p.startWorker("worker-" + testenv.ID())
	testenv.Eventually(t, 30*time.Second, func() (bool, string) {
		code, header := readiness(t, w)
		want := "consumer=ok, postgres=ok, kafka=ok, payments=down, redis=ok"
		return code == http.StatusOK && header == want, fmt.Sprintf("worker without provider: /readyz = %d %q, want 200 %q", code, header, want)
	})
}

// TestDaemonsExportTraces switches tracing on in every daemon with the standard
// OTEL_EXPORTER_OTLP_ENDPOINT, pointed at a fake collector, and checks that one order's
// trace holds the spans of all four services, and that its trace_id is in their logs.
func TestDaemonsExportTraces(t *testing.T) {
	rcv := testenv.NewOTLPReceiver(t)
	w := startWatched(t, "OTEL_EXPORTER_OTLP_ENDPOINT="+rcv.URL, "OTEL_BSP_SCHEDULE_DELAY=100")
	id := w.create(t, "200", "USD")
	w.waitStatus(t, id, "PAID", 60*time.Second)

	var traceID []byte
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		for _, s := range rcv.Spans(nil) {
			if s.Service == "api" && s.Name == "POST /orders" {
				traceID = s.TraceId
				return true, ""
			}
		}
		return false, "the collector has no api span POST /orders"
	})
	want := map[string][]string{
		"api":        {"POST /orders", "create order"},
		"relay":      {"send " + w.topicPrefix + events.TopicOrders, "send " + w.topicPrefix + events.TopicPayments},
		"worker":     {"process " + w.topicPrefix + events.TopicOrders, "POST /payments"},
		"paymentsim": {"POST /payments"},
	}
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		got := map[string][]string{}
		for _, s := range rcv.Spans(traceID) {
			got[s.Service] = append(got[s.Service], s.Name)
		}
		for service, names := range want {
			for _, n := range names {
				if !slices.Contains(got[service], n) {
					return false, fmt.Sprintf("the order's trace lacks %s's span %q; it holds %v", service, n, got)
				}
			}
		}
		return true, ""
	})
	tid := trace.TraceID(traceID).String()
	findLine(t, w.api, "request", map[string]any{"method": "POST", "trace_id": tid})
	findLine(t, w.worker, "message processed", map[string]any{"order_id": id, "trace_id": tid})
	findLine(t, w.paymentsim, "payment", map[string]any{"order_id": id, "trace_id": tid})
}

// query is one PromQL expression of a dashboard panel.
type query struct{ panel, expr string }

// dashboardQueries reads the Grafana dashboard and returns every panel's queries.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	var dash struct {
		Panels []struct {
			Type, Title string
			Datasource  struct{ Type, UID string }
			Targets     []struct{ Expr string }
		}
	}
	data, err := os.ReadFile(repoFile("observability", "grafana", "dashboards", "orderpipe.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var out []query
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, query{panel: p.Title, expr: tg.Expr})
		}
	}
	return out
}

// selector matches a metric name written with a label selector or a range: every
// dashboard query selects by job, so each metric in it is followed by "{".
var selector = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{`)

func metricNames(expr string) []string {
	var out []string
	for _, m := range selector.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[1])
	}
	return out
}

// isExported reports whether name is an exported family, or a series of an exported
// histogram or summary (name_bucket, name_count, name_sum).
func isExported(families map[string]string, name string) bool {
	if _, ok := families[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if typ := families[base]; typ == "histogram" || (typ == "summary" && suffix != "_bucket") {
				return true
			}
		}
	}
	return false
}

// jobSelector matches job="x" and job=~"x|y".
var jobSelector = regexp.MustCompile(`job=~?"([^"]*)"`)

// TestGrafanaDashboard checks the dashboard's shape without any service: it parses,
// has the panels the issue asks for, every query uses the provisioned datasource and
// jobs that Prometheus scrapes, and (where promtool is installed) every query is valid
// PromQL.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(repoFile("observability", "grafana", "dashboards", "orderpipe.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string
		Panels []struct {
			Type, Title string
			Datasource  *struct{ Type, UID string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var titles []string
	for _, p := range dash.Panels {
		titles = append(titles, p.Title)
		if p.Type != "row" && (p.Datasource == nil || p.Datasource.UID != provisionedDatasource(t)) {
			t.Errorf("panel %q uses datasource %+v, want the provisioned uid %q", p.Title, p.Datasource, provisionedDatasource(t))
		}
	}
	for _, want := range []string{"Orders/s by status", "API latency p50 / p99 by route", "Outbox backlog", "Outbox lag",
		"Worker retries and poison", "Payment outcomes"} {
		if !slices.Contains(titles, want) {
			t.Errorf("dashboard has no panel %q; it has %q", want, titles)
		}
	}

	jobs := scrapedJobs(t)
	queries := dashboardQueries(t)
	for _, q := range queries {
		sel := jobSelector.FindAllStringSubmatch(q.expr, -1)
		if len(sel) == 0 {
			t.Errorf("panel %q: %s selects no job", q.panel, q.expr)
		}
		for _, m := range sel {
			for _, job := range strings.Split(m[1], "|") {
				if _, ok := jobs[job]; !ok {
					t.Errorf("panel %q selects job %q, which prometheus.yml does not scrape", q.panel, job)
				}
			}
		}
	}

	t.Run("promtool check rules", func(t *testing.T) {
		promtool := lookPath(t, "promtool")
		// Each query as a recording rule, Grafana's $__rate_interval made a real range.
		type rule struct {
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		}
		var rules []rule
		for i, q := range queries {
			rules = append(rules, rule{Record: "dashboard:query" + strconv.Itoa(i), Expr: strings.ReplaceAll(q.expr, "$__rate_interval", "1m")})
		}
		out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "rules.yml")
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
	})
}

// lookPath finds a tool or skips the (sub)test that needs it.
func lookPath(t *testing.T, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s is not installed", tool)
	}
	return path
}

// scrapedJobs reads observability/prometheus.yml: job name → targets.
func scrapedJobs(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(repoFile("observability", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	jobs := map[string][]string{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, s := range sc.StaticConfigs {
			jobs[sc.JobName] = append(jobs[sc.JobName], s.Targets...)
		}
	}
	return jobs
}

// provisionedDatasource is the uid of Grafana's provisioned Prometheus datasource.
func provisionedDatasource(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(repoFile("observability", "grafana", "provisioning", "datasources", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Datasources []struct{ UID, Type, URL string } `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("datasource provisioning: %v", err)
	}
	if len(cfg.Datasources) != 1 || cfg.Datasources[0].Type != "prometheus" || cfg.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("datasources = %+v, want one prometheus at http://prometheus:9090", cfg.Datasources)
	}
	return cfg.Datasources[0].UID
}

// composeFile is the part of compose.yml the observability files depend on.
type composeFile struct {
	Services map[string]struct {
		Image       string
		Ports       []string
		Volumes     []string
		Environment map[string]string
	}
}

// TestPrometheusConfig checks that Prometheus scrapes each daemon at the port compose
// gives it, and (where promtool is installed) that promtool accepts the file.
func TestPrometheusConfig(t *testing.T) {
	jobs := scrapedJobs(t)
	data, err := os.ReadFile(repoFile("compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose composeFile
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("compose.yml: %v", err)
	}
	for _, tt := range []struct{ job, target, addrVar string }{
		{"api", "api:8080", "HTTP_ADDR"},
		{"relay", "relay:9102", "ADMIN_ADDR"},
		{"worker", "worker:9103", "ADMIN_ADDR"},
		{"paymentsim", "paymentsim:8081", "HTTP_ADDR"},
	} {
		if got := jobs[tt.job]; !slices.Equal(got, []string{tt.target}) {
			t.Errorf("job %s scrapes %v, want [%s]", tt.job, got, tt.target)
		}
		svc, ok := compose.Services[tt.job]
		_, port, _ := strings.Cut(tt.target, ":")
		if !ok || svc.Environment[tt.addrVar] != ":"+port {
			t.Errorf("compose service %s has %s = %q, want %q (where Prometheus scrapes it)", tt.job, tt.addrVar,
				svc.Environment[tt.addrVar], ":"+port)
		}
	}
	t.Run("promtool check config", func(t *testing.T) {
		promtool := lookPath(t, "promtool")
		if out, err := exec.Command(promtool, "check", "config", repoFile("observability", "prometheus.yml")).CombinedOutput(); err != nil {
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
	})
}

// TestAlertRules checks that every alert selects a job Prometheus scrapes and names a
// metric the daemons export, and (where promtool is installed) that promtool accepts
// the file.
func TestAlertRules(t *testing.T) {
	data, err := os.ReadFile(repoFile("observability", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	jobs := scrapedJobs(t)
	readme, err := os.ReadFile(repoFile("README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			sel := jobSelector.FindAllStringSubmatch(r.Expr, -1)
			if len(sel) == 0 {
				t.Errorf("alert %s: %s selects no job", r.Alert, r.Expr)
			}
			for _, m := range sel {
				if _, ok := jobs[m[1]]; !ok {
					t.Errorf("alert %s selects job %q, which prometheus.yml does not scrape", r.Alert, m[1])
				}
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s has no severity or summary", r.Alert)
			}
			if !strings.Contains(string(readme), r.Alert) {
				t.Errorf("alert %s has no runbook entry in README.md", r.Alert)
			}
		}
	}
	if want := []string{"RelayPositionInvalid", "RelayDeadLetters", "PaymentProviderRefusing", "OrdersStuckPending"}; !slices.Equal(alerts, want) {
		t.Errorf("alerts %v, want %v", alerts, want)
	}
	t.Run("promtool check rules", func(t *testing.T) {
		promtool := lookPath(t, "promtool")
		if out, err := exec.Command(promtool, "check", "rules", repoFile("observability", "alerts.yml")).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
	})
}

// TestComposeObservability checks that compose mounts the observability files where
// Prometheus and Grafana read them, and (where docker-compose is installed) that
// docker-compose accepts compose.yml. No Docker engine is needed, none is used.
func TestComposeObservability(t *testing.T) {
	data, err := os.ReadFile(repoFile("compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose composeFile
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("compose.yml: %v", err)
	}
	var providers struct {
		Providers []struct {
			Options struct{ Path string }
		}
	}
	pdata, err := os.ReadFile(repoFile("observability", "grafana", "provisioning", "dashboards", "orderpipe.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(pdata, &providers); err != nil || len(providers.Providers) != 1 {
		t.Fatalf("dashboard provisioning: %v %+v", err, providers)
	}
	for _, tt := range []struct{ service, source, target string }{
		{"prometheus", "./observability/prometheus.yml", "/etc/prometheus/prometheus.yml"},
		{"prometheus", "./observability/alerts.yml", "/etc/prometheus/alerts.yml"},
		{"grafana", "./observability/grafana/provisioning", "/etc/grafana/provisioning"},
		{"grafana", "./observability/grafana/dashboards", providers.Providers[0].Options.Path},
	} {
		want := tt.source + ":" + tt.target + ":ro"
		if !slices.Contains(compose.Services[tt.service].Volumes, want) {
			t.Errorf("compose %s volumes %v lack %s", tt.service, compose.Services[tt.service].Volumes, want)
		}
		if _, err := os.Stat(repoFile(tt.source)); err != nil {
			t.Errorf("compose mounts %s: %v", tt.source, err)
		}
	}
	for _, svc := range []string{"prometheus", "grafana"} {
		if compose.Services[svc].Image == "" {
			t.Errorf("compose has no %s image", svc)
		}
	}
	t.Run("docker-compose config", func(t *testing.T) {
		dc := lookPath(t, "docker-compose")
		cmd := exec.Command(dc, "-f", "compose.yml", "config", "-q")
		cmd.Dir = repoFile()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker-compose config: %v\n%s", err, out)
		}
	})
}
