package keyorder

import (
	"context"
	"time"

	"github.com/IBM/sarama"
)

// Record is where a message came from in Kafka.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Timestamp time.Time
}

type recordKey struct{}

func withRecord(ctx context.Context, m *sarama.ConsumerMessage) context.Context {
	return context.WithValue(ctx, recordKey{}, Record{Topic: m.Topic, Partition: m.Partition,
		Offset: m.Offset, Key: m.Key, Timestamp: m.Timestamp})
}

// RecordFromContext returns the Kafka record a message's context was made for (a
// message the Subscriber delivered, or a context derived from its context).
func RecordFromContext(ctx context.Context) (Record, bool) {
	r, ok := ctx.Value(recordKey{}).(Record)
	return r, ok
}
