package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// poisonRecord is one record of the poison topic.
type poisonRecord struct {
	pos     poisonPos
	time    time.Time // the Kafka timestamp: when the worker poisoned it
	key     []byte    // nil when the record has no key
	value   []byte
	headers []poisonHeader // in record order
}

// poisonHeader is a Kafka record header.
type poisonHeader struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func newPoisonRecord(m *sarama.ConsumerMessage) poisonRecord {
	r := poisonRecord{pos: poisonPos{m.Partition, m.Offset}, time: m.Timestamp, key: m.Key, value: m.Value}
	for _, h := range m.Headers {
		if h != nil {
			r.headers = append(r.headers, poisonHeader{string(h.Key), string(h.Value)})
		}
	}
	return r
}

// header returns the value of a header; of a repeated one the last, as Watermill's
// unmarshaler (and so the worker) sees it.
func (r poisonRecord) header(key string) string {
	v := ""
	for _, h := range r.headers {
		if h.Key == key {
			v = h.Value
		}
	}
	return v
}

// orderID is the event's subject, else the record key.
func (r poisonRecord) orderID() string {
	if s := r.header(events.MetaSubject); s != "" {
		return s
	}
	return string(r.key)
}

func (r poisonRecord) replayCount() int {
	n, _ := strconv.Atoi(r.header(metaReplayCount))
	return n
}

// poisonConnect returns a client of the brokers with the one Sarama configuration,
// adjusted for an operator's tool: it never creates a topic by reading from or writing to
// it, gives up within seconds when no broker answers, and does not linger in a fetch at
// the end of a partition (closing a partition consumer waits for its fetch in flight).
func poisonConnect(cfg poisonConfig) (sarama.Client, error) {
	sc := kafkaconf.Producer("orderctl")
	sc.Metadata.AllowAutoTopicCreation = false
	sc.Metadata.Retry.Max = 2
	sc.Metadata.Retry.Backoff = 250 * time.Millisecond
	sc.Consumer.Return.Errors = true
	sc.Consumer.MaxWaitTime = 50 * time.Millisecond
	client, err := sarama.NewClient(cfg.brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("kafka at %s is not reachable: %w", strings.Join(cfg.brokers, ","), err)
	}
	return client, nil
}

// poisonKafka is a connection of `orderctl poison`: the client, and the seam through which
// tests reach the partition consumers its reads open.
type poisonKafka struct {
	sarama.Client
	// wrap, when set, wraps every partition consumer a read opens (a test's stalling
	// fetch); nil in production.
	wrap func(sarama.PartitionConsumer) sarama.PartitionConsumer
	// stall is how long a read waits for a record the broker holds below the end.
	stall time.Duration
}

// connect is poisonConnect with the command's seams.
func (c *poisonCmd) connect(cfg poisonConfig) (poisonKafka, error) {
	client, err := poisonConnect(cfg)
	if err != nil {
		return poisonKafka{}, err
	}
	k := poisonKafka{Client: client, wrap: c.wrapPartition, stall: c.stallTimeout}
	if k.stall == 0 {
		k.stall = poisonStallTimeout
	}
	return k, nil
}

// errPoisonNoTopic: the topic does not exist (or its name is not a valid topic name).
var errPoisonNoTopic = errors.New("topic does not exist")

func poisonPartitions(client sarama.Client, topic string) ([]int32, error) {
	ps, err := client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) || errors.Is(err, sarama.ErrInvalidTopic) || (err == nil && len(ps) == 0) {
		return nil, fmt.Errorf("%s: %w", topic, errPoisonNoTopic)
	}
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	slices.Sort(ps)
	return ps, nil
}

// poisonOffsets returns, per partition, the offset of the oldest record still held
// (sarama.OffsetOldest) or the high-water mark, the offset the next record will get
// (sarama.OffsetNewest).
func poisonOffsets(client sarama.Client, topic string, parts []int32, which int64) (map[int32]int64, error) {
	out := make(map[int32]int64, len(parts))
	for _, p := range parts {
		o, err := client.GetOffset(topic, p, which)
		if err != nil {
			return nil, fmt.Errorf("offsets of %s/%d: %w", topic, p, err)
		}
		out[p] = o
	}
	return out, nil
}

