package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"golang.org/x/sync/errgroup"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/money"
)

// tailOptions are the tail command's flags and environment.
type tailOptions struct {
	brokers []string
	// topics are the full topic names, KAFKA_TOPIC_PREFIX included.
	topics []string
	// order, when set, is the only record key printed.
	order         string
	fromBeginning bool
	json          bool
}

// runTail follows the event topics and prints one line per event until ctx is done, for
// people watching the pipeline. It reads every partition with a plain consumer: it never
// joins a consumer group or commits an offset, so watching cannot disturb the worker.
func runTail(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseTail(args, getenv, stderr)
	if err != nil {
		return err
	}
	return o.run(ctx, stdout, stderr)
}

func parseTail(args []string, getenv func(string) string, stderr io.Writer) (tailOptions, error) {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	topic := fs.String("topic", "", "follow only this topic: "+events.TopicOrders+", "+events.TopicPayments+
		" or "+events.TopicOrdersPoison+" (default: "+events.TopicOrders+" and "+events.TopicPayments+")")
	order := fs.String("order", "", "print only the events of this order `id`")
	fromBeginning := fs.Bool("from-beginning", false, "start with the oldest events still on the topics instead of new ones")
	asJSON := fs.Bool("json", false, "print one JSON object per event: time, type, orderId, key, topic, partition, offset, data")
	if err := fs.Parse(args); err != nil {
		return tailOptions{}, usageError(err.Error())
	}
	if fs.NArg() > 0 {
		return tailOptions{}, usageError("tail takes no arguments, only flags")
	}
	topics := []string{events.TopicOrders, events.TopicPayments}
	switch *topic {
	case "":
	case events.TopicOrders, events.TopicPayments, events.TopicOrdersPoison:
		topics = []string{*topic}
	default:
		return tailOptions{}, usageError(fmt.Sprintf("--topic %q: want %s, %s or %s",
			*topic, events.TopicOrders, events.TopicPayments, events.TopicOrdersPoison))
	}
	if *order != "" {
		// Keys are the order id in canonical decimal, so compare in that form.
		if id, err := strconv.ParseInt(*order, 10, 64); err != nil || id <= 0 || strconv.FormatInt(id, 10) != *order {
			return tailOptions{}, usageError(fmt.Sprintf("--order %q: want an order id (a positive whole number)", *order))
		}
	}

	env := envconf.New(getenv)
	brokers := env.String("KAFKA_BROKERS", "localhost:9092")
	prefix := env.String("KAFKA_TOPIC_PREFIX", "")
	o := tailOptions{brokers: kafkaconf.Brokers(brokers), order: *order, fromBeginning: *fromBeginning, json: *asJSON}
	if len(o.brokers) == 0 {
		return tailOptions{}, fmt.Errorf("KAFKA_BROKERS=%q: want host:port[,host:port...]", brokers)
	}
	for _, t := range topics {
		o.topics = append(o.topics, prefix+t)
	}
	return o, nil
}

// tailConfig is the consumer configuration of tail: the shared one, made to fail fast
// when no broker answers (a person is waiting) and never to create topics (a mistyped
// KAFKA_TOPIC_PREFIX would).
func tailConfig() *sarama.Config {
	c := kafkaconf.Consumer("orderctl-tail")
	c.Net.DialTimeout = 3 * time.Second
	c.Metadata.Retry.Max = 2
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	c.Metadata.Timeout = 8 * time.Second
	c.Metadata.AllowAutoTopicCreation = false
	return c
}

// run follows the topics until ctx is done.
func (o tailOptions) run(ctx context.Context, stdout, stderr io.Writer) error {
	client, err := sarama.NewClient(o.brokers, tailConfig())
	if err != nil {
		return fmt.Errorf("connect to kafka at %s (KAFKA_BROKERS): %w", strings.Join(o.brokers, ","), err)
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	defer consumer.Close()

	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stderr, "orderctl: "+format+"\n", args...)
	}
	start := sarama.OffsetNewest
	if o.fromBeginning {
		start = sarama.OffsetOldest
	}
	records := make(chan *sarama.ConsumerMessage)
	g, gctx := errgroup.WithContext(ctx)
	for _, topic := range o.topics {
		g.Go(func() error { return tailFollow(gctx, client, consumer, topic, start, records, say) })
	}
	// One goroutine writes stdout, so lines never interleave.
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case m := <-records:
				if o.order != "" && string(m.Key) != o.order {
					continue
				}
				if err := newTailRecord(m).write(stdout, o.json); err != nil {
					return fmt.Errorf("write: %w", err)
				}
			}
		}
	})
	err = g.Wait()
	if ctx.Err() != nil {
		return nil // Ctrl-C: the normal way to stop
	}
	return err
}

