package api_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/admin"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

// TestReadinessReportsRedis: Postgres decides readiness, Redis is only reported.
func TestReadinessReportsRedis(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, redisURL, want string
	}{
		{"redis up", testenv.RedisURL(), "postgres=ok, redis=ok"},
		{"redis down", "redis://" + testenv.FreeAddr(t) + "/0", "postgres=ok, redis=down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newCachedFixture(t, tt.redisURL)
			r := f.do(t, http.MethodGet, "/readyz", "")
			if r.status != http.StatusOK || string(r.body) != "ready\n" {
				t.Errorf("/readyz = %d %q, want 200 \"ready\\n\"", r.status, r.body)
			}
			if got := r.header.Get(admin.ReadinessHeader); got != tt.want {
				t.Errorf("%s = %q, want %q", admin.ReadinessHeader, got, tt.want)
			}
		})
	}
	t.Run("postgres down", func(t *testing.T) {
		f := newFixture(t)
		f.db.Close()
		r := f.do(t, http.MethodGet, "/readyz", "")
		if got := r.header.Get(admin.ReadinessHeader); r.status != http.StatusServiceUnavailable || got != "postgres=down" {
			t.Errorf("/readyz = %d with %s %q, want 503 and \"postgres=down\"", r.status, admin.ReadinessHeader, got)
		}
	})
}

// TestTracing checks the api's part of an order's trace: a server span named by route
// that continues the caller's traceparent, a child span around the create transaction,
// and that span's context in the OrderCreated outbox row, for the relay to continue.
func TestTracing(t *testing.T) {
	t.Parallel()
	tp, exp := testenv.Tracing(t)
	db := testenv.DB(t)
	var logs testenv.Buffer
	srv := httptest.NewServer(api.New(orders.NewStore(db, outbox.New("")), db,
		envconf.Logger(&logs, slog.LevelInfo, "api"), api.Config{TracerProvider: tp}))
	t.Cleanup(srv.Close)
	f := &fixture{srv: srv, db: db}

	const caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	r := f.do(t, http.MethodPost, "/orders", seedBody, "Content-Type", "application/json", "traceparent", caller,
		"X-Correlation-ID", "corr-trace")
	if r.status != http.StatusCreated {
		t.Fatalf("POST = %d %s", r.status, r.body)
	}
	srv.Close() // the server span ends after the answer is written: wait for it

	byName := map[string]trace.SpanContext{}
	parents := map[string]trace.SpanContext{}
	for _, s := range exp.GetSpans() {
		byName[s.Name], parents[s.Name] = s.SpanContext, s.Parent
	}
	server, create := byName["POST /orders"], byName["create order"]
	if !server.IsValid() || !create.IsValid() {
		t.Fatalf("spans %v, want \"POST /orders\" and \"create order\"", byName)
	}
	if got := parents["POST /orders"]; got.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || got.SpanID().String() != "00f067aa0ba902b7" {
		t.Errorf("server span parent = %v, want the caller's span", got)
	}
	if parents["create order"].SpanID() != server.SpanID() {
		t.Errorf("create span parent = %v, want the server span %v", parents["create order"].SpanID(), server.SpanID())
	}

	var metadata string
	if err := db.QueryRow(`SELECT payload::jsonb->'metadata'->>'traceparent' FROM watermill_outbox`).Scan(&metadata); err != nil {
		t.Fatal(err)
	}
	if want := "00-" + create.TraceID().String() + "-" + create.SpanID().String() + "-01"; metadata != want {
		t.Errorf("outbox traceparent = %q, want the create span's %q", metadata, want)
	}

	var line map[string]any
	for sc := bufio.NewScanner(strings.NewReader(logs.String())); sc.Scan(); {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "request" {
			line = l
		}
	}
	want := map[string]any{"trace_id": server.TraceID().String(), "span_id": server.SpanID().String(),
		"correlation_id": "corr-trace", "order_id": "1", "status": float64(201)}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("access log %s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
}

// TestOrdersCreatedMetric counts new orders, not idempotent replays.
func TestOrdersCreatedMetric(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.post(t, seedBody, "k1")
	f.post(t, seedBody, "k1") // a replay
	f.post(t, seedBody, "")
	m := f.do(t, http.MethodGet, "/metrics", "")
	if !bytes.Contains(m.body, []byte("orders_created_total 2\n")) {
		t.Errorf("metrics lack orders_created_total 2:\n%s", m.body)
	}
	for _, want := range []string{`http_request_duration_seconds_count{code="201",method="POST",route="/orders"} 3`,
		"go_sql_max_open_connections{db_name=\"orderdb\"} " + strconv.Itoa(8)} {
		if !bytes.Contains(m.body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
