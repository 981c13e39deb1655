package tracing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/internal/tracing"
)

// remote is a sampled span context as a caller's traceparent would carry it.
var remote = trace.NewSpanContext(trace.SpanContextConfig{
	TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
	SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
	TraceFlags: trace.FlagsSampled,
	Remote:     true,
})

const remoteHeader = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestProvider(t *testing.T) {
	tests := []struct {
		name         string
		env          map[string]string
		wantEndpoint string // "" means off
	}{
		{"off by default", nil, ""},
		{"base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"}, "http://127.0.0.1:4318/v1/traces"},
		{"traces endpoint as is", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/custom"}, "http://b:4318/custom"},
		{"SDK disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_SDK_DISABLED": "true"}, ""},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_TRACES_EXPORTER": "none"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, endpoint, shutdown, err := tracing.Provider(context.Background(), envconf.Map(tt.env), "test", slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer tracing.Shutdown(shutdown)
			if endpoint != tt.wantEndpoint {
				t.Errorf("endpoint = %q, want %q", endpoint, tt.wantEndpoint)
			}
			_, isNoop := tp.(noop.TracerProvider)
			_, isSDK := tp.(*sdktrace.TracerProvider)
			if tt.wantEndpoint == "" && !isNoop {
				t.Errorf("provider is %T, want the no-op provider", tp)
			}
			if tt.wantEndpoint != "" && !isSDK {
				t.Errorf("provider is %T, want the SDK's", tp)
			}
		})
	}
}

// TestProviderExportsOTLP switches tracing on with the standard variable and checks that
// a span reaches a collector, under the daemon's service name.
func TestProviderExportsOTLP(t *testing.T) {
	rcv := testenv.NewOTLPReceiver(t)
	tp, _, shutdown, err := tracing.Provider(context.Background(),
		envconf.Map(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.URL}), "relay", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_, span := tracing.Tracer(tp).Start(context.Background(), "send orders")
	span.End()
	if err := tracing.Shutdown(shutdown); err != nil { // flushes the batch
		t.Fatal(err)
	}
	got := rcv.Spans(nil)
	if len(got) != 1 || got[0].Name != "send orders" || got[0].Service != "relay" {
		t.Fatalf("collector got %d spans %+v, want one \"send orders\" from service relay", len(got), got)
	}
}

func TestProviderRejectsBadEndpoint(t *testing.T) {
	for _, v := range []string{"localhost:4318", "grpc://collector:4317", "http://"} {
		_, _, _, err := tracing.Provider(context.Background(), envconf.Map(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": v}),
			"test", slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_ENDPOINT") {
			t.Errorf("endpoint %q: err = %v, want one naming OTEL_EXPORTER_OTLP_ENDPOINT", v, err)
		}
	}
	_, _, _, err := tracing.Provider(context.Background(), envconf.Map(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}),
		"test", slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Errorf("protocol grpc: err = %v, want one naming OTEL_EXPORTER_OTLP_PROTOCOL", err)
	}
}

func TestInjectExtract(t *testing.T) {
	md := map[string]string{}
	tracing.Inject(context.Background(), md)
	if len(md) != 0 {
		t.Errorf("Inject without a span wrote %v, want nothing", md)
	}
	tracing.Inject(trace.ContextWithSpanContext(context.Background(), remote), md)
	if md["traceparent"] != remoteHeader {
		t.Errorf("traceparent = %q, want %q", md["traceparent"], remoteHeader)
	}
	sc := trace.SpanContextFromContext(tracing.Extract(context.Background(), md))
	if !sc.Equal(remote) {
		t.Errorf("Extract = %v, want %v", sc, remote)
	}
}

