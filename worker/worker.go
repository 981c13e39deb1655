// Package worker consumes order events from Kafka with a Watermill router, charges each
// new order through the payment provider, and records the outcome (status change,
// inbox entry and outcome event) in one Postgres transaction. Many orders of a
// partition are in flight at once (package keyorder); one order's events are handled
// one after another.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/keyorder"
	"github.com/orderpipe/orderpipe/orders"
)

// Config tunes the worker.
type Config struct {
	// Brokers are the Kafka bootstrap servers.
	Brokers []string
	// TopicPrefix is put before every topic name (KAFKA_TOPIC_PREFIX).
	TopicPrefix string
	// ConsumerGroup is the Kafka consumer group the workers share. Default "worker".
	ConsumerGroup string
	// PaymentURL is the payment provider's base URL. Default http://localhost:8081.
	PaymentURL string
	// PaymentTimeout bounds one payment call. Default 5s.
	PaymentTimeout time.Duration
	// MaxRetries is how often a transient failure is retried before the message is
	// poisoned; 0 means never (cmd/worker's default is 5).
	MaxRetries int
	// RetryInterval is the first backoff; it doubles, with jitter, up to RetryMaxInterval.
	// Defaults 200ms and 5s.
	RetryInterval    time.Duration
	RetryMaxInterval time.Duration
	// HandlerTimeout bounds one attempt at a message. Default 15s.
	HandlerTimeout time.Duration
	// UnavailableBudget ends one message's unavailability: a message that has failed as
	// unavailable without a break for this long, while other messages were processed
	// meanwhile, is poisoned with the reason (unavailableBudget). An outage, which no
	// message gets through, holds messages however long it lasts. Default 10m.
	UnavailableBudget time.Duration
	// InboxRetention is how long inbox entries (processed_messages) are kept: longer
	// than a message can be redelivered, i.e. the orders topic's retention. Default 8
	// days (Kafka's default retention is 7).
	InboxRetention time.Duration
	// InboxPruneInterval is how often entries past InboxRetention are deleted. Default
	// 10m.
	InboxPruneInterval time.Duration
	// PendingAgeInterval is how often the age of the oldest PENDING order
	// (worker_oldest_pending_seconds) is measured. Default 15s.
	PendingAgeInterval time.Duration
	// PaymentProbeInterval is how often one payment is let through to the provider while
	// it refuses every request (PaymentClient.ProbeInterval). Default 5s.
	PaymentProbeInterval time.Duration
	// MaxInFlight is each partition's window (keyorder.Config.MaxInFlight): how many of
	// its messages may be read and not yet committed. Orders are handled concurrently
	// within it, one order's events one after another. Default 256.
	MaxInFlight int
	// MaxBufferedBytes bounds the bytes of the messages read and not yet handled across
	// all partitions. Default 64 MiB.
	MaxBufferedBytes int64
	// PaymentIdleConns is how many connections to the payment provider are kept open
	// for reuse between payments (Go's default keeps 2, so with many payments in flight
	// most would open and close a connection each). The number of open connections is
	// not capped: a cap would queue payments against PaymentTimeout. Default 256.
	PaymentIdleConns int
	// Cache, when set, has each changed order's entry invalidated after commit.
	Cache *orders.Cache
	// Registerer receives the worker's, Watermill's router and the keyorder
	// subscriber's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// TracerProvider starts the consumer span of each delivery and the client span of
	// each payment call; nil means tracing is off (trace context is still passed on).
	TracerProvider trace.TracerProvider
	// CrashAfterCharge is a failpoint for fault tests (WORKER_FAILPOINT_CRASH_AFTER_CHARGE):
	// the probability, 0 to 1, that the process kills itself (SIGKILL) after a payment
	// was charged and before its outcome commits, the worst moment to die. 0 in production.
	CrashAfterCharge float64
}

func (c *Config) setDefaults() {
	if c.ConsumerGroup == "" {
		c.ConsumerGroup = "worker"
	}
	if c.PaymentURL == "" {
		c.PaymentURL = "http://localhost:8081"
	}
	if c.PaymentTimeout == 0 {
		c.PaymentTimeout = 5 * time.Second
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 200 * time.Millisecond
	}
	if c.RetryMaxInterval == 0 {
		c.RetryMaxInterval = 5 * time.Second
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = 15 * time.Second
	}
	if c.UnavailableBudget == 0 {
		c.UnavailableBudget = 10 * time.Minute
	}
	if c.PaymentProbeInterval == 0 {
		c.PaymentProbeInterval = 5 * time.Second
	}
	if c.InboxRetention == 0 {
		c.InboxRetention = 8 * 24 * time.Hour
	}
	if c.InboxPruneInterval == 0 {
		c.InboxPruneInterval = 10 * time.Minute
	}
	if c.PendingAgeInterval == 0 {
		c.PendingAgeInterval = 15 * time.Second
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 256
	}
	if c.MaxBufferedBytes == 0 {
		c.MaxBufferedBytes = 64 << 20
	}
	if c.PaymentIdleConns == 0 {
		c.PaymentIdleConns = 256
	}
}

