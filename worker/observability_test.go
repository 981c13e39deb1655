package worker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/internal/tracing"
)

const callerTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// lockedBuffer collects log lines written from the router's goroutines.
type lockedBuffer struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var line map[string]any
		if json.Unmarshal([]byte(l), &line) == nil {
			b.lines = append(b.lines, line)
		}
	}
	return len(p), nil
}

// find returns the lines whose msg is one of msgs.
func (b *lockedBuffer) find(msgs ...string) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range b.lines {
		for _, m := range msgs {
			if l["msg"] == m {
				out = append(out, l)
			}
		}
	}
	return out
}

// TestDeliveryIsTracedAndLoggedOnce runs the real middleware chain and checks, for a
// processed and a poisoned message, the consumer span (a child of the message's
// traceparent, in the handler's context, failed when poisoned) and the one log line.
func TestDeliveryIsTracedAndLoggedOnce(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantMsg    string
		wantLevel  string
		wantStatus codes.Code
	}{
		{"processed", nil, "message processed", "INFO", codes.Unset},
		{"poisoned", permanent(errors.New("no such order")), "message poisoned", "ERROR", codes.Error},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, exp := testenv.Tracing(t)
			logs := &lockedBuffer{}
			pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
			defer pubsub.Close()
			m, err := newMetrics(nil)
			if err != nil {
				t.Fatal(err)
			}
			poison, err := middleware.PoisonQueueWithFilter(countingPublisher{pubsub, m}, "poison", shouldPoison)
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{MaxRetries: 1, RetryInterval: time.Millisecond, RetryMaxInterval: time.Millisecond,
				HandlerTimeout: time.Second, TracerProvider: tp}
			router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			router.AddMiddleware(middlewares(cfg, poison, m, envconf.Logger(logs, slog.LevelInfo, "worker"))...)
			var handlerSpan trace.SpanContext
			router.AddConsumerHandler("h", "in", pubsub, func(msg *message.Message) error {
				handlerSpan = trace.SpanContextFromContext(msg.Context())
				return tt.err
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go router.Run(ctx)
			<-router.Running()

			msg := message.NewMessage(watermill.NewUUID(), []byte("{}"))
			msg.Metadata.Set(events.MetaSubject, "7")
			msg.Metadata.Set(events.MetaType, events.TypeOrderCreated)
			msg.Metadata.Set(middleware.CorrelationIDMetadataKey, "corr-7")
			msg.Metadata.Set("traceparent", callerTraceparent)
			if err := pubsub.Publish("in", msg); err != nil { // returns once acked
				t.Fatal(err)
			}

			var span tracetest.SpanStub
			testenv.Eventually(t, 5*time.Second, func() (bool, string) {
				for _, s := range exp.GetSpans() {
					if s.Name == "process in" {
						span = s
						return true, ""
					}
				}
				return false, "no \"process in\" span"
			})
			if span.SpanKind != trace.SpanKindConsumer || span.Parent.SpanID().String() != "00f067aa0ba902b7" ||
				span.SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
				t.Errorf("span kind %v parent %v trace %v, want a consumer span below the message's traceparent",
					span.SpanKind, span.Parent.SpanID(), span.SpanContext.TraceID())
			}
			if handlerSpan.SpanID() != span.SpanContext.SpanID() {
				t.Errorf("handler ran under span %v, want the consumer span %v", handlerSpan.SpanID(), span.SpanContext.SpanID())
			}
			if span.Status.Code != tt.wantStatus {
				t.Errorf("span status = %v, want %v", span.Status.Code, tt.wantStatus)
			}

			lines := logs.find("message processed", "message poisoned", "message nacked; will be redelivered")
			if len(lines) != 1 {
				t.Fatalf("%d result lines %v, want 1", len(lines), lines)
			}
			want := map[string]any{"msg": tt.wantMsg, "level": tt.wantLevel, "order_id": "7", "correlation_id": "corr-7",
				"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "type": events.TypeOrderCreated, "message_id": msg.UUID}
			for k, v := range want {
				if lines[0][k] != v {
					t.Errorf("log %s = %v, want %v (line %v)", k, lines[0][k], v, lines[0])
				}
			}
		})
	}
}

// TestPaymentCallIsTraced: the worker's payment call is a client span below the
// consumer span, its context sent as traceparent with the correlation id.
func TestPaymentCallIsTraced(t *testing.T) {
	tp, exp := testenv.Tracing(t)
	var header http.Header
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header = r.Header.Clone()
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"id":"pay_1","status":"approved"}`))
	}))
	f.w.payments.HTTP.Transport = tracing.Transport(tp, f.w.payments.HTTP.Transport)
	o, msg := f.order(t)

	ctx, parent := tracing.Tracer(tp).Start(events.WithCorrelationID(context.Background(), "corr-9"), "process orders")
	if err := f.w.pay(ctx, msg.UUID, events.OrderCreated{ID: o.ID}); err != nil {
		t.Fatal(err)
	}
	parent.End()

	var client tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name == "POST /payments" {
			client = s
		}
	}
	if client.Parent.SpanID() != parent.SpanContext().SpanID() || client.SpanKind != trace.SpanKindClient {
		t.Fatalf("client span %+v, want a client span below the consumer span", client)
	}
	if want := "00-" + client.SpanContext.TraceID().String() + "-" + client.SpanContext.SpanID().String() + "-01"; header.Get("traceparent") != want {
		t.Errorf("traceparent = %q, want %q", header.Get("traceparent"), want)
	}
	if got := header.Get("X-Correlation-ID"); got != "corr-9" {
		t.Errorf("X-Correlation-ID = %q, want corr-9", got)
	}
	if got := testutil.ToFloat64(f.w.metrics.payments.WithLabelValues("approved")); got != 1 {
		t.Errorf("worker_payments_total{outcome=\"approved\"} = %g, want 1", got)
	}
}
