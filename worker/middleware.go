package worker

import (
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/keyorder"
)

// Metadata the worker adds to a message as it is tried; a poisoned message carries them
// beside Watermill's reason_poisoned, topic_poisoned and handler_poisoned.
const (
	// MetaAttempts counts the attempts at the message in this delivery.
	MetaAttempts = "attempts"
	// MetaFirstFailedAt is when an attempt at the message first failed (RFC 3339).
	MetaFirstFailedAt = "first_failed_at"
)

// middlewares is the handler chain; the first runs outermost.
//
//   - trace starts the consumer span, a child of the traceparent the message carries,
//     so that the payment call and the outcome event belong to the order's trace.
//   - CorrelationID carries the correlation id to anything the handler publishes.
//   - outcome counts what leaves the chain: success, or a nack (redelivery).
//   - poison sends failures that are not "unavailable" to the poison topic, after the
//     retries; permanent ones reach it at once because Retry skips them.
//   - reportResult writes the one log line per delivery, once retries are over.
//   - budget turns the unavailability of a message held past UnavailableBudget, while
//     other messages were processed, into a permanent failure: poisoned.
//   - cancelledIsUnavailable makes the failure of a delivery whose context ended (a
//     rebalance, a shutdown) unavailable, whatever error reports it (outside Retry,
//     which returns the context's cause; inside reportResult and poison, which must
//     both see it as unavailable).
//   - Retry retries transient and unavailable failures with exponential backoff and
//     jitter.
//   - attempts records each attempt in the metadata (the poison queue keeps it) and
//     observes per-type latency and retries.
//   - Timeout bounds each attempt.
//   - Recoverer is innermost, so a panic becomes an error that Retry and poison see.
func middlewares(cfg Config, poison message.HandlerMiddleware, m *metrics, logger *slog.Logger) []message.HandlerMiddleware {
	b := &unavailableBudget{limit: cfg.UnavailableBudget}
	return []message.HandlerMiddleware{
		traceMessages(tracing.Tracer(cfg.TracerProvider)),
		middleware.CorrelationID,
		m.outcome,
		poison,
		reportResult(logger),
		b.middleware,
		cancelledIsUnavailable,
		middleware.Retry{
			MaxRetries:          cfg.MaxRetries,
			InitialInterval:     cfg.RetryInterval,
			MaxInterval:         cfg.RetryMaxInterval,
			Multiplier:          2,
			RandomizationFactor: 0.5,
			ShouldRetry:         func(p middleware.RetryParams) bool { return !isPermanent(p.Err) },
			ResetContextOnRetry: true,
			Logger:              watermill.NewSlogLogger(logger),
		}.Middleware,
		m.attempts,
		middleware.Timeout(cfg.HandlerTimeout),
		middleware.Recoverer,
	}
}

// cancelledIsUnavailable marks the failure of a delivery whose context ended, because a
// rebalance moved its partition or the worker is stopping, as unavailable: it says nothing
// about the message, which the partition's next owner processes. The error alone does
// not tell: Retry, interrupted while it waits, returns the context's cause, and Sarama
// ends a session with its own ("a rebalance for the group is in progress").
func cancelledIsUnavailable(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context() // the delivery's: Timeout and Retry replace it further in
		out, err := h(msg)
		if err != nil && ctx.Err() != nil && !isPermanent(err) {
			return out, unavailable(err)
		}
		return out, err
	}
}

// unavailableBudget gives each message's unavailability an end. An error that says a
// dependency is unavailable holds the message (nacked, redelivered) rather than poison
// it, since an outage is no fault of the message. But some never end for one message
// while the others succeed: a statement timeout that recurs for it, a handler deadline it
// always hits, a provider answering 503 to this order alone. So a message that has failed
// as unavailable for limit without a break is poisoned, with the reason, if another
// message was processed meanwhile, and in the last minute (or during its last delivery,
// if that took longer): what the others see tells the two apart. In an outage nothing is
// processed, so however long it lasts no message is poisoned for it.
//
// The clock of a message starts at its first unavailable failure and stops at anything
// else: a success, a permanent or transient failure, a provider-down error (every message
// would see those: the provider refuses everyone, and payments pause), or a delivery cut
// short by a rebalance or shutdown. So a message held through a provider outage starts
// afresh once the provider is back. Messages are told apart by their Kafka record
// (keyorder.Record); a message read again after a rebalance or restart starts afresh, and
// messages from other subscribers have no budget.
type unavailableBudget struct {
	limit       time.Duration
	lastSuccess atomic.Int64 // when a message was last processed, Unix nanoseconds

	mu      sync.Mutex
	failing map[budgetKey]time.Time // message → its first unavailable failure in a row
}

type budgetKey struct {
	topic     string
	partition int32
	offset    int64
}

// budgetEvidence is how recently another message must have been processed for a
// message's own unavailability to spend its budget.
const budgetEvidence = time.Minute

