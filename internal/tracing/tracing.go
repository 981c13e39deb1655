// Package tracing is the pipeline's OpenTelemetry tracing: the TracerProvider a daemon
// gets from the standard OTEL_* environment, W3C trace context carried in Watermill
// message metadata (traceparent, tracestate) and in HTTP headers, and a slog handler that
// adds trace_id and span_id to log lines.
//
// Tracing is off unless an OTLP endpoint is configured: the provider is then a no-op one,
// whose spans cost nothing and record nothing. Trace context is still passed on: a span
// started under an incoming traceparent keeps that context, so a trace begun by a caller
// (or by another daemon that does export) continues through a daemon that does not
// export, and its log lines carry the caller's trace_id.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// instrumentation names the tracer of every span this module starts.
const instrumentation = "github.com/orderpipe/orderpipe"

// propagator is the one trace-context format on every hop: W3C traceparent/tracestate.
var propagator = propagation.TraceContext{}

// Provider returns the TracerProvider for the daemon service and a function that flushes
// and stops it (call it at exit). It reads the standard OpenTelemetry variables:
//
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or OTEL_EXPORTER_OTLP_ENDPOINT (plus
//     /v1/traces) switches tracing on: spans are batched and exported as OTLP over
//     HTTP/protobuf (the only OTEL_EXPORTER_OTLP_PROTOCOL accepted). Unset, the provider
//     is a no-op (the default).
//   - OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none switch it off again.
//   - OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the resource (service.name
//     defaults to service); OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* and
//     OTEL_EXPORTER_OTLP_(TRACES_)HEADERS/TIMEOUT/COMPRESSION are read by the SDK itself,
//     from the process environment.
//
// endpoint is the traces URL when tracing is on, "" when off, for the start-up log. When
// tracing is on, the SDK's own errors (a collector that cannot be reached) go to logger,
// through OpenTelemetry's global error handler.
func Provider(ctx context.Context, getenv func(string) string, service string, logger *slog.Logger) (tp trace.TracerProvider, endpoint string, shutdown func(context.Context) error, err error) {
	off := func(context.Context) error { return nil }
	name := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	endpoint = getenv(name)
	if endpoint == "" {
		if base := getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); base != "" {
			name, endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT", strings.TrimRight(base, "/")+"/v1/traces"
		}
	}
	if endpoint == "" || strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || getenv("OTEL_TRACES_EXPORTER") == "none" {
		return noop.NewTracerProvider(), "", off, nil
	}
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "", off, fmt.Errorf("%s=%q: want an http(s) URL such as http://localhost:4318", name, getenv(name))
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := getenv(v); p != "" && p != "http/protobuf" {
			return nil, "", off, fmt.Errorf("%s=%q: only http/protobuf is supported", v, p)
		}
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { logger.Warn("tracing", "err", err) }))
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, "", off, fmt.Errorf("otlp trace exporter %s: %w", endpoint, err)
	}
	// Later options win: the service default, then OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES.
	res, err := resource.New(ctx, resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID(), resource.WithFromEnv())
	if err != nil {
		return nil, "", off, fmt.Errorf("trace resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return sdk, endpoint, sdk.Shutdown, nil
}

// Shutdown calls shutdown with a bounded wait, so an unreachable collector cannot hold
// up a daemon's exit.
func Shutdown(shutdown func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return shutdown(ctx)
}

// Tracer returns the module's tracer from tp; a nil tp means tracing is off.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer(instrumentation)
}

// Enabled reports whether tp records spans: false for nil and the no-op provider
// (tracing off), so a hot path can skip even no-op spans when it has no trace context
// to pass on either.
func Enabled(tp trace.TracerProvider) bool {
	if tp == nil {
		return false
	}
	_, off := tp.(noop.TracerProvider)
	return !off
}

// Inject writes the trace context of ctx into message metadata (Watermill's
// message.Metadata) as traceparent and tracestate. It writes nothing when ctx has no
// span context.
func Inject(ctx context.Context, metadata map[string]string) {
	propagator.Inject(ctx, propagation.MapCarrier(metadata))
}

// Extract returns ctx with the remote span context that metadata carries, if any.
func Extract(ctx context.Context, metadata map[string]string) context.Context {
	return propagator.Extract(ctx, propagation.MapCarrier(metadata))
}
