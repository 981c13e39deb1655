package paymentsim

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/internal/testenv"
)

// TestMetrics counts each answer by the behaviour its amount selects and its result,
// and serves them with the request latencies on /metrics.
func TestMetrics(t *testing.T) {
	s := newServer(t, Config{})
	post(t, s, "k1", body(1, 1000)) // approve
	post(t, s, "k1", body(1, 1000)) // replay
	post(t, s, "k2", body(2, 1051)) // insufficient_funds
	post(t, s, "k3", body(3, 1061)) // error
	post(t, s, "k1", body(9, 1000)) // key reused

	tests := []struct {
		behaviour, result string
		want              float64
	}{
		{"approve", "approved", 1},
		{"approve", "replayed", 1},
		{"insufficient_funds", "declined", 1},
		{"error", "failed", 1},
		{"approve", "rejected", 1},
	}
	for _, tt := range tests {
		if got := testutil.ToFloat64(s.metrics.payments.WithLabelValues(tt.behaviour, tt.result)); got != tt.want {
			t.Errorf("paymentsim_payments_total{behaviour=%q,result=%q} = %g, want %g", tt.behaviour, tt.result, got, tt.want)
		}
	}

	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`http_request_duration_seconds_count{code="201",method="POST",route="/payments"} 2`,
		`http_request_duration_seconds_count{code="500",method="POST",route="/payments"} 1`,
		`paymentsim_payments_total{behaviour="approve",result="approved"} 1`,
		"go_goroutines ",
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestResetIsCounted checks that the metrics wrapper lets a handler hijack the
// connection (the simulated reset) and still counts it.
func TestResetIsCounted(t *testing.T) {
	s := newServer(t, Config{})
	url, _ := serve(t, s)
	if _, err := postTo(http.DefaultClient, url, "k", body(1, 1073)); err == nil {
		t.Fatal("first attempt of 73 answered; want a reset")
	}
	if got := testutil.ToFloat64(s.metrics.payments.WithLabelValues("reset_then_approve", "reset")); got != 1 {
		t.Errorf("resets counted = %g, want 1", got)
	}
}

// TestServerSpan checks that a payment request is traced as a server span that
// continues the caller's traceparent (the worker's client span).
func TestServerSpan(t *testing.T) {
	tp, exp := testenv.Tracing(t)
	s := newServer(t, Config{TracerProvider: tp})
	req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(body(1, 1000)))
	req.Header.Set("Idempotency-Key", "k")
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	s.ServeHTTP(httptest.NewRecorder(), req)
	s.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/healthz", nil))

	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1 (probes are not traced)", len(spans))
	}
	sp := spans[0]
	if sp.Name != "POST /payments" || sp.SpanKind != trace.SpanKindServer ||
		sp.Parent.SpanID().String() != "00f067aa0ba902b7" || sp.SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("span %q kind %v parent %v trace %v, want POST /payments, server, child of the caller",
			sp.Name, sp.SpanKind, sp.Parent.SpanID(), sp.SpanContext.TraceID())
	}
}
