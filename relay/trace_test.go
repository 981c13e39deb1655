package relay

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/internal/tracing"
)

func header(pm *sarama.ProducerMessage, key string) string {
	for _, h := range pm.Headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

func traceRow(t *testing.T, metadata map[string]string) row {
	t.Helper()
	payload, err := json.Marshal(envelope{DestinationTopic: "orders", UUID: "u1", Payload: []byte("{}"), Metadata: metadata})
	if err != nil {
		t.Fatal(err)
	}
	return row{uuid: "u1", payload: payload}
}

// TestDecodeRowTracing: a row written under a sampled trace is sent under a producer
// span, child of the writer's span, whose context replaces the traceparent header; any
// other row is sent exactly as written, without a span.
func TestDecodeRowTracing(t *testing.T) {
	const (
		sampled   = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	)
	tp, exp := testenv.Tracing(t)
	tracer := tracing.Tracer(tp)

	t.Run("sampled", func(t *testing.T) {
		exp.Reset()
		pm, span, err := decodeRow(traceRow(t, map[string]string{"traceparent": sampled, "ce_subject": "7"}), tracer)
		if err != nil || span == nil {
			t.Fatalf("decodeRow = span %v, err %v; want a span", span, err)
		}
		sc := span.SpanContext()
		if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-" + sc.SpanID().String() + "-01"; header(pm, "traceparent") != want {
			t.Errorf("traceparent header = %q, want the relay span's %q", header(pm, "traceparent"), want)
		}
		endSpans([]trace.Span{span}, nil)
		spans := exp.GetSpans()
		if len(spans) != 1 || spans[0].Name != "send orders" || spans[0].SpanKind != trace.SpanKindProducer ||
			spans[0].Parent.SpanID().String() != "00f067aa0ba902b7" {
			t.Errorf("spans %+v, want one producer span \"send orders\" below the writer's span", spans)
		}
	})
	t.Run("failed batch", func(t *testing.T) {
		exp.Reset()
		_, span, _ := decodeRow(traceRow(t, map[string]string{"traceparent": sampled}), tracer)
		endSpans([]trace.Span{span}, errors.New("kafka down"))
		if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Status.Code != codes.Error {
			t.Errorf("spans %+v, want one failed span", spans)
		}
	})
	t.Run("tracing off", func(t *testing.T) {
		md := map[string]string{"traceparent": sampled}
		pm, span, err := decodeRow(traceRow(t, md), nil)
		if err != nil || span != nil || header(pm, "traceparent") != sampled {
			t.Errorf("decodeRow = span %v, err %v, traceparent %q; want no span and the row's traceparent", span, err, header(pm, "traceparent"))
		}
	})
	for name, md := range map[string]map[string]string{
		"unsampled":      {"traceparent": unsampled},
		"no traceparent": {"ce_subject": "7"},
	} {
		t.Run(name, func(t *testing.T) {
			exp.Reset()
			pm, span, err := decodeRow(traceRow(t, md), tracer)
			if err != nil || span != nil {
				t.Fatalf("decodeRow = span %v, err %v; want no span", span, err)
			}
			if header(pm, "traceparent") != md["traceparent"] {
				t.Errorf("traceparent header = %q, want %q as written", header(pm, "traceparent"), md["traceparent"])
			}
		})
	}
}
