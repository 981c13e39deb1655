package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/orderpipe/orderpipe/internal/loadgen"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// loadFlags is what `orderctl load` was asked to do: the run, and where its JSON goes.
type loadFlags struct {
	cfg     loadgen.Config
	jsonOut string // write the report as JSON here ("-": stdout)
}

func parseLoad(args []string, getenv func(string) string, stderr io.Writer) (loadFlags, error) {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f loadFlags
	c := &f.cfg
	fs.StringVar(&c.APIURL, "api", envOr(getenv, "API_URL", "http://localhost:8080"), "api base URL (API_URL)")
	fs.Float64Var(&c.Rate, "rate", 0, "open loop: requests per second regardless of answers")
	fs.IntVar(&c.Concurrency, "concurrency", 8, "closed loop: requests in flight (ignored with --rate)")
	fs.DurationVar(&c.Duration, "duration", 0, "how long to send (default 30s unless --orders)")
	fs.IntVar(&c.Orders, "orders", 0, "how many orders to send")
	fs.Float64Var(&c.Declines, "declines", 0, "share of orders the payment simulator declines, 0..1")
	fs.StringVar(&c.Currency, "currency", "USD", "currency of the orders")
	fs.DurationVar(&c.Settle, "settle", 30*time.Second, "how long to wait for outcomes after the last request")
	fs.StringVar(&f.jsonOut, "json", "", `write the report as JSON to this file ("-": stdout)`)
	if err := fs.Parse(args); err != nil {
		return f, usageError(err.Error())
	}
	switch {
	case fs.NArg() > 0:
		return f, usageError("load takes no arguments")
	case c.Rate < 0 || c.Concurrency < 1 || c.Orders < 0 || c.Duration < 0 || c.Settle < 0:
		return f, usageError("--rate, --orders, --duration and --settle must not be negative, --concurrency at least 1")
	case c.Declines < 0 || c.Declines > 1:
		return f, usageError("--declines must be between 0 and 1")
	case c.Duration == 0 && c.Orders == 0:
		c.Duration = 30 * time.Second
	}
	c.Brokers = kafkaconf.Brokers(envOr(getenv, "KAFKA_BROKERS", "localhost:9092"))
	c.TopicPrefix = getenv("KAFKA_TOPIC_PREFIX")
	return f, nil
}

func envOr(getenv func(string) string, k, def string) string {
	if v := getenv(k); v != "" {
		return v
	}
	return def
}

func runLoad(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	f, err := parseLoad(args, getenv, stderr)
	if err != nil {
		return err
	}
	f.cfg.Progress = stderr
	report, err := loadgen.Run(ctx, f.cfg)
	if err != nil {
		return err
	}
	return writeReport(stdout, report, f.jsonOut)
}

// writeReport prints the report and, when asked, writes it as JSON to a file or stdout.
func writeReport(stdout io.Writer, r loadgen.Report, jsonOut string) error {
	loadgen.Print(stdout, r)
	if jsonOut == "" {
		return nil
	}
	out, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if jsonOut == "-" {
		_, err = fmt.Fprintf(stdout, "%s\n", out)
		return err
	}
	return os.WriteFile(jsonOut, append(out, '\n'), 0o644)
}
