// Command api serves the orders HTTP API (see api/). It applies the database migrations
// at start, under an advisory lock.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only on DEBUG_ADDR
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/schema"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(1)
	}
}

type config struct {
	HTTPAddr        string
	DatabaseURL     string
	RedisURL        string
	CacheKeyPrefix  string
	RateLimit       int
	DebugAddr       string
	DBMaxConns      int
	TopicPrefix     string
	IdempotencyTTL  time.Duration
	ShutdownTimeout time.Duration
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	env := envconf.New(getenv)
	cfg := config{
		HTTPAddr:        env.String("HTTP_ADDR", ":8080"),
		DatabaseURL:     env.String("DATABASE_URL", "postgres://orderuser:secret@localhost:5432/orderdb?sslmode=disable"),
		RedisURL:        env.String("REDIS_URL", "redis://localhost:6379/0"),
		CacheKeyPrefix:  env.String("CACHE_KEY_PREFIX", "order:"),
		RateLimit:       env.Int("RATE_LIMIT", 0, 0),
		DebugAddr:       env.String("DEBUG_ADDR", ""),
		DBMaxConns:      env.Int("DB_MAX_CONNS", 16, 1),
		TopicPrefix:     env.String("KAFKA_TOPIC_PREFIX", ""),
		IdempotencyTTL:  env.Duration("IDEMPOTENCY_TTL", 24*time.Hour),
		ShutdownTimeout: env.Duration("SHUTDOWN_TIMEOUT", 20*time.Second),
	}
	logger := envconf.Logger(stdout, env.Level("LOG_LEVEL", 0), "api")
	if err := env.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	logger.Info("starting", "http_addr", cfg.HTTPAddr, "database_url", envconf.Redact(cfg.DatabaseURL),
		"redis_url", envconf.Redact(cfg.RedisURL), "rate_limit", cfg.RateLimit,
		"db_max_conns", cfg.DBMaxConns, "topic_prefix", cfg.TopicPrefix, "idempotency_ttl", cfg.IdempotencyTTL.String())

	tp, traces, stopTracing, err := tracing.Provider(ctx, getenv, "api", logger)
	if err != nil {
		return err
	}
	defer tracing.Shutdown(stopTracing)
	if traces != "" {
		logger.Info("tracing on", "otlp_traces_endpoint", traces)
	}

	db, err := postgres.Open(ctx, cfg.DatabaseURL, cfg.DBMaxConns)
	if err != nil {
		return err
	}
	defer db.Close()
	version, err := schema.Migrate(ctx, db, nil)
	if err != nil {
		return err
	}
	logger.Info("schema migrated", "version", version)

	cache, err := orders.OpenCache(cfg.RedisURL, orders.CacheConfig{KeyPrefix: cfg.CacheKeyPrefix})
	if err != nil {
		return err
	}
	defer cache.Close()

	store := orders.NewStore(db, outbox.New(cfg.TopicPrefix))
	srv := &http.Server{
		Addr: cfg.HTTPAddr,
		Handler: api.New(store, db, logger, api.Config{
			IdempotencyTTL: cfg.IdempotencyTTL, Cache: cache, RateLimit: cfg.RateLimit, TracerProvider: tp,
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	logger.Info("listening", "http_addr", cfg.HTTPAddr)
	if cfg.DebugAddr != "" {
		// pprof on its own listener, never on the public port; off unless asked for.
		dbg := &http.Server{Addr: cfg.DebugAddr, Handler: http.DefaultServeMux, ReadHeaderTimeout: 5 * time.Second}
		go dbg.ListenAndServe()
		defer dbg.Close()
		logger.Info("pprof listening", "debug_addr", cfg.DebugAddr)
	}
	janitorCtx, stopJanitor := context.WithCancel(ctx)
	janitorDone := make(chan struct{})
	go func() { defer close(janitorDone); expireKeys(janitorCtx, store, logger) }()
	defer func() { stopJanitor(); <-janitorDone }()

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	logger.Info("stopped")
	return nil
}

// expireKeys deletes expired idempotency keys every minute, in batches, until ctx ends.
func expireKeys(ctx context.Context, store *orders.Store, logger *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			n, err := store.DeleteExpiredKeys(ctx, 1000)
			if err != nil {
				if ctx.Err() == nil {
					logger.Warn("expire idempotency keys", "err", err)
				}
				break
			}
			if n > 0 {
				logger.Info("expired idempotency keys deleted", "count", n)
			}
			if n < 1000 {
				break
			}
		}
	}
}
