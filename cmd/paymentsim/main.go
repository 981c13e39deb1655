// Command paymentsim runs the fake payment provider (see paymentsim/).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/orderpipe/orderpipe/internal/envconf"
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
	if err := env.Err(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	srv := &http.Server{Addr: addr, Handler: paymentsim.New(logger), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	logger.Info("listening", "http_addr", addr)
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
