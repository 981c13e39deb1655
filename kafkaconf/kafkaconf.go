// Package kafkaconf holds the one Sarama configuration every binary uses, so that the
// producer guarantees (acks=all, idempotence, one request in flight) and the consumer's
// starting offset are set in exactly one place. Sarama's and Watermill's defaults are weak
// for an outbox: acks from the leader only, no idempotence, new groups starting at the
// newest offset (silently skipping what was published before the group existed), and a
// protocol version pinned to Kafka 1.0.
package kafkaconf

import (
	"fmt"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/orderpipe/orderpipe/events"
)

// Version is the protocol version Sarama starts from; since Sarama 1.46 it negotiates down
// to what the broker supports.
var Version = sarama.V4_0_0_0

// Brokers splits a comma-separated KAFKA_BROKERS value.
func Brokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// MaxMessageBytes is the largest record the producer sends (Sarama's
// Producer.MaxMessageBytes, its default written out): a record larger than this is
// refused before it leaves the process. The brokers' default limit (message.max.bytes,
// 1048588) is just above it.
const MaxMessageBytes = 1 << 20

// Producer returns the configuration for a synchronous, idempotent producer: every
// message is acknowledged by all in-sync replicas, and retries cannot reorder or
// duplicate within a partition.
func Producer(clientID string) *sarama.Config {
	c := base(clientID)
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 250 * time.Millisecond
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Partitioner = sarama.NewHashPartitioner
	c.Producer.MaxMessageBytes = MaxMessageBytes
	return c
}

// Consumer returns the configuration for a consumer-group member. A group that has no
// committed offset starts at the oldest message, so nothing published before the group
// first joined is skipped.
func Consumer(clientID string) *sarama.Config {
	c := base(clientID)
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Return.Errors = true
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyRoundRobin()}
	return c
}

func base(clientID string) *sarama.Config {
	c := sarama.NewConfig()
	c.Version = Version
	c.ClientID = clientID
	c.Metadata.Retry.Max = 10
	c.Metadata.Retry.Backoff = 500 * time.Millisecond
	c.Net.DialTimeout = 5 * time.Second
	return c
}

// Marshaler converts Watermill messages to Kafka records and back (watermill-kafka's
// format: metadata as headers, the message UUID in a header) with the event's subject,
// the order id, as the record key: one order's events share a partition and keep their
// order.
var Marshaler = kafka.NewWithPartitioningMarshaler(func(_ string, msg *message.Message) (string, error) {
	return msg.Metadata.Get(events.MetaSubject), nil
})

// MetaRecordKey is the metadata in which RecordKeyMarshaler keeps the key of the record a
// message was read from. It is absent when the record had no key. It never goes on the
// wire as a header: RecordKeyMarshaler writes it as the key (and an incoming header of
// that name is replaced by the record's key).
const MetaRecordKey = "kafka_record_key"

// RecordKeyMarshaler reads records as watermill-kafka's DefaultMarshaler does and also
// keeps each record's key (MetaRecordKey); it writes a message keyed by that key, and
// without a key when the record had none. The worker reads with it and poisons with it,
// so that a poisoned message keeps its record's key whatever its ce_subject says
// (a foreign producer's key, or none), and a replay restores the record as it was.
var RecordKeyMarshaler kafka.MarshalerUnmarshaler = recordKeyMarshaler{}

type recordKeyMarshaler struct{ kafka.DefaultMarshaler }

func (m recordKeyMarshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	msg, err := m.DefaultMarshaler.Unmarshal(rec)
	if err != nil {
		return nil, err
	}
	delete(msg.Metadata, MetaRecordKey)
	if rec.Key != nil {
		msg.Metadata.Set(MetaRecordKey, string(rec.Key))
	}
	return msg, nil
}

func (m recordKeyMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	pm, err := m.DefaultMarshaler.Marshal(topic, msg)
	if err != nil {
		return nil, err
	}
	headers := pm.Headers[:0]
	for _, h := range pm.Headers {
		if string(h.Key) != MetaRecordKey {
			headers = append(headers, h)
		}
	}
	pm.Headers = headers
	if key, ok := msg.Metadata[MetaRecordKey]; ok {
		pm.Key = sarama.ByteEncoder(key)
	}
	return pm, nil
}

// NewPublisher returns a Watermill publisher with the Producer configuration and the
// given marshaler (Marshaler, or RecordKeyMarshaler for messages read from Kafka). It
// sends one message at a time and waits for each ack: fine for rare messages (the poison
// queue); the relay batches instead.
func NewPublisher(brokers []string, clientID string, marshaler kafka.Marshaler, logger watermill.LoggerAdapter) (*kafka.Publisher, error) {
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               brokers,
		Marshaler:             marshaler,
		OverwriteSaramaConfig: Producer(clientID),
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("kafka publisher: %w", err)
	}
	return pub, nil
}
