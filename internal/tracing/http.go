package tracing

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// untraced are the operational endpoints: probes and scrapes every few seconds would
// bury the traces worth reading.
var untraced = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// traceparentHeader is the canonical form of the W3C header, for a lookup that does
// not allocate.
const traceparentHeader = "Traceparent"

// Middleware starts a server span per request, continuing the caller's traceparent if it
// sent one. After the handler returns, route(r) names the span "METHOD route": pass the
// route pattern, never the raw path (one span name per order id is useless). A nil tp
// means tracing is off: the caller's trace context is still passed on.
func Middleware(tp trace.TracerProvider, route func(*http.Request) string) func(http.Handler) http.Handler {
	tracer, off := Tracer(tp), !Enabled(tp)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if untraced[r.URL.Path] {
				next.ServeHTTP(w, r)
				return
			}
			if off && r.Header[traceparentHeader] == nil {
				next.ServeHTTP(w, r) // nothing to record, nothing to pass on
				return
			}
			ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			ctx, span := tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer))
			defer span.End()
			r = r.WithContext(ctx)
			if !span.IsRecording() {
				next.ServeHTTP(w, r)
				return
			}
			// chi's wrapper keeps Hijack and Unwrap (paymentsim hijacks to simulate resets).
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			next.ServeHTTP(ww, r)
			status := ww.Status()
			if status == 0 { // nothing written: net/http answers 200
				status = http.StatusOK
			}
			name := route(r)
			span.SetName(r.Method + " " + name)
			span.SetAttributes(semconv.HTTPRequestMethodKey.String(r.Method), semconv.HTTPRoute(name),
				semconv.URLPath(r.URL.Path), semconv.HTTPResponseStatusCode(status))
			if status >= 500 {
				span.SetStatus(codes.Error, strconv.Itoa(status))
			}
		})
	}
}

// Transport returns a RoundTripper that starts a client span per request, named
// "METHOD path" (callers use fixed paths), and sends its context as traceparent. The
// span ends when the response headers arrive. A nil
// base means http.DefaultTransport; a nil tp means tracing is off: the caller's trace
// context is still sent.
func Transport(tp trace.TracerProvider, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{tracer: Tracer(tp), off: !Enabled(tp), base: base}
}

type transport struct {
	tracer trace.Tracer
	off    bool
	base   http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.off && !trace.SpanContextFromContext(req.Context()).IsValid() {
		return t.base.RoundTrip(req) // nothing to record, nothing to pass on
	}
	ctx, span := t.tracer.Start(req.Context(), req.Method+" "+req.URL.Path, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	// A RoundTripper must not modify the caller's request.
	req = req.Clone(ctx)
	propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
	if span.IsRecording() {
		span.SetAttributes(semconv.HTTPRequestMethodKey.String(req.Method), semconv.URLFull(req.URL.String()),
			semconv.ServerAddress(req.URL.Hostname()))
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, strconv.Itoa(resp.StatusCode))
	}
	return resp, nil
}