// tailFollow consumes every partition of topic from start and sends the records to out
// until ctx is done. A topic that does not exist yet is waited for and then read from its
// first record, since everything on it is newer than the command.
func tailFollow(ctx context.Context, client sarama.Client, consumer sarama.Consumer, topic string, start int64,
	out chan<- *sarama.ConsumerMessage, say func(string, ...any)) error {
	partitions, err := client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) || (err == nil && len(partitions) == 0) {
		say("waiting for topic %s to be created", topic)
		start = sarama.OffsetOldest
		for errors.Is(err, sarama.ErrUnknownTopicOrPartition) || (err == nil && len(partitions) == 0) {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			partitions, err = client.Partitions(topic)
		}
	}
	if err != nil {
		return fmt.Errorf("topic %s: %w", topic, err)
	}
	pcs := make([]sarama.PartitionConsumer, 0, len(partitions))
	defer func() {
		for _, pc := range pcs {
			pc.Close()
		}
	}()
	for _, p := range partitions {
		pc, err := tailConsumePartition(ctx, consumer, topic, p, start)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		pcs = append(pcs, pc)
	}
	from := "new events"
	if start == sarama.OffsetOldest {
		from = "the oldest event"
	}
	say("following %s (%d partitions) from %s", topic, len(partitions), from)

	g, ctx := errgroup.WithContext(ctx)
	for i, pc := range pcs {
		g.Go(func() error {
			for {
				select {
				case <-ctx.Done():
					return nil
				case m, ok := <-pc.Messages():
					if !ok {
						return nil
					}
					select {
					case out <- m:
					case <-ctx.Done():
						return nil
					}
				case err, ok := <-pc.Errors():
					if !ok {
						return nil
					}
					// Sarama keeps retrying (a broker restart, a leader change); say so.
					say("%s/%d: %v", topic, partitions[i], err)
				}
			}
		})
	}
	return g.Wait()
}

// tailConsumePartition starts consuming a partition, retrying for a while when the topic was
// just created and the partition has no leader yet.
func tailConsumePartition(ctx context.Context, consumer sarama.Consumer, topic string, p int32, start int64) (sarama.PartitionConsumer, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pc, err := consumer.ConsumePartition(topic, p, start)
		if err == nil {
			return pc, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("consume %s/%d: %w", topic, p, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// tailRecord is what tail shows of one Kafka record; it is also the --json line.
type tailRecord struct {
	Time      time.Time       `json:"time"`
	Type      string          `json:"type"`
	OrderID   int64           `json:"orderId,omitempty"`
	Key       string          `json:"key"`
	Topic     string          `json:"topic"`
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	Data      json.RawMessage `json:"data"`
	// Error says why the record is not an event this version knows; Data then holds the
	// value as a JSON string if it is not JSON.
	Error string `json:"error,omitempty"`
	// Poisoned is the worker's reason, on records of the poison topic.
	Poisoned string `json:"poisoned,omitempty"`

	details string // the text line's key fields
}

// newTailRecord decodes a record as far as it can; a record that is not an event becomes a
// tailRecord with Error set rather than a failure, since tail must keep going.
func newTailRecord(m *sarama.ConsumerMessage) tailRecord {
	r := tailRecord{
		Time: m.Timestamp.UTC(), Type: tailHeader(m, events.MetaType), Key: string(m.Key),
		Topic: m.Topic, Partition: m.Partition, Offset: m.Offset,
		Poisoned: tailHeader(m, middleware.ReasonForPoisonedKey),
	}
	if t, err := time.Parse(time.RFC3339Nano, tailHeader(m, events.MetaTime)); err == nil {
		r.Time = t.UTC()
	}
	if json.Valid(m.Value) {
		r.Data = m.Value
	} else {
		r.Data, _ = json.Marshal(string(m.Value))
	}
	msg := message.NewMessage(tailHeader(m, events.MetaID), m.Value)
	msg.Metadata.Set(events.MetaType, r.Type)
	e, err := events.Decode(msg)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.OrderID = e.OrderID()
	switch e := e.(type) {
	case events.OrderCreated:
		r.details = fmt.Sprintf("customer=%s amount=%s", e.CustomerID, money.Amount{Minor: e.AmountMinor, Currency: e.Currency})
	case events.PaymentSucceeded:
		r.details = fmt.Sprintf("payment=%s amount=%s", e.PaymentID, money.Amount{Minor: e.AmountMinor, Currency: e.Currency})
	case events.PaymentFailed:
		r.details = fmt.Sprintf("payment=%s reason=%s", e.PaymentID, e.Reason)
	}
	return r
}

// write prints the record as one line, JSON or text:
//
//	2026-11-25T01:03:33.660Z  orders.order.created.v1  order=1  customer=CUST001 amount=200 USD
func (r tailRecord) write(w io.Writer, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var line strings.Builder
	typ := r.Type
	if typ == "" {
		typ = "-"
	}
	fmt.Fprintf(&line, "%s  %s  ", r.Time.Format("2006-01-02T15:04:05.000Z07:00"), tailPrintable(typ))
	if r.Error != "" {
		fmt.Fprintf(&line, "key=%s  undecodable: %s (%s/%d@%d)", tailPrintable(r.Key), r.Error, r.Topic, r.Partition, r.Offset)
	} else {
		fmt.Fprintf(&line, "order=%d  %s", r.OrderID, r.details)
	}
	if r.Poisoned != "" {
		fmt.Fprintf(&line, "  poisoned: %s", r.Poisoned)
	}
	_, err := fmt.Fprintln(w, strings.ReplaceAll(line.String(), "\n", " "))
	return err
}

// tailPrintable quotes s if it holds anything but visible ASCII, so that a garbage key or
// type cannot break the line.
func tailPrintable(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

// tailHeader returns the value of a record header, or "".
func tailHeader(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if h != nil && string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}
