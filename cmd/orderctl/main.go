// Command orderctl is the operator's tool.
//
//	orderctl migrate      apply the database migrations (the api also does at start)
//	orderctl poison       list, show, stats and replay the poison queue
//	orderctl orders       list orders stuck in PENDING, with where their event is
//	orderctl tail         follow the orders and payments topics, one line per event
//	orderctl load         drive the pipeline with orders and report latencies
//	orderctl relay        re-anchor a relay's position after a logical restore
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/schema"
)

const usage = `usage: orderctl <command> [flags]

commands:
  migrate    apply pending database migrations (DATABASE_URL)
  poison     list, show, stats and replay poisoned messages (KAFKA_BROKERS, KAFKA_TOPIC_PREFIX);
             orderctl poison help
  orders     orders stuck PENDING and where their event is (DATABASE_URL, KAFKA_BROKERS,
             KAFKA_TOPIC_PREFIX, WORKER_GROUP); orderctl orders help
  tail       follow orders and payments, one line per event (KAFKA_BROKERS, KAFKA_TOPIC_PREFIX);
             orderctl tail -h for flags
  load       send orders to the api (open or closed loop) and report POST latency,
             create -> terminal latency from the outcome events, outbox -> Kafka lag
             (API_URL, KAFKA_BROKERS, KAFKA_TOPIC_PREFIX); orderctl load -h for flags
  relay      reanchor [--group G] [--dry-run] [--force]: after a logical restore, move the
             relay's position below the oldest outbox row (DATABASE_URL, RELAY_GROUP);
             orderctl relay help
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	var ue usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "orderctl: %s\n\n%s", ue, usage)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "orderctl:", err)
		os.Exit(1)
	}
}

// usageError is a mistake in the command line (exit 2), as opposed to a failure (exit 1).
type usageError string

func (e usageError) Error() string { return string(e) }

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("no command given")
	}
	env := envconf.New(getenv)
	databaseURL := env.String("DATABASE_URL", "postgres://orderuser:secret@localhost:5432/orderdb?sslmode=disable")
	relayGroup := env.String("RELAY_GROUP", "relay")
	if err := env.Err(); err != nil {
		return err
	}
	switch args[0] {
	case "migrate":
		fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
		fs.SetOutput(stderr)
		if err := fs.Parse(args[1:]); err != nil {
			return usageError(err.Error())
		}
		if fs.NArg() > 0 {
			return usageError("migrate takes no arguments")
		}
		db, err := postgres.Open(ctx, databaseURL, 1)
		if err != nil {
			return err
		}
		defer db.Close()
		v, err := schema.Migrate(ctx, db, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "schema at version %d\n", v)
		return nil
	case "poison":
		return runPoison(ctx, args[1:], getenv, stdout, stderr)
	case "orders":
		return runOrders(ctx, args[1:], getenv, databaseURL, stdout, stderr)
	case "tail":
		return runTail(ctx, args[1:], getenv, stdout, stderr)
	case "load":
		return runLoad(ctx, args[1:], getenv, stdout, stderr)
	case "relay":
		return runRelay(ctx, args[1:], databaseURL, relayGroup, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usageError(fmt.Sprintf("unknown command %q", args[0]))
	}
}
