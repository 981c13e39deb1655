// Command relaybench measures the relay against the local stack (make bench):
//
//   - relay_lag_p99_ms: outbox commit → the event read back from Kafka, at 500 events/s,
//     one event per transaction. Measured to a consumer, so it includes Kafka's fetch
//     delay: an upper bound of commit → Kafka ack.
//   - relay_events_per_s: forwarding rate while writers commit as fast as they can (100
//     events per transaction) on the same machine.
//   - relay_backlog_drain_rows_per_s: rate at which a relay that starts 200,000 rows
//     behind catches up.
//
// Each phase uses a fresh database and topic prefix, and the figures are merged into
// bench/results/latest.json.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/bench"
	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/relay"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relaybench:", err)
		os.Exit(1)
	}
}

var (
	adminURL = flag.String("db", envOr("DATABASE_URL", "postgres://orderuser:secret@127.0.0.1:5432/orderdb?sslmode=disable"), "database to create the bench databases from")
	brokers  = flag.String("brokers", envOr("KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka brokers")
	results  = flag.String("results", "bench/results", "where latest.json goes")
	rate     = flag.Int("rate", 500, "events per second for the latency phase")
	duration = flag.Duration("duration", 20*time.Second, "length of the latency and throughput phases")
	backlog  = flag.Int("backlog", 200000, "rows behind at the start of the drain phase")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run() error {
	flag.Parse()
	ctx := context.Background()
	figures := map[string]any{}

	lat, err := latency(ctx)
	if err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	fmt.Printf("relay latency at %d events/s: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d events)\n",
		*rate, bench.Ms(lat.p50), bench.Ms(lat.p99), bench.Ms(lat.max), lat.n)
	figures["relay_lag_p50_ms"], figures["relay_lag_p99_ms"], figures["relay_lag_max_ms"] = bench.Ms(lat.p50), bench.Ms(lat.p99), bench.Ms(lat.max)

	tput, written, err := throughput(ctx)
	if err != nil {
		return fmt.Errorf("throughput: %w", err)
	}
	fmt.Printf("relay throughput: %.0f events/s forwarded while writers committed %.0f events/s\n", tput, written)
	figures["relay_events_per_s"], figures["relay_writer_events_per_s"] = round(tput), round(written)

	drain, err := drainRate(ctx)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	fmt.Printf("relay backlog drain: %.0f rows/s from %d rows behind\n", drain, *backlog)
	figures["relay_backlog_drain_rows_per_s"] = round(drain)

	fmt.Printf("goals: p99 < 50 ms: %v; throughput >= 5000/s: %v; drain >= 5000/s: %v\n",
		bench.Ms(lat.p99) < 50, tput >= 5000, drain >= 5000)
	return bench.Record(*results, figures)
}

func round(f float64) float64 { return float64(int64(f*10)) / 10 }

// freshDB creates a migrated database for one phase and returns it with a drop func.
func freshDB(ctx context.Context) (*sql.DB, func(), error) {
	dbURL, dropDB, err := bench.FreshDB(ctx, *adminURL, "bench_relay")
	if err != nil {
		return nil, nil, err
	}
	db, err := postgres.Open(ctx, dbURL, 16)
	if err != nil {
		dropDB()
		return nil, nil, err
	}
	return db, func() { db.Close(); dropDB() }, nil
}

// startRelay runs a relay in this process until the returned stop is called.
func startRelay(db *sql.DB, reg prometheus.Registerer) (stop func(), err error) {
	r, err := relay.New(db, relay.Config{Brokers: kafkaconf.Brokers(*brokers), Registerer: reg},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	return func() { cancel(); <-done }, nil
}

// commit writes n events (order ids cycling over 1..1000) in one transaction.
func commit(ctx context.Context, db *sql.DB, ob *outbox.Outbox, seq, n int) ([]string, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	msgs := make([]string, 0, n)
	for i := 0; i < n; i++ {
		msg, err := events.NewMessage(events.OrderCreated{ID: int64((seq+i)%1000 + 1), CustomerID: "BENCH",
			AmountMinor: 100, Currency: "USD", CreatedAt: time.Now()}, time.Now())
		if err != nil {
			return nil, err
		}
		if err := ob.Publish(tx, events.TopicOrders, msg); err != nil {
			return nil, err
		}
		msgs = append(msgs, msg.UUID)
	}
	return msgs, tx.Commit()
}

type lagResult struct {
	p50, p99, max time.Duration
	n             int
}

func latency(ctx context.Context) (lagResult, error) {
	db, drop, err := freshDB(ctx)
	if err != nil {
		return lagResult{}, err
	}
	defer drop()
	prefix := fmt.Sprintf("bench%d.", time.Now().UnixNano())
	topic := prefix + events.TopicOrders
	stop, err := startRelay(db, nil)
	if err != nil {
		return lagResult{}, err
	}
	defer stop()

	var (
		mu        sync.Mutex
		committed = map[string]time.Time{}
		received  = map[string]time.Time{}
	)
	// Create the topic and start reading before the clock starts.
	if _, err := commit(ctx, db, outbox.New(prefix), 0, 1); err != nil {
		return lagResult{}, err
	}
	stopConsume, err := consume(topic, func(id string, at time.Time) {
		mu.Lock()
		if _, dup := received[id]; !dup {
			received[id] = at
		}
		mu.Unlock()
	})
	if err != nil {
		return lagResult{}, err
	}
	defer stopConsume()

	ob := outbox.New(prefix)
	const writers = 4 // one transaction each in flight, so a slow commit does not skew the schedule
	interval := time.Second * writers / time.Duration(*rate)
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := time.Now().Add(time.Duration(w) * interval / writers)
			for seq := w; time.Now().Before(deadline); seq += writers {
				time.Sleep(time.Until(next))
				next = next.Add(interval)
				ids, err := commit(ctx, db, ob, seq, 1)
				if err != nil {
					errc <- err
					return
				}
				at := time.Now()
				mu.Lock()
				committed[ids[0]] = at
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return lagResult{}, err
	default:
	}
	wait := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		done := true
		for id := range committed {
			if _, ok := received[id]; !ok {
				done = false
				break
			}
		}
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(wait) {
			return lagResult{}, errors.New("not every event reached Kafka within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	lags := make([]time.Duration, 0, len(committed))
	for id, c := range committed {
		lags = append(lags, max(received[id].Sub(c), 0))
	}
	return lagResult{p50: bench.Percentile(lags, 50), p99: bench.Percentile(lags, 99),
		max: bench.Percentile(lags, 100), n: len(lags)}, nil
}

// consume reads every partition of topic from the oldest offset and calls got for each
// message with its ce_id and arrival time.
func consume(topic string, got func(id string, at time.Time)) (stop func(), err error) {
	cfg := kafkaconf.Consumer("relaybench")
	cfg.Consumer.MaxWaitTime = 5 * time.Millisecond
	consumer, err := sarama.NewConsumer(kafkaconf.Brokers(*brokers), cfg)
	if err != nil {
		return nil, err
	}
	partitions, err := consumer.Partitions(topic)
	if err != nil {
		consumer.Close()
		return nil, err
	}
	var (
		wg  sync.WaitGroup
		pcs []sarama.PartitionConsumer
	)
	stop = func() {
		for _, pc := range pcs {
			pc.AsyncClose() // closes pc.Messages(), ending its goroutine
		}
		wg.Wait()
		consumer.Close()
	}
	for _, p := range partitions {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			stop()
			return nil, err
		}
		pcs = append(pcs, pc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range pc.Messages() {
				at := time.Now()
				for _, h := range m.Headers {
					if string(h.Key) == events.MetaID {
						got(string(h.Value), at)
					}
				}
			}
		}()
	}
	return stop, nil
}

// throughput runs writers flat out for the phase and reports the relay's forwarding
// rate over it, and the writers' rate.
func throughput(ctx context.Context) (forwarded, written float64, err error) {
	db, drop, err := freshDB(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer drop()
	prefix := fmt.Sprintf("bench%d.", time.Now().UnixNano())
	reg := prometheus.NewRegistry()
	stop, err := startRelay(db, reg)
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	fwd := func() float64 {
		mfs, _ := reg.Gather()
		var sum float64
		for _, mf := range mfs {
			if mf.GetName() == "relay_forwarded_total" {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
		return sum
	}

	var n atomic.Int64
	start := time.Now()
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	ob := outbox.New(prefix)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := w * 100; time.Now().Before(deadline); seq += 400 {
				if _, err := commit(ctx, db, ob, seq, 100); err != nil {
					errc <- err
					return
				}
				n.Add(100)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errc:
		return 0, 0, err
	default:
	}
	return fwd() / elapsed.Seconds(), float64(n.Load()) / elapsed.Seconds(), nil
}

// drainRate fills the outbox with the backlog while no relay runs, then times a relay
// forwarding all of it (its saved position reaching the last row).
func drainRate(ctx context.Context) (float64, error) {
	db, drop, err := freshDB(ctx)
	if err != nil {
		return 0, err
	}
	defer drop()
	prefix := fmt.Sprintf("bench%d.", time.Now().UnixNano())
	ob := outbox.New(prefix)
	for seq := 0; seq < *backlog; seq += 1000 {
		if _, err := commit(ctx, db, ob, seq, min(1000, *backlog-seq)); err != nil {
			return 0, err
		}
	}
	var lastOffset int64
	if err := db.QueryRowContext(ctx, `SELECT max("offset") FROM watermill_outbox`).Scan(&lastOffset); err != nil {
		return 0, err
	}
	start := time.Now()
	stop, err := startRelay(db, nil)
	if err != nil {
		return 0, err
	}
	defer stop()
	for {
		var done bool
		err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM watermill_offsets_outbox WHERE offset_acked = $1)`,
			lastOffset).Scan(&done)
		if err != nil {
			return 0, err
		}
		if done {
			return float64(*backlog) / time.Since(start).Seconds(), nil
		}
		if time.Since(start) > 10*time.Minute {
			return 0, errors.New("backlog not drained in 10 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
