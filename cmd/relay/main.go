// Command relay forwards the transactional outbox to Kafka (see relay/).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/orderpipe/orderpipe/internal/admin"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/relay"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	env := envconf.New(getenv)
	databaseURL := env.String("DATABASE_URL", "postgres://orderuser:secret@localhost:5432/orderdb?sslmode=disable")
	debugAddr := env.String("DEBUG_ADDR", "")
	adminAddr := env.String("ADMIN_ADDR", ":9102")
	cfg := relay.Config{
		Brokers:       kafkaconf.Brokers(env.String("KAFKA_BROKERS", "localhost:9092")),
		PollInterval:  env.Duration("RELAY_POLL_INTERVAL", 10*time.Millisecond),
		BatchSize:     env.Int("RELAY_BATCH_SIZE", 1000, 1),
		ConsumerGroup: env.String("RELAY_GROUP", "relay"),
		Retention:     env.Duration("RELAY_RETENTION", time.Hour),
		PruneInterval: env.Duration("RELAY_PRUNE_INTERVAL", 5*time.Second),
		// How long the active relay's database session may go silent before it and
		// Postgres give it up and a standby takes over.
		SessionTimeout: env.Duration("RELAY_SESSION_TIMEOUT", 30*time.Second),
	}
	logger := envconf.Logger(stdout, env.Level("LOG_LEVEL", 0), "relay")
	if err := env.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	logger.Info("starting", "database_url", envconf.Redact(databaseURL), "kafka_brokers", cfg.Brokers,
		"admin_addr", adminAddr, "group", cfg.ConsumerGroup, "poll_interval", cfg.PollInterval.String(),
		"batch_size", cfg.BatchSize, "retention", cfg.Retention.String(), "session_timeout", cfg.SessionTimeout.String())

	tp, traces, stopTracing, err := tracing.Provider(ctx, getenv, "relay", logger)
	if err != nil {
		return err
	}
	defer tracing.Shutdown(stopTracing)
	if traces != "" {
		logger.Info("tracing on", "otlp_traces_endpoint", traces)
	}
	cfg.TracerProvider = tp

	db, err := postgres.Open(ctx, databaseURL, 4)
	if err != nil {
		return err
	}
	defer db.Close()
	reg := admin.NewRegistry(db)
	cfg.Registerer = reg
	r, err := relay.New(db, cfg, logger)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(ctx) })
	// Ready while Postgres and Kafka both answer: without either nothing is forwarded.
	checks := []admin.Check{admin.Postgres(db), admin.Kafka(cfg.Brokers)}
	g.Go(func() error { return admin.Serve(ctx, adminAddr, reg, checks, logger) })
	if debugAddr != "" {
		g.Go(func() error { return admin.ServeDebug(ctx, debugAddr, logger) })
		logger.Info("pprof listening", "debug_addr", debugAddr)
	}
	return g.Wait()
}
