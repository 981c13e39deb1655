// Package loadgen drives the pipeline with orders through the api and measures it from
// the outside: POST latency, create → terminal latency (from the outcome events on
// Kafka), outbox → Kafka lag, and the backlog of accepted orders still without an
// outcome, sampled over time. `orderctl load` and bench/e2ebench both run it.
package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is what one run does.
type Config struct {
	// APIURL is the api's base URL.
	APIURL string
	// Brokers and TopicPrefix locate the orders and payments topics, which must exist:
	// the run follows them from their current end (see Prime).
	Brokers     []string
	TopicPrefix string
	// Rate > 0 is an open loop: that many requests per second, answered or not, each
	// latency counted from the request's scheduled start so a stall is not hidden by the
	// loop slowing down. 0 is a closed loop of Concurrency clients.
	Rate float64
	// Concurrency is the closed loop's number of requests in flight. Default 8.
	Concurrency int
	// Duration stops sending after this long, Orders after this many requests; at least
	// one of them must be set.
	Duration time.Duration
	Orders   int
	// Declines is the share of orders the payment simulator declines, 0..1 (amounts
	// ending in .51), spread evenly over the run.
	Declines float64
	// Currency of the orders. Default USD.
	Currency string
	// Settle is how long to wait for outstanding outcomes after the last request.
	Settle time.Duration
	// SampleInterval is how often the backlog is sampled. Default 1s.
	SampleInterval time.Duration
	// Progress, when set, gets a status line every second on a terminal, else every 5 s.
	Progress io.Writer
}

func (c *Config) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Currency == "" {
		c.Currency = "USD"
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = time.Second
	}
}

// Validate reports a configuration Run cannot use.
func (c Config) Validate() error {
	switch {
	case c.APIURL == "":
		return errors.New("no api URL")
	case len(c.Brokers) == 0:
		return errors.New("no Kafka brokers")
	case c.Rate < 0 || c.Concurrency < 0 || c.Orders < 0 || c.Duration < 0 || c.Settle < 0 || c.SampleInterval < 0:
		return errors.New("rate, concurrency, orders, duration, settle and sample interval must not be negative")
	case c.Declines < 0 || c.Declines > 1:
		return errors.New("declines must be between 0 and 1")
	case c.Duration == 0 && c.Orders == 0:
		return errors.New("neither a duration nor a number of orders")
	}
	return nil
}

// Run sends the orders, waits up to Settle for their outcomes and reports. It returns
// an error when the topics cannot be followed, the api does not answer /healthz, or no
// order at all was created; failed requests are counted in the report, not returned.
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	t := newTracker()
	stopWatch, err := watch(cfg.Brokers, cfg.TopicPrefix, t)
	if err != nil {
		return Report{}, err
	}
	defer stopWatch()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute}}
	defer client.CloseIdleConnections()
	if resp, err := client.Get(cfg.APIURL + "/healthz"); err != nil {
		return Report{}, fmt.Errorf("api at %s: %w", cfg.APIURL, err)
	} else {
		resp.Body.Close()
	}

	var (
		sent atomic.Int64
		run  = strconv.FormatInt(time.Now().UnixNano(), 10)
	)
	send := func(seq int64, scheduled time.Time) {
		amount := "20"
		// Order seq is declined when seq × declines crosses an integer, so n orders carry
		// round(n × declines) declines, evenly spread.
		if int64(float64(seq)*cfg.Declines) > int64(float64(seq-1)*cfg.Declines) {
			amount = "20.51" // paymentsim declines amounts ending in .51
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, cfg.APIURL+"/orders",
			strings.NewReader(`{"customerId":"LOAD","amount":`+amount+`,"currency":"`+cfg.Currency+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "load-"+run+"-"+strconv.FormatInt(seq, 10))
		resp, err := client.Do(req)
		lat := time.Since(scheduled)
		var (
			o    struct{ ID int64 }
			kind string
		)
		switch {
		case err != nil:
			kind = "transport"
			if ctx.Err() != nil {
				return // interrupted: not an error of the system under load
			}
		case resp.StatusCode != http.StatusCreated:
			kind = strconv.Itoa(resp.StatusCode)
		case json.NewDecoder(resp.Body).Decode(&o) != nil || o.ID == 0:
			kind = "bad body"
		}
		if resp != nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if kind != "" {
			t.failed(kind)
			return
		}
		t.accepted(o.ID, scheduled, lat)
	}

	start := time.Now()
	stopSampling := t.sample(start, cfg.SampleInterval)
	done := func() bool {
		return ctx.Err() != nil || (cfg.Orders > 0 && sent.Load() >= int64(cfg.Orders)) ||
			(cfg.Duration > 0 && time.Since(start) >= cfg.Duration)
	}
	stopProgress := func() {}
	if cfg.Progress != nil {
		stopProgress = showProgress(cfg.Progress, func() string { return t.status(start, sent.Load()) })
	}
	var wg sync.WaitGroup
	if cfg.Rate > 0 { // open loop: a request every 1/rate, answered or not
		interval := time.Duration(float64(time.Second) / cfg.Rate)
		for next := start; !done(); next = next.Add(interval) {
			time.Sleep(time.Until(next))
			seq := sent.Add(1)
			wg.Add(1)
			go func(at time.Time) { defer wg.Done(); send(seq, at) }(next)
		}
	} else { // closed loop: each client sends its next request when the last is answered
		for range cfg.Concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !done() {
					seq := sent.Add(1)
					if cfg.Orders > 0 && seq > int64(cfg.Orders) {
						sent.Add(-1)
						return
					}
					send(seq, time.Now())
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	// Wait for every created order's outcome, or for the settle time.
	deadline := time.Now().Add(cfg.Settle)
	for time.Now().Before(deadline) && ctx.Err() == nil && t.outstanding() > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	samples := stopSampling()
	stopProgress()

	r := t.report(sent.Load(), elapsed)
	r.Backlog = samples
	if r.Created == 0 && r.Sent > 0 {
		return r, errors.New("no order was created: see the errors")
	}
	return r, nil
}

// Prime sends one order at a time until the topics exist and an order has reached its
// outcome, or until timeout. A fresh pipeline creates its topics on first use (asking
// for a missing topic's partitions creates it on a broker that auto-creates topics), and
// Run follows them from their end, so it needs them.
func Prime(ctx context.Context, cfg Config, timeout time.Duration) error {
	one := cfg
	one.Rate, one.Concurrency, one.Orders, one.Duration, one.Progress = 0, 1, 1, 0, nil
	one.Settle = min(timeout, 30*time.Second)
	deadline := time.Now().Add(timeout)
	for {
		r, err := Run(ctx, one)
		if err == nil && r.FinalStatus["PENDING"] == 0 && r.Created == 1 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("one order: %d created, final status %v, errors %v", r.Created, r.FinalStatus, r.Errors)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("pipeline not ready after %v: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// showProgress prints status() once a second on a terminal (one rewritten line), else
// one line every five seconds. The returned func stops it.
func showProgress(w io.Writer, status func() string) func() {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	every := 5 * time.Second
	if tty {
		every = time.Second
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				if tty {
					fmt.Fprintln(w)
				}
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r%s ", status())
				} else {
					fmt.Fprintln(w, status())
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}
