// Package relay forwards the transactional outbox to Kafka: a watermill-sql subscriber
// reads committed outbox rows in commit order, and Watermill's forwarder publishes each
// to the Kafka topic named in its envelope, keyed by order id.
package relay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/outbox"
)

// Config tunes the relay.
type Config struct {
	// Brokers are the Kafka bootstrap servers.
	Brokers []string
	// PollInterval is how long the relay waits before polling an empty outbox again.
	// Default 100ms.
	PollInterval time.Duration
	// ConsumerGroup names the relay's position in the outbox (table
	// watermill_offsets_outbox). Default "relay".
	ConsumerGroup string
}

func (c *Config) setDefaults() {
	if c.PollInterval == 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.ConsumerGroup == "" {
		c.ConsumerGroup = "relay"
	}
}

// Validate reports a configuration the relay cannot run with.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("no Kafka brokers")
	}
	return nil
}

// Relay forwards outbox rows to Kafka.
type Relay struct {
	fwd *forwarder.Forwarder
	pub *kafka.Publisher
	sub *wsql.Subscriber
}

// New returns a relay reading the outbox in db.
func New(db *sql.DB, cfg Config, logger *slog.Logger) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	wlog := watermill.NewSlogLogger(logger)
	sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
		ConsumerGroup:  cfg.ConsumerGroup,
		PollInterval:   cfg.PollInterval,
		SchemaAdapter:  outbox.SchemaAdapter,
		OffsetsAdapter: outbox.OffsetsAdapter,
	}, wlog)
	if err != nil {
		return nil, fmt.Errorf("outbox subscriber: %w", err)
	}
	pub, err := NewKafkaPublisher(cfg.Brokers, "orderpipe-relay", wlog)
	if err != nil {
		return nil, err
	}
	fwd, err := forwarder.NewForwarder(sub, pub, wlog, forwarder.Config{ForwarderTopic: outbox.Topic})
	if err != nil {
		return nil, fmt.Errorf("forwarder: %w", err)
	}
	return &Relay{fwd: fwd, pub: pub, sub: sub}, nil
}

// Run forwards until ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	defer r.pub.Close()
	if err := r.fwd.Run(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("forwarder: %w", err)
	}
	return nil
}

// NewKafkaPublisher returns a synchronous, idempotent Kafka publisher whose message key
// is the event's subject (the order id), so one order's events share a partition and
// keep their order.
func NewKafkaPublisher(brokers []string, clientID string, logger watermill.LoggerAdapter) (*kafka.Publisher, error) {
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               brokers,
		Marshaler:             kafka.NewWithPartitioningMarshaler(orderKey),
		OverwriteSaramaConfig: kafkaconf.Producer(clientID),
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("kafka publisher: %w", err)
	}
	return pub, nil
}

func orderKey(_ string, msg *message.Message) (string, error) {
	return msg.Metadata.Get(events.MetaSubject), nil
}