// readPoison returns every record of the poison topic from the oldest to the high-water
// marks at the time of the call, in partition and offset order. It reads without a
// consumer group, so it commits nothing.
func readPoison(ctx context.Context, client poisonKafka, topic string) ([]poisonRecord, error) {
	parts, err := poisonPartitions(client, topic)
	if errors.Is(err, errPoisonNoTopic) {
		return nil, fmt.Errorf("poison topic %s does not exist: nothing was poisoned yet, or KAFKA_TOPIC_PREFIX is wrong (%w)", topic, errPoisonNoTopic)
	}
	if err != nil {
		return nil, err
	}
	from, err := poisonOffsets(client, topic, parts, sarama.OffsetOldest)
	if err != nil {
		return nil, err
	}
	to, err := poisonOffsets(client, topic, parts, sarama.OffsetNewest)
	if err != nil {
		return nil, err
	}
	var recs []poisonRecord
	err = poisonScan(ctx, client, topic, from, to, func(m *sarama.ConsumerMessage) bool {
		recs = append(recs, newPoisonRecord(m))
		return true
	})
	return recs, err
}

// readPoisonAt returns the record at pos of the poison topic.
func readPoisonAt(ctx context.Context, client poisonKafka, topic string, pos poisonPos) (poisonRecord, error) {
	parts, err := poisonPartitions(client, topic)
	if errors.Is(err, errPoisonNoTopic) {
		return poisonRecord{}, fmt.Errorf("poison topic %s does not exist: nothing was poisoned yet, or KAFKA_TOPIC_PREFIX is wrong", topic)
	}
	if err != nil {
		return poisonRecord{}, err
	}
	if !slices.Contains(parts, pos.partition) {
		return poisonRecord{}, fmt.Errorf("no message at %s: %s has partitions 0 to %d", pos, topic, len(parts)-1)
	}
	p := []int32{pos.partition}
	oldest, err := poisonOffsets(client, topic, p, sarama.OffsetOldest)
	if err != nil {
		return poisonRecord{}, err
	}
	newest, err := poisonOffsets(client, topic, p, sarama.OffsetNewest)
	if err != nil {
		return poisonRecord{}, err
	}
	first, next := oldest[pos.partition], newest[pos.partition]
	switch {
	case first == next:
		return poisonRecord{}, fmt.Errorf("no message at %s: partition %d of %s is empty", pos, pos.partition, topic)
	case pos.offset < first || pos.offset >= next:
		return poisonRecord{}, fmt.Errorf("no message at %s: partition %d of %s holds offsets %d to %d", pos, pos.partition, topic, first, next-1)
	}
	var found *poisonRecord
	err = poisonScan(ctx, client, topic, map[int32]int64{pos.partition: pos.offset}, map[int32]int64{pos.partition: pos.offset + 1},
		func(m *sarama.ConsumerMessage) bool {
			r := newPoisonRecord(m)
			found = &r
			return false
		})
	if err != nil {
		return poisonRecord{}, err
	}
	if found == nil {
		return poisonRecord{}, fmt.Errorf("no message at %s: the offset holds no record (compacted or a transaction marker)", pos)
	}
	return *found, nil
}