func (b *unavailableBudget) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx := msg.Context() // the delivery's
		start := time.Now()
		out, err := h(msg)
		if err == nil {
			b.lastSuccess.Store(time.Now().UnixNano())
		}
		rec, ok := keyorder.RecordFromContext(ctx)
		if !ok {
			return out, err
		}
		key := budgetKey{rec.Topic, rec.Partition, rec.Offset}
		if err == nil || ctx.Err() != nil || !isUnavailable(err) || isProviderDown(err) {
			b.stop(key)
			return out, err
		}
		since := b.start(key, start)
		held := time.Since(since)
		last := time.Unix(0, b.lastSuccess.Load())
		if held < b.limit || last.Before(since) || time.Since(last) > max(time.Since(start), budgetEvidence) {
			return out, err // within its budget, or nothing gets through: an outage
		}
		b.stop(key)
		return out, permanent(fmt.Errorf("unavailable for %s over %d deliveries while other messages were processed (budget %s): %v",
			held.Round(time.Millisecond), rec.Delivery, b.limit, err))
	}
}

// start returns when key's unavailability began, now if it just did.
func (b *unavailableBudget) start(key budgetKey, now time.Time) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if since, ok := b.failing[key]; ok {
		return since
	}
	if b.failing == nil {
		b.failing = map[budgetKey]time.Time{}
	}
	if len(b.failing) >= 1<<16 {
		// Entries of messages whose partitions moved to another worker are never
		// stopped here. Drop the old ones; a message still failing after an outage that
		// long merely starts its clock again.
		for k, since := range b.failing {
			if now.Sub(since) > b.limit+budgetEvidence {
				delete(b.failing, k)
			}
		}
	}
	b.failing[key] = now
	return now
}

func (b *unavailableBudget) stop(key budgetKey) {
	b.mu.Lock()
	delete(b.failing, key)
	b.mu.Unlock()
}

// traceMessages starts a consumer span per delivery, as the child of the context the
// message's traceparent header carries (the relay's span), and hands it to the handler
// through the message's context.
func traceMessages(tracer trace.Tracer) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			topic := message.SubscribeTopicFromCtx(msg.Context())
			ctx := tracing.Extract(msg.Context(), msg.Metadata)
			ctx, span := tracer.Start(ctx, "process "+topic, trace.WithSpanKind(trace.SpanKindConsumer))
			defer span.End()
			if span.IsRecording() {
				span.SetAttributes(semconv.MessagingSystemKafka, semconv.MessagingOperationTypeProcess,
					semconv.MessagingDestinationName(topic), semconv.MessagingMessageID(messageID(msg)),
					semconv.MessagingKafkaMessageKey(msg.Metadata.Get(events.MetaSubject)),
					attribute.String("orderpipe.correlation_id", middleware.MessageCorrelationID(msg)))
			}
			msg.SetContext(ctx)
			return h(msg) // reportResult sets the span's status
		}
	}
}

// reportResult writes one log line per delivery once its retries are over, processed
// (info), poisoned (error) or nacked for redelivery (warn), with the ids that lead to the
// order, its request and its trace (trace_id comes from the context), and marks the
// consumer span failed unless the message was processed.
func reportResult(logger *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context() // Retry resets the message's context to this one
			out, err := h(msg)
			attrs := []any{"message_id", messageID(msg), "type", eventType(msg),
				"order_id", msg.Metadata.Get(events.MetaSubject),
				"correlation_id", middleware.MessageCorrelationID(msg), "attempts", msg.Metadata.Get(MetaAttempts)}
			if err == nil {
				logger.InfoContext(ctx, "message processed", attrs...)
				return out, nil
			}
			span := trace.SpanFromContext(ctx)
			span.RecordError(err)
			if shouldPoison(err) {
				span.SetStatus(codes.Error, "poisoned")
				logger.ErrorContext(ctx, "message poisoned", append(attrs, "err", err)...)
			} else {
				span.SetStatus(codes.Error, "nacked for redelivery")
				logger.WarnContext(ctx, "message nacked; will be redelivered", append(attrs, "err", err)...)
			}
			return out, err
		}
	}
}

// attempts numbers each attempt, remembers the first failure, and observes latency.
func (m *metrics) attempts(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		n, _ := strconv.Atoi(msg.Metadata.Get(MetaAttempts))
		msg.Metadata.Set(MetaAttempts, strconv.Itoa(n+1))
		typ := eventType(msg)
		if n > 0 {
			m.retries.WithLabelValues(typ).Inc()
		}
		start := time.Now()
		out, err := h(msg)
		m.latency.WithLabelValues(typ).Observe(time.Since(start).Seconds())
		if err != nil && msg.Metadata.Get(MetaFirstFailedAt) == "" {
			msg.Metadata.Set(MetaFirstFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
		}
		return out, err
	}
}

// outcome counts the messages that leave the chain handled (including those set aside
// in the poison queue) or nacked for redelivery.
func (m *metrics) outcome(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		result := "handled"
		if err != nil {
			result = "nacked"
		}
		m.messages.WithLabelValues(eventType(msg), result).Inc()
		return out, err
	}
}

// eventType is the message's event type for metric labels, bounded to the known ones.
func eventType(msg *message.Message) string {
	switch t := msg.Metadata.Get(events.MetaType); t {
	case events.TypeOrderCreated, events.TypePaymentSucceeded, events.TypePaymentFailed:
		return t
	default:
		return "unknown"
	}
}

// countingPublisher counts what is published through it (the poison queue).
type countingPublisher struct {
	message.Publisher
	m *metrics
}

func (p countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	err := p.Publisher.Publish(topic, msgs...)
	if err == nil {
		for _, msg := range msgs {
			p.m.poisoned.WithLabelValues(eventType(msg)).Inc()
		}
	}
	return err
}