func TestMiddleware(t *testing.T) {
	tp, exp := testenv.Tracing(t)
	var seen trace.SpanContext
	h := tracing.Middleware(tp, func(*http.Request) string { return "/things/{id}" })(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen = trace.SpanContextFromContext(r.Context())
			w.WriteHeader(http.StatusTeapot)
		}))
	req := httptest.NewRequest(http.MethodGet, "/things/7", nil)
	req.Header.Set("traceparent", remoteHeader)
	h.ServeHTTP(httptest.NewRecorder(), req)

	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name != "GET /things/{id}" || s.SpanKind != trace.SpanKindServer {
		t.Errorf("span %q kind %v, want \"GET /things/{id}\" server", s.Name, s.SpanKind)
	}
	if s.Parent.SpanID() != remote.SpanID() || s.SpanContext.TraceID() != remote.TraceID() {
		t.Errorf("span parent %v, want the caller's %v", s.Parent, remote)
	}
	if seen.SpanID() != s.SpanContext.SpanID() {
		t.Errorf("handler saw span %v, want the server span %v", seen.SpanID(), s.SpanContext.SpanID())
	}
	var code int64
	for _, a := range s.Attributes {
		if a.Key == "http.response.status_code" {
			code = a.Value.AsInt64()
		}
	}
	if code != http.StatusTeapot {
		t.Errorf("http.response.status_code = %d, want %d", code, http.StatusTeapot)
	}

	exp.Reset()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if n := len(exp.GetSpans()); n != 0 {
		t.Errorf("/metrics made %d spans, want none", n)
	}
}

// TestMiddlewareOff checks that with tracing off a caller's context still reaches the
// handler, to be passed on.
func TestMiddlewareOff(t *testing.T) {
	var seen trace.SpanContext
	h := tracing.Middleware(nil, func(*http.Request) string { return "/" })(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = trace.SpanContextFromContext(r.Context()) }))
	req := httptest.NewRequest(http.MethodPost, "/orders", nil)
	req.Header.Set("traceparent", remoteHeader)
	h.ServeHTTP(httptest.NewRecorder(), req)
	if seen.TraceID() != remote.TraceID() || seen.SpanID() != remote.SpanID() {
		t.Errorf("handler saw %v, want the caller's %v", seen, remote)
	}
}

func TestTransport(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Get("traceparent")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	parent := trace.ContextWithSpanContext(context.Background(), remote)

	t.Run("on", func(t *testing.T) {
		tp, exp := testenv.Tracing(t)
		client := &http.Client{Transport: tracing.Transport(tp, nil)}
		req, _ := http.NewRequestWithContext(parent, http.MethodPost, srv.URL+"/payments", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		spans := exp.GetSpans()
		if len(spans) != 1 || spans[0].Name != "POST /payments" || spans[0].SpanKind != trace.SpanKindClient {
			t.Fatalf("spans %+v, want one client span \"POST /payments\"", spans)
		}
		s := spans[0]
		want := "00-" + remote.TraceID().String() + "-" + s.SpanContext.SpanID().String() + "-01"
		if got != want {
			t.Errorf("traceparent sent = %q, want the client span's %q", got, want)
		}
		if s.Parent.SpanID() != remote.SpanID() {
			t.Errorf("client span parent = %v, want %v", s.Parent.SpanID(), remote.SpanID())
		}
		if s.Status.Code.String() != "Error" {
			t.Errorf("status of a 503 = %v, want Error", s.Status)
		}
		if req.Header.Get("traceparent") != "" {
			t.Errorf("the caller's request was modified: %v", req.Header)
		}
	})
	t.Run("off", func(t *testing.T) {
		client := &http.Client{Transport: tracing.Transport(nil, nil)}
		req, _ := http.NewRequestWithContext(parent, http.MethodPost, srv.URL+"/payments", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got != remoteHeader {
			t.Errorf("traceparent sent = %q, want the caller's %q passed on", got, remoteHeader)
		}
	})
}

func TestLogHandler(t *testing.T) {
	var buf bytes.Buffer
	logger := envconf.Logger(&buf, slog.LevelInfo, "test").With("k", "v")
	logger.InfoContext(trace.ContextWithSpanContext(context.Background(), remote), "with span")
	logger.InfoContext(context.Background(), "without span")

	dec := json.NewDecoder(&buf)
	for _, want := range []struct{ msg, traceID, spanID string }{
		{"with span", remote.TraceID().String(), remote.SpanID().String()},
		{"without span", "", ""},
	} {
		var line map[string]any
		if err := dec.Decode(&line); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		got := func(k string) string { s, _ := line[k].(string); return s }
		if got("msg") != want.msg || got("trace_id") != want.traceID || got("span_id") != want.spanID || got("k") != "v" {
			t.Errorf("line %v, want msg %q trace_id %q span_id %q k v", line, want.msg, want.traceID, want.spanID)
		}
	}
}