// poisonScan calls fn for the records of topic from from[p] up to, not including, to[p], one
// partition after the other, until fn returns false.
func poisonScan(ctx context.Context, client poisonKafka, topic string, from, to map[int32]int64,
	fn func(*sarama.ConsumerMessage) bool) error {
	consumer, err := sarama.NewConsumerFromClient(client.Client)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	defer consumer.Close()
	parts := make([]int32, 0, len(to))
	for p := range to {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	for _, p := range parts {
		more, err := poisonScanPartition(ctx, client, consumer, topic, p, from[p], to[p], fn)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// poisonIdleCheck is how often a read whose partition consumer delivers nothing asks the
// broker whether the offsets left below the end hold any record.
const poisonIdleCheck = time.Second

// poisonStallTimeout is how long a read waits for a record the broker holds below the
// end before it gives up with an error (poisonKafka.stall, unless a test sets it).
const poisonStallTimeout = 30 * time.Second

// poisonScanPartition calls fn for the records of partition p from offset from up to the
// end to, taken when the command started. It ends when a record at or past to-1 was
// delivered, or when the broker shows that the offsets left below to hold no record
// (transaction markers, records removed by compaction): never because a fetch paused.
// Sarama does not expose its consumer's fetch position, and its high-water mark is
// set before the first fetch, so neither can tell that the end was reached.
func poisonScanPartition(ctx context.Context, client poisonKafka, consumer sarama.Consumer, topic string, p int32, from, to int64,
	fn func(*sarama.ConsumerMessage) bool) (bool, error) {
	if from >= to {
		return true, nil
	}
	pc, err := consumer.ConsumePartition(topic, p, from)
	if err != nil {
		return false, fmt.Errorf("read %s/%d from offset %d: %w", topic, p, from, err)
	}
	if client.wrap != nil {
		pc = client.wrap(pc)
	}
	defer pc.Close()
	tick := time.NewTicker(poisonIdleCheck)
	defer tick.Stop()
	next := from // the offset after the last record delivered
	progressed := time.Now()
	for {
		select {
		case m, ok := <-pc.Messages():
			if !ok {
				return false, fmt.Errorf("read %s/%d: the consumer closed at offset %d, before the end %d", topic, p, next, to)
			}
			if m.Offset >= to {
				return true, nil
			}
			next, progressed = m.Offset+1, time.Now()
			if !fn(m) {
				return false, nil
			}
			if next >= to {
				return true, nil
			}
		case err := <-pc.Errors():
			return false, fmt.Errorf("read %s/%d at offset %d (end %d): %w", topic, p, next, to, err)
		case <-tick.C:
			more, probeErr := poisonHasRecords(client.Client, topic, p, next, to)
			if probeErr == nil && !more {
				return true, nil
			}
			if time.Since(progressed) >= client.stall {
				why := "the broker holds records below the end"
				if probeErr != nil {
					why = "asking the broker what is left failed: " + probeErr.Error()
				}
				return false, fmt.Errorf("read %s/%d: no record for %s at offset %d, before the end %d (%s); try again",
					topic, p, client.stall, next, to, why)
			}
		case <-ctx.Done():
			return false, fmt.Errorf("read %s/%d: stopped at offset %d, before the end %d: %w", topic, p, next, to, ctx.Err())
		}
	}
}

// poisonHasRecords asks the partition's leader whether offsets from to to-1 hold a record
// a consumer is given (one that is not a transaction marker). It fetches directly, so
// that it sees the batches and their offsets, which Sarama's consumer hides.
func poisonHasRecords(client sarama.Client, topic string, p int32, from, to int64) (bool, error) {
	for from < to {
		leader, err := client.Leader(topic, p)
		if err != nil {
			return false, err
		}
		req := &sarama.FetchRequest{Version: 11, MinBytes: 1, MaxWaitTime: 0, MaxBytes: 1 << 20,
			Isolation: sarama.ReadUncommitted, SessionID: 0, SessionEpoch: -1}
		req.AddBlock(topic, p, from, 1<<20, -1)
		resp, err := leader.Fetch(req)
		if err != nil {
			return false, err
		}
		block := resp.GetBlock(topic, p)
		switch {
		case block == nil:
			return false, fmt.Errorf("fetch %s/%d: no answer for the partition", topic, p)
		case !errors.Is(block.Err, sarama.ErrNoError):
			if errors.Is(block.Err, sarama.ErrNotLeaderForPartition) {
				client.RefreshMetadata(topic)
			}
			return false, fmt.Errorf("fetch %s/%d at offset %d: %w", topic, p, from, block.Err)
		}
		advanced := false
		for _, rs := range block.RecordsSet {
			b := rs.RecordBatch
			if b == nil {
				return false, fmt.Errorf("fetch %s/%d: a message set in the v0/v1 format, not supported", topic, p)
			}
			if b.LastOffset() < from {
				continue
			}
			if !b.Control {
				for _, r := range b.Records {
					if o := b.FirstOffset + r.OffsetDelta; o >= from && o < to {
						return true, nil
					}
				}
			}
			from, advanced = b.LastOffset()+1, true
		}
		if !advanced {
			// Nothing at or after from although it is below the end the broker gave: an
			// answer we cannot read as "nothing left".
			return false, fmt.Errorf("fetch %s/%d at offset %d: no batch up to the end %d", topic, p, from, to)
		}
	}
	return false, nil
}
