package keyorder

import (
	"context"
	"time"

	"github.com/IBM/sarama"
)

// Record is where a message came from in Kafka, and how often this subscriber has
// delivered it.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Timestamp time.Time
	// Delivery counts the deliveries of the record since this subscriber read it: 1,
	// then one more after each nack. A record read again (after a rebalance or a
	// restart) starts from 1.
	Delivery int
}

type recordKey struct{}

func withRecord(ctx context.Context, m *sarama.ConsumerMessage, delivery int) context.Context {
	return context.WithValue(ctx, recordKey{}, Record{Topic: m.Topic, Partition: m.Partition,
		Offset: m.Offset, Key: m.Key, Timestamp: m.Timestamp, Delivery: delivery})
}

// RecordFromContext returns the Kafka record a message's context was made for (a
// message the Subscriber delivered, or a context derived from its context).
func RecordFromContext(ctx context.Context) (Record, bool) {
	r, ok := ctx.Value(recordKey{}).(Record)
	return r, ok
}
