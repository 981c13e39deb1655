// Command worker processes order events from Kafka (see worker/).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/orderpipe/orderpipe/internal/admin"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/worker"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	env := envconf.New(getenv)
	databaseURL := env.String("DATABASE_URL", "postgres://orderuser:secret@localhost:5432/orderdb?sslmode=disable")
	redisURL := env.String("REDIS_URL", "redis://localhost:6379/0")
	cacheKeyPrefix := env.String("CACHE_KEY_PREFIX", "order:")
	debugAddr := env.String("DEBUG_ADDR", "")
	adminAddr := env.String("ADMIN_ADDR", ":9103")
	cfg := worker.Config{
		Brokers:              kafkaconf.Brokers(env.String("KAFKA_BROKERS", "localhost:9092")),
		TopicPrefix:          env.String("KAFKA_TOPIC_PREFIX", ""),
		ConsumerGroup:        env.String("WORKER_GROUP", "worker"),
		PaymentURL:           env.String("PAYMENT_URL", "http://localhost:8081"),
		PaymentTimeout:       env.Duration("PAYMENT_TIMEOUT", 0),
		MaxRetries:           env.Int("WORKER_MAX_RETRIES", 5, 0),
		RetryInterval:        env.Duration("WORKER_RETRY_INTERVAL", 0),
		RetryMaxInterval:     env.Duration("WORKER_RETRY_MAX_INTERVAL", 0),
		HandlerTimeout:       env.Duration("WORKER_HANDLER_TIMEOUT", 0),
		UnavailableBudget:    env.Duration("WORKER_UNAVAILABLE_BUDGET", 0),
		PaymentProbeInterval: env.Duration("PAYMENT_PROBE_INTERVAL", 0),
		InboxRetention:       env.Duration("WORKER_INBOX_RETENTION", 0),
		InboxPruneInterval:   env.Duration("WORKER_INBOX_PRUNE_INTERVAL", 0),
		MaxInFlight:          env.Int("WORKER_MAX_IN_FLIGHT", 256, 1),
		MaxBufferedBytes:     int64(env.Int("WORKER_MAX_BUFFERED_BYTES", 64<<20, 1)),
		PaymentIdleConns:     env.Int("WORKER_PAYMENT_IDLE_CONNS", 256, 1),
		CrashAfterCharge:     env.Float("WORKER_FAILPOINT_CRASH_AFTER_CHARGE", 0, 0, 1),
	}
	dbMaxConns := env.Int("WORKER_DB_MAX_CONNS", 16, 1)
	logger := envconf.Logger(stdout, env.Level("LOG_LEVEL", 0), "worker")
	if err := env.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	logger.Info("starting", "database_url", envconf.Redact(databaseURL), "kafka_brokers", cfg.Brokers,
		"topic_prefix", cfg.TopicPrefix, "group", cfg.ConsumerGroup, "payment_url", cfg.PaymentURL, "redis_url", envconf.Redact(redisURL), "admin_addr", adminAddr,
		"max_in_flight", cfg.MaxInFlight, "max_buffered_bytes", cfg.MaxBufferedBytes,
		"payment_idle_conns", cfg.PaymentIdleConns, "db_max_conns", dbMaxConns)

	tp, traces, stopTracing, err := tracing.Provider(ctx, getenv, "worker", logger)
	if err != nil {
		return err
	}
	defer tracing.Shutdown(stopTracing)
	if traces != "" {
		logger.Info("tracing on", "otlp_traces_endpoint", traces)
	}
	cfg.TracerProvider = tp

	db, err := postgres.Open(ctx, databaseURL, dbMaxConns)
	if err != nil {
		return err
	}
	defer db.Close()
	cache, err := orders.OpenCache(redisURL, orders.CacheConfig{KeyPrefix: cacheKeyPrefix})
	if err != nil {
		return err
	}
	defer cache.Close()
	cfg.Cache = cache
	reg := admin.NewRegistry(db)
	cfg.Registerer = reg
	w, err := worker.New(orders.NewStore(db, outbox.New(cfg.TopicPrefix)), cfg, logger)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.Run(ctx) })
	// Ready while it consumes and Postgres and Kafka answer. The payment provider and
	// Redis are reported but optional: during a provider outage the worker holds its
	// orders and retries them (nothing another worker could do better), and without
	// Redis only cache invalidations are skipped.
	checks := []admin.Check{
		{Name: "consumer", Probe: w.Consuming},
		admin.Postgres(db),
		admin.Kafka(cfg.Brokers),
		admin.HTTP("payments", strings.TrimRight(cfg.PaymentURL, "/")+"/healthz", true),
		{Name: "redis", Optional: true, Probe: cache.Ping},
	}
	g.Go(func() error { return admin.Serve(ctx, adminAddr, reg, checks, logger) })
	if debugAddr != "" {
		g.Go(func() error { return admin.ServeDebug(ctx, debugAddr, logger) })
		logger.Info("pprof listening", "debug_addr", debugAddr)
	}
	return g.Wait()
}