// Validate reports a configuration the worker cannot run with.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("no Kafka brokers")
	}
	if c.UnavailableBudget < 0 || c.PaymentProbeInterval < 0 || c.InboxRetention < 0 || c.InboxPruneInterval < 0 || c.PendingAgeInterval < 0 {
		return errors.New("durations must not be negative")
	}
	return nil
}

// handlerName is the inbox's name for the payment handler.
const handlerName = "payment"

// Worker processes order events.
type Worker struct {
	metrics  *metrics
	router   *message.Router
	store    *orders.Store
	cache    *orders.Cache
	payments *PaymentClient
	logger   *slog.Logger
	crash    float64 // Config.CrashAfterCharge
	inbox    struct{ retention, interval time.Duration }
	ageEvery time.Duration // Config.PendingAgeInterval
}

// New returns a worker writing through store.
func New(store *orders.Store, cfg Config, logger *slog.Logger) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	wlog := watermill.NewSlogLogger(logger)
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = cfg.PaymentIdleConns
	transport.MaxIdleConns = cfg.PaymentIdleConns
	w := &Worker{
		metrics: m,
		store:   store,
		cache:   cfg.Cache,
		payments: &PaymentClient{BaseURL: cfg.PaymentURL, HTTP: &http.Client{
			Timeout: cfg.PaymentTimeout, Transport: tracing.Transport(cfg.TracerProvider, transport),
		}, ProbeInterval: cfg.PaymentProbeInterval, OnRefusing: func(refusal error) {
			if refusal != nil {
				m.providerRefusing.Set(1)
				logger.Error("payment provider refuses every request: payments paused, probing; no order is poisoned for it",
					"payment_url", cfg.PaymentURL, "probe_interval", cfg.PaymentProbeInterval, "err", refusal)
				return
			}
			m.providerRefusing.Set(0)
			logger.Info("payment provider accepts requests again: payments resumed", "payment_url", cfg.PaymentURL)
		}},
		logger: logger,
		crash:  cfg.CrashAfterCharge,
	}
	w.inbox.retention, w.inbox.interval, w.ageEvery = cfg.InboxRetention, cfg.InboxPruneInterval, cfg.PendingAgeInterval

	// Orders are handled concurrently within a partition, each order's events in order
	// (the record key is the order id), offsets committed only below the oldest unfinished
	// one: a payment provider's latency no longer caps the pipeline at partitions ÷ latency.
	sub, err := keyorder.NewSubscriber(keyorder.Config{
		Brokers:          cfg.Brokers,
		ConsumerGroup:    cfg.ConsumerGroup,
		Sarama:           kafkaconf.Consumer("orderpipe-worker"),
		Unmarshaler:      kafkaconf.RecordKeyMarshaler, // a poisoned copy keeps the record's key
		MaxInFlight:      cfg.MaxInFlight,
		MaxBufferedBytes: cfg.MaxBufferedBytes,
		// A nacked message (a dependency is down) is redelivered after this pause.
		NackResendSleep: time.Second,
		Registerer:      cfg.Registerer,
		Logger:          wlog,
	})
	if err != nil {
		return nil, fmt.Errorf("kafka subscriber: %w", err)
	}
	poisonPub, err := kafkaconf.NewPublisher(cfg.Brokers, "orderpipe-worker", kafkaconf.RecordKeyMarshaler, wlog)
	if err != nil {
		return nil, err
	}
	poisonOut := sizeBoundPublisher{Publisher: poisonPub, marshaler: kafkaconf.RecordKeyMarshaler, maxBytes: kafkaconf.MaxMessageBytes}
	poison, err := middleware.PoisonQueueWithFilter(countingPublisher{poisonOut, m},
		cfg.TopicPrefix+events.TopicOrdersPoison, shouldPoison)
	if err != nil {
		return nil, err
	}

	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, wlog)
	if err != nil {
		return nil, err
	}
	router.AddMiddleware(middlewares(cfg, poison, m, logger)...)
	if cfg.Registerer != nil {
		wmetrics.NewPrometheusMetricsBuilder(cfg.Registerer, "", "").AddPrometheusRouterMetrics(router)
	}
	router.AddConsumerHandler(handlerName, cfg.TopicPrefix+events.TopicOrders, sub, w.handle)
	w.router = router
	return w, nil
}

// Run processes messages, deletes inbox entries past their retention and measures the
// oldest PENDING order's age, until ctx is done.
func (w *Worker) Run(ctx context.Context) error {
	maintainCtx, stop := context.WithCancel(ctx)
	maintained := make(chan struct{})
	go func() {
		defer close(maintained)
		w.maintain(maintainCtx)
	}()
	err := w.router.Run(ctx)
	stop()
	<-maintained
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// maintain deletes inbox entries past their retention and measures the oldest PENDING
// order's age, each on its own interval, until ctx is done. Failures are logged: the
// next round tries again.
func (w *Worker) maintain(ctx context.Context) {
	prune := time.NewTicker(w.inbox.interval)
	defer prune.Stop()
	age := time.NewTicker(w.ageEvery)
	defer age.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-prune.C:
			w.pruneInbox(ctx)
		case <-age.C:
			oldest, err := w.store.OldestPending(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				w.logger.Warn("measure the oldest pending order", "err", err)
			case err == nil && oldest.IsZero():
				w.metrics.oldestPending.Set(0)
			case err == nil:
				w.metrics.oldestPending.Set(max(time.Since(oldest).Seconds(), 0))
			}
		}
	}
}

