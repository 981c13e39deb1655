package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

const ordersUsage = `usage: orderctl orders stuck [--older-than D] [--limit N]

stuck   list the orders PENDING for longer than --older-than (default 15m), oldest first,
        with where their OrderCreated event was found:
          dead letter     the relay set the event aside (outbox_dead_letters, with why)
          in outbox       not forwarded yet: the relay is behind or stopped (relay_position_invalid?)
          poisoned        in the poison topic at partition:offset: orderctl poison show P:O
          not consumed    on Kafka, the worker group (WORKER_GROUP) is N records behind on its partition
          lost            on Kafka and past the worker group's committed offset, yet not decided
                          nor poisoned: it aged out before the worker read it, or was acknowledged
                          without effect; search the worker's log for the order id
        (DATABASE_URL, KAFKA_BROKERS, KAFKA_TOPIC_PREFIX, WORKER_GROUP)
`

// runOrders is orderctl orders: the answer to "why is this order still PENDING?".
func runOrders(ctx context.Context, args []string, getenv func(string) string, databaseURL string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("orders: no subcommand given (stuck)")
	}
	switch args[0] {
	case "stuck":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, ordersUsage)
		return nil
	default:
		return usageError(fmt.Sprintf("orders: unknown subcommand %q", args[0]))
	}
	fs := flag.NewFlagSet("orders stuck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	olderThan := fs.Duration("older-than", 15*time.Minute, "list orders PENDING for longer than this")
	limit := fs.Int("limit", 100, "list at most this many, oldest first")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError(err.Error())
	}
	if fs.NArg() > 0 || *olderThan < 0 || *limit < 1 {
		return usageError("orders stuck takes no arguments; --older-than >= 0, --limit >= 1")
	}
	cfg, err := loadPoisonConfig(getenv)
	if err != nil {
		return err
	}
	env := envconf.New(getenv)
	group := env.String("WORKER_GROUP", "worker")
	if err := env.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}

	db, err := postgres.Open(ctx, databaseURL, 1)
	if err != nil {
		return err
	}
	defer db.Close()
	stuck, err := orders.NewStore(db, outbox.New(cfg.prefix)).Stuck(ctx, time.Now().Add(-*olderThan), *limit)
	if err != nil {
		return err
	}
	if len(stuck) == 0 {
		fmt.Fprintf(stdout, "no order PENDING for longer than %s\n", *olderThan)
		return nil
	}
	w, err := newStuckWhere(ctx, cfg, group)
	if err != nil {
		return err
	}
	defer w.close()
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ORDER\tCREATED\tPENDING FOR\tWHERE\tDETAIL")
	for _, o := range stuck {
		where, detail, err := w.find(o)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", o.ID, o.CreatedAt.Format(time.RFC3339), time.Since(o.CreatedAt).Round(time.Second), where, detail)
	}
	return tw.Flush()
}

// stuckWhere finds a stuck order's event in Kafka: in the poison topic, or on the
// orders topic behind or past the worker group's committed offset.
type stuckWhere struct {
	client   poisonKafka
	admin    sarama.ClusterAdmin
	topic    string
	group    string
	poisoned map[string]poisonRecord // by order id, the latest
	parts    int32
}

func newStuckWhere(ctx context.Context, cfg poisonConfig, group string) (*stuckWhere, error) {
	client, err := poisonConnect(cfg)
	if err != nil {
		return nil, err
	}
	w := &stuckWhere{client: poisonKafka{Client: client, stall: poisonStallTimeout}, topic: cfg.prefix + events.TopicOrders,
		group: group, poisoned: map[string]poisonRecord{}}
	recs, err := readPoison(ctx, w.client, cfg.topic())
	if err != nil && !errors.Is(err, errPoisonNoTopic) {
		client.Close()
		return nil, err
	}
	for _, r := range recs {
		w.poisoned[r.orderID()] = r
	}
	parts, err := poisonPartitions(client, w.topic)
	if err != nil {
		client.Close()
		return nil, err
	}
	w.parts = int32(len(parts))
	if w.admin, err = sarama.NewClusterAdminFromClient(client); err != nil {
		client.Close()
		return nil, err
	}
	return w, nil
}

func (w *stuckWhere) close() { w.admin.Close() } // closes the client too

func (w *stuckWhere) find(o orders.StuckOrder) (where, detail string, err error) {
	id := strconv.FormatInt(o.ID, 10)
	switch {
	case o.DeadLetter != "":
		return "dead letter", fmt.Sprintf("outbox row %s set aside: %s", o.OutboxPosition, o.DeadLetter), nil
	case o.InOutbox && !o.Forwarded:
		return "in outbox", fmt.Sprintf("row %s not forwarded yet: is the relay running, its position valid?", o.OutboxPosition), nil
	}
	if r, ok := w.poisoned[id]; ok {
		return "poisoned", fmt.Sprintf("at %s: %s (orderctl poison show %s)", r.pos, r.header(middleware.ReasonForPoisonedKey), r.pos), nil
	}
	// The relay keys each event by its order id, so it is on the partition the key hashes to.
	p, err := sarama.NewHashPartitioner(w.topic).Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(id)}, w.parts)
	if err != nil {
		return "", "", err
	}
	end, err := w.client.GetOffset(w.topic, p, sarama.OffsetNewest)
	if err != nil {
		return "", "", fmt.Errorf("offsets of %s/%d: %w", w.topic, p, err)
	}
	offs, err := w.admin.ListConsumerGroupOffsets(w.group, map[string][]int32{w.topic: {p}})
	if err != nil {
		return "", "", fmt.Errorf("offsets of group %s: %w", w.group, err)
	}
	committed := int64(-1)
	if b := offs.GetBlock(w.topic, p); b != nil {
		committed = b.Offset
	}
	if committed < end {
		behind := "has committed nothing there"
		if committed >= 0 {
			behind = fmt.Sprintf("is %d records behind there", end-committed)
		}
		return "not consumed", fmt.Sprintf("on %s/%d; group %s %s", w.topic, p, w.group, behind), nil
	}
	return "lost", fmt.Sprintf("forwarded to %s/%d, which group %s has consumed to its end (%d), not poisoned: "+
		"aged out of Kafka before it was read, or acknowledged without effect; search the worker log for order_id=%s",
		w.topic, p, w.group, end, id), nil
}
