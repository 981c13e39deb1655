// Command paymentsim runs the fake payment provider (see paymentsim/ for the test
// amounts and the random behaviours).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/paymentsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "paymentsim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	env := envconf.New(getenv)
	addr := env.String("HTTP_ADDR", ":8081")
	logger := envconf.Logger(stdout, env.Level("LOG_LEVEL", 0), "paymentsim")
	cfg := paymentsim.Config{
		LedgerPath:    env.String("PAYMENTSIM_LEDGER", ""),
		SlowDelay:     env.Duration("PAYMENTSIM_SLOW_DELAY", 0),
		TimeoutDelay:  env.Duration("PAYMENTSIM_TIMEOUT_DELAY", 0),
		FailRate:      env.Float("PAYMENTSIM_FAIL_RATE", 0, 0, 1),
		DeclineRate:   env.Float("PAYMENTSIM_DECLINE_RATE", 0, 0, 1),
		Latency:       optionalDuration(env, getenv, "PAYMENTSIM_LATENCY"),
		LatencyJitter: optionalDuration(env, getenv, "PAYMENTSIM_LATENCY_JITTER"),
		Seed:          int64(env.Int("PAYMENTSIM_SEED", 0, 0)),
		RefuseWith:    env.Int("PAYMENTSIM_REFUSE_WITH", 0, 0),
	}
	if err := env.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	tp, traces, stopTracing, err := tracing.Provider(ctx, getenv, "paymentsim", logger)
	if err != nil {
		return err
	}
	defer tracing.Shutdown(stopTracing)
	if traces != "" {
		logger.Info("tracing on", "otlp_traces_endpoint", traces)
	}
	cfg.TracerProvider = tp
	sim, err := paymentsim.New(cfg, logger) // logs the configuration, defaults applied
	if err != nil {
		return err
	}
	defer sim.Close()

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// Requests inherit ctx, so the slow and timeout behaviours stop waiting at shutdown
	// instead of holding it up.
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("listening", "http_addr", ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// optionalDuration is env.Duration that also accepts 0 (envconf wants a positive
// duration), so PAYMENTSIM_LATENCY=0 can turn an added delay off explicitly.
func optionalDuration(env *envconf.Env, getenv func(string) string, name string) time.Duration {
	if d, err := time.ParseDuration(getenv(name)); err == nil && d == 0 {
		return 0
	}
	return env.Duration(name, 0)
}