// pruneInbox deletes inbox entries older than the retention, a batch at a time.
func (w *Worker) pruneInbox(ctx context.Context) {
	const batch = 5000
	cutoff := time.Now().Add(-w.inbox.retention)
	for {
		n, err := w.store.DeleteProcessedMessages(ctx, cutoff, batch)
		if err != nil {
			if ctx.Err() == nil {
				w.logger.Warn("prune inbox", "err", err)
			}
			return
		}
		w.metrics.inboxPruned.Add(float64(n))
		if n < batch {
			return
		}
	}
}

// Running is closed once the router consumes.
func (w *Worker) Running() chan struct{} { return w.router.Running() }

// Consuming reports, for /readyz, an error unless the router is running its handler.
func (w *Worker) Consuming(context.Context) error {
	if !w.router.IsRunning() || w.router.IsClosed() {
		return errors.New("router not running")
	}
	return nil
}

func (w *Worker) handle(msg *message.Message) error {
	e, err := events.Decode(msg)
	if err != nil {
		return permanent(err)
	}
	created, ok := e.(events.OrderCreated)
	if !ok {
		return permanent(fmt.Errorf("%w: %s is not handled on this topic", events.ErrUnknownType, e.Type()))
	}
	id := messageID(msg)
	if strings.TrimSpace(id) == "" || len(id) > maxMessageIDLen {
		// Nothing to deduplicate by: a redelivery could not be told from a new message.
		return permanent(fmt.Errorf("message without a usable id (%s or Watermill uuid, 1 to %d bytes): %.40q",
			events.MetaID, maxMessageIDLen, id))
	}
	// The outcome event carries the correlation id of the request that created the order.
	ctx := events.WithCorrelationID(msg.Context(), middleware.MessageCorrelationID(msg))
	return w.pay(ctx, id, created)
}

// maxMessageIDLen bounds the message ids the inbox records (ours are 36-byte UUIDs).
const maxMessageIDLen = 200

// pay charges an order and records the outcome. Every step is safe to repeat: the
// payment is idempotent by the order's payment key, and the inbox entry (keyed by order
// and message), status change and outcome event commit together or not at all.
func (w *Worker) pay(ctx context.Context, msgID string, e events.OrderCreated) error {
	o, err := w.store.Get(ctx, e.ID)
	if errors.Is(err, orders.ErrNotFound) {
		return permanent(err)
	}
	if err != nil {
		return err
	}
	if o.Status != orders.StatusPending {
		// Already decided: a redelivery or a replay. Invalidate again in case the first
		// invalidation was lost (Redis down then); it is idempotent.
		w.invalidate(ctx, o)
		return nil
	}
	charge, err := w.payments.Charge(ctx, o.PaymentKey, o.ID, o.Amount.Minor, o.Amount.Currency)
	if err != nil {
		return err
	}
	if w.crash > 0 && rand.Float64() < w.crash {
		w.logger.ErrorContext(ctx, "failpoint crash_after_charge: killing the process", "order_id", o.ID, "payment_id", charge.ID)
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is delivered asynchronously; commit nothing meanwhile
	}
	changed, _, err := w.store.RecordOutcome(ctx, handlerName, msgID, o.ID,
		orders.Outcome{PaymentID: charge.ID, Approved: charge.Approved, Reason: charge.Reason})
	if errors.Is(err, orders.ErrNotPending) {
		return nil // another delivery decided it first; its outcome stands
	}
	if err != nil {
		return err
	}
	if changed.ID != 0 {
		w.invalidate(ctx, changed)
		if charge.Approved {
			w.metrics.payments.WithLabelValues("approved").Inc()
		} else {
			w.metrics.payments.WithLabelValues("declined").Inc()
		}
	}
	w.logger.InfoContext(ctx, "payment recorded", "order_id", o.ID, "approved", charge.Approved,
		"payment_id", charge.ID, "message_id", msgID, "correlation_id", events.CorrelationID(ctx))
	return nil
}

// invalidate drops cached versions of o older than o. A failure is logged, not
// returned: Redis is optional, and a PENDING entry expires within seconds anyway.
func (w *Worker) invalidate(ctx context.Context, o orders.Order) {
	if w.cache == nil {
		return
	}
	if err := w.cache.Invalidate(ctx, o.ID, o.Version); err != nil {
		w.logger.WarnContext(ctx, "cache invalidation failed", "order_id", o.ID, "err", err)
	}
}

// messageID is the event id: the CloudEvents id, stable across relay resends.
func messageID(msg *message.Message) string {
	if id := msg.Metadata.Get(events.MetaID); id != "" {
		return id
	}
	return msg.UUID
}
