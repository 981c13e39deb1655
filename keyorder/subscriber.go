// Package keyorder is a Watermill subscriber for Kafka that processes the records of one
// partition concurrently while keeping the order that matters: records with the same
// key are handled one after another, in offset order, and a partition's committed
// offset never passes a record whose handler has not finished. It is the design of
// Confluent's parallel-consumer (key-level concurrency, ordered offset commits) on
// Sarama's consumer group, for Watermill's router.
//
// Each claimed partition has a window: the records read and not yet committed, at most
// Config.MaxInFlight of them. A record goes to the handler (the router's output channel)
// as soon as no older record of its key is unfinished; records without a key go one at
// a time. When a handler acks, the next record of its key goes, and the committed
// offset moves to the first unfinished record. When the window is full, because one
// slow key holds the oldest offset, the partition stops reading (it pauses) until the
// slow record finishes; Config.MaxBufferedBytes bounds the bytes held across all
// partitions the same way. A nacked message is sent again after
// Config.NackResendSleep, holding its key (not the partition).
//
// When a partition is revoked (a rebalance) or the subscriber stops, the contexts of
// the partition's messages are cancelled, the subscriber waits up to
// Config.ReleaseTimeout for their handlers to ack or nack, commits what finished, and
// lets the partition go. A crash therefore redelivers at most the window (plus what
// finished since Sarama's last commit), and skips nothing. A handler that ignores its
// context past ReleaseTimeout may still be running when the partition's next owner is
// given the same record: delivery is at least once, and handlers must be idempotent.
//
// Only eager rebalancing (Sarama's range, round-robin or sticky strategies) is
// supported: a cooperative revocation is signalled only by closing the claim's channel,
// which a paused partition does not read.
package keyorder

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Subscriber.
type Config struct {
	// Brokers are the Kafka bootstrap servers.
	Brokers []string
	// ConsumerGroup is the group the subscriber's members join. Required: the window
	// needs committed offsets.
	ConsumerGroup string
	// Sarama is the consumer configuration; nil means sarama.NewConfig() with the
	// oldest offset for a new group. Auto-commit must stay on: the subscriber marks
	// offsets, Sarama commits them every Consumer.Offsets.AutoCommit.Interval and when
	// a partition is let go.
	Sarama *sarama.Config
	// Unmarshaler turns records into messages. Default kafka.DefaultMarshaler.
	Unmarshaler kafka.Unmarshaler
	// MaxInFlight is the window: how many records of one partition may be read and not
	// yet committed. Default 256. 1 processes a partition one record at a time.
	MaxInFlight int
	// MaxBufferedBytes bounds the bytes (key, value and headers) of the records read
	// and not yet finished across all partitions of the subscriber; the last record
	// admitted may overshoot it (by at most one record per partition), so that a large
	// record is not starved by small ones. Default 64 MiB.
	MaxBufferedBytes int64
	// NackResendSleep is how long a nacked message waits before it is sent again.
	// Default 1s.
	NackResendSleep time.Duration
	// ReleaseTimeout is how long, once a partition is revoked, the handlers in flight
	// have to ack or nack after their contexts were cancelled; past it the partition is
	// let go without them (their records are redelivered to the next owner). Default 10s.
	ReleaseTimeout time.Duration
	// ReconnectBackoff is the pause before joining the group again after an error.
	// Default 1s.
	ReconnectBackoff time.Duration
	// SlowPauseLog is how long a partition stays paused before a warning names the record
	// that holds it. Default 5s.
	SlowPauseLog time.Duration
	// Registerer receives the subscriber's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger defaults to watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *Config) setDefaults() {
	if c.Sarama == nil {
		c.Sarama = sarama.NewConfig()
		c.Sarama.Consumer.Offsets.Initial = sarama.OffsetOldest
	}
	if c.Unmarshaler == nil {
		c.Unmarshaler = kafka.DefaultMarshaler{}
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 256
	}
	if c.MaxBufferedBytes == 0 {
		c.MaxBufferedBytes = 64 << 20
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = time.Second
	}
	if c.ReleaseTimeout == 0 {
		c.ReleaseTimeout = 10 * time.Second
	}
	if c.ReconnectBackoff == 0 {
		c.ReconnectBackoff = time.Second
	}
	if c.SlowPauseLog == 0 {
		c.SlowPauseLog = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports a configuration the subscriber cannot run with.
func (c Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("keyorder: no brokers")
	case c.ConsumerGroup == "":
		return errors.New("keyorder: no consumer group")
	case c.MaxInFlight < 0:
		return fmt.Errorf("keyorder: MaxInFlight %d is negative", c.MaxInFlight)
	case c.MaxBufferedBytes < 0:
		return fmt.Errorf("keyorder: MaxBufferedBytes %d is negative", c.MaxBufferedBytes)
	case c.NackResendSleep < 0, c.ReleaseTimeout < 0, c.ReconnectBackoff < 0, c.SlowPauseLog < 0:
		return errors.New("keyorder: a negative duration")
	}
	if c.Sarama == nil {
		return nil
	}
	if !c.Sarama.Consumer.Offsets.AutoCommit.Enable {
		return errors.New("keyorder: Sarama's Consumer.Offsets.AutoCommit.Enable must be on")
	}
	for _, s := range c.Sarama.Consumer.Group.Rebalance.GroupStrategies {
		// A cooperative revocation only closes the claim's channel, which a paused
		// partition does not read: it would keep its handlers until the group gave up.
		if s.Name() == sarama.CooperativeStickyBalanceStrategyName {
			return errors.New("keyorder: cooperative rebalancing is not supported; use an eager strategy")
		}
	}
	if rt := c.ReleaseTimeout; rt >= c.Sarama.Consumer.Group.Rebalance.Timeout {
		return fmt.Errorf("keyorder: ReleaseTimeout %s must be shorter than Sarama's Rebalance.Timeout %s",
			rt, c.Sarama.Consumer.Group.Rebalance.Timeout)
	}
	return nil
}

// Subscriber is a message.Subscriber. Each Subscribe call is one member of the consumer
// group, consuming until its context is done or the subscriber is closed.
type Subscriber struct {
	cfg     Config
	budget  *budget
	metrics *metrics

	mu      sync.Mutex // orders Subscribe's start against Close
	closed  bool
	closing chan struct{}
	running sync.WaitGroup // one per Subscribe
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a subscriber; it connects when Subscribe is called.
func NewSubscriber(cfg Config) (*Subscriber, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := newBudget(cfg.MaxBufferedBytes)
	m, err := newMetrics(cfg.Registerer, b)
	if err != nil {
		return nil, fmt.Errorf("keyorder metrics: %w", err)
	}
	return &Subscriber{cfg: cfg, budget: b, metrics: m, closing: make(chan struct{})}, nil
}

// Subscribe joins the consumer group for topic and returns the channel its messages come
// on. The channel is closed once ctx is done or the subscriber closed, after every
// partition was let go.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("keyorder: subscriber closed")
	}
	group, err := sarama.NewConsumerGroup(s.cfg.Brokers, s.cfg.ConsumerGroup, s.cfg.Sarama)
	if err != nil {
		return nil, fmt.Errorf("keyorder: join group %s: %w", s.cfg.ConsumerGroup, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan *message.Message)
	fields := watermill.LogFields{"topic": topic, "consumer_group": s.cfg.ConsumerGroup}
	h := &groupHandler{s: s, out: out, fields: fields}
	s.running.Add(1)
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	go func() {
		defer s.running.Done()
		defer close(out)
		defer cancel()
		s.consume(ctx, group, topic, h)
	}()
	return out, nil
}

// consume runs the group member until ctx is done, joining again after errors.
func (s *Subscriber) consume(ctx context.Context, group sarama.ConsumerGroup, topic string, h *groupHandler) {
	errs := make(chan struct{})
	go func() { // with Consumer.Return.Errors on, errors not read are dropped unlogged
		defer close(errs)
		for err := range group.Errors() {
			s.cfg.Logger.Error("kafka consumer error", err, h.fields)
		}
	}()
	defer func() {
		if err := group.Close(); err != nil {
			s.cfg.Logger.Error("close consumer group", err, h.fields)
		}
		<-errs
	}()
	for ctx.Err() == nil {
		// Consume returns at every rebalance; it is called again for the next session.
		if err := group.Consume(ctx, []string{topic}, h); err != nil {
			if errors.Is(err, sarama.ErrClosedConsumerGroup) || ctx.Err() != nil {
				return
			}
			s.cfg.Logger.Error("kafka consume; joining again", err, h.fields)
			select {
			case <-ctx.Done():
			case <-time.After(s.cfg.ReconnectBackoff):
			}
		}
	}
}

// Close stops every Subscribe and waits until their partitions were let go.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.running.Wait()
	return nil
}

// groupHandler is one group member's sarama.ConsumerGroupHandler.
type groupHandler struct {
	s      *Subscriber
	out    chan<- *message.Message
	fields watermill.LogFields
}

func (h *groupHandler) Setup(sess sarama.ConsumerGroupSession) error {
	h.s.cfg.Logger.Info("partitions assigned", h.fields.Add(watermill.LogFields{
		"claims": fmt.Sprint(sess.Claims()), "generation": sess.GenerationID()}))
	return nil
}

func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	p := &partition{
		s: h.s, sess: sess, claim: claim, out: h.out,
		fields: h.fields.Add(watermill.LogFields{"partition": claim.Partition()}),
		window: newWindow(), gauges: h.s.metrics.partition(claim.Topic(), claim.Partition()),
		finished: make(chan delivery, h.s.cfg.MaxInFlight),
	}
	p.run()
	return nil
}
