package tracing_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/orderpipe/orderpipe/internal/tracing"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOffCostsNothing: with tracing off and no trace context to pass on, the middleware
// and the transport allocate nothing.
func TestOffCostsNothing(t *testing.T) {
	for name, tp := range map[string]trace.TracerProvider{"nil": nil, "noop": noop.NewTracerProvider()} {
		t.Run(name, func(t *testing.T) {
			h := tracing.Middleware(tp, func(*http.Request) string { return "/" })(
				http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
			req := httptest.NewRequest(http.MethodPost, "/orders", nil)
			w := httptest.NewRecorder()
			if n := testing.AllocsPerRun(100, func() { h.ServeHTTP(w, req) }); n != 0 {
				t.Errorf("middleware allocates %v times per request, want 0", n)
			}
			rt := tracing.Transport(tp, roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, nil }))
			if n := testing.AllocsPerRun(100, func() { rt.RoundTrip(req) }); n != 0 {
				t.Errorf("transport allocates %v times per request, want 0", n)
			}
		})
	}
}
