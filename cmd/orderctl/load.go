package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// loadConfig is what `orderctl load` was asked to do.
type loadConfig struct {
	apiURL      string
	brokers     []string
	topicPrefix string
	rate        float64       // open loop: requests per second (0: closed loop)
	concurrency int           // closed loop: clients in flight
	duration    time.Duration // stop sending after this long (0: use orders)
	orders      int           // stop after this many requests (0: use duration)
	declines    float64       // share of orders paymentsim declines (amount ending in .51)
	currency    string
	settle      time.Duration // how long to wait for outcomes after the last request
	jsonOut     string        // write the report as JSON here ("-": stdout)
}

// loadReport is the result of a run; --json writes it.
type loadReport struct {
	Sent            int64            `json:"sent"`
	Created         int64            `json:"created"`
	Errors          map[string]int64 `json:"errors"`
	DurationS       float64          `json:"durationS"`
	RatePerS        float64          `json:"ratePerS"`
	PostMs          percentiles      `json:"postLatencyMs"`
	CreateToFinalMs percentiles      `json:"createToTerminalMs"`
	OutboxToKafkaMs percentiles      `json:"outboxToKafkaMs"`
	FinalStatus     map[string]int64 `json:"finalStatus"`
}

type percentiles struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

func percentilesOf(ds []time.Duration) percentiles {
	if len(ds) == 0 {
		return percentiles{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	at := func(p float64) float64 {
		return float64(ds[int(float64(len(ds)-1)*p)].Microseconds()) / 1000
	}
	return percentiles{N: len(ds), P50: at(.5), P90: at(.9), P99: at(.99), P999: at(.999), Max: at(1)}
}

func parseLoad(args []string, getenv func(string) string, stderr io.Writer) (loadConfig, error) {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := loadConfig{}
	fs.StringVar(&c.apiURL, "api", envOr(getenv, "API_URL", "http://localhost:8080"), "api base URL (API_URL)")
	fs.Float64Var(&c.rate, "rate", 0, "open loop: requests per second regardless of answers")
	fs.IntVar(&c.concurrency, "concurrency", 8, "closed loop: requests in flight (ignored with --rate)")
	fs.DurationVar(&c.duration, "duration", 0, "how long to send (default 30s unless --orders)")
	fs.IntVar(&c.orders, "orders", 0, "how many orders to send")
	fs.Float64Var(&c.declines, "declines", 0, "share of orders the payment simulator declines, 0..1")
	fs.StringVar(&c.currency, "currency", "USD", "currency of the orders")
	fs.DurationVar(&c.settle, "settle", 30*time.Second, "how long to wait for outcomes after the last request")
	fs.StringVar(&c.jsonOut, "json", "", `write the report as JSON to this file ("-": stdout)`)
	if err := fs.Parse(args); err != nil {
		return c, usageError(err.Error())
	}
	switch {
	case fs.NArg() > 0:
		return c, usageError("load takes no arguments")
	case c.rate < 0 || c.concurrency < 1 || c.orders < 0 || c.duration < 0 || c.settle < 0:
		return c, usageError("--rate, --orders, --duration and --settle must not be negative, --concurrency at least 1")
	case c.declines < 0 || c.declines > 1:
		return c, usageError("--declines must be between 0 and 1")
	case c.duration == 0 && c.orders == 0:
		c.duration = 30 * time.Second
	}
	c.brokers = kafkaconf.Brokers(envOr(getenv, "KAFKA_BROKERS", "localhost:9092"))
	c.topicPrefix = getenv("KAFKA_TOPIC_PREFIX")
	return c, nil
}

func envOr(getenv func(string) string, k, def string) string {
	if v := getenv(k); v != "" {
		return v
	}
	return def
}

func runLoad(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseLoad(args, getenv, stderr)
	if err != nil {
		return err
	}
	report, err := load(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	printReport(stdout, report)
	if cfg.jsonOut == "" {
		return nil
	}
	out, _ := json.MarshalIndent(report, "", "  ")
	if cfg.jsonOut == "-" {
		_, err = fmt.Fprintf(stdout, "%s\n", out)
		return err
	}
	return os.WriteFile(cfg.jsonOut, append(out, '\n'), 0o644)
}

// outcome is what the payments topic said about an order.
type outcome struct {
	status string
	at     time.Time
}

// watcher follows the orders and payments topics from their current end, recording
// when each order's outcome event arrives and each OrderCreated's outbox → Kafka lag.
type watcher struct {
	mu       sync.Mutex
	outcomes map[int64]outcome
	lags     map[int64]time.Duration // order id → outbox → Kafka lag of its OrderCreated
	stop     func()
}

func watch(cfg loadConfig) (*watcher, error) {
	consumer, err := sarama.NewConsumer(cfg.brokers, kafkaconf.Consumer("orderctl-load"))
	if err != nil {
		return nil, fmt.Errorf("kafka at %v: %w", cfg.brokers, err)
	}
	w := &watcher{outcomes: map[int64]outcome{}, lags: map[int64]time.Duration{}}
	var (
		wg  sync.WaitGroup
		pcs []sarama.PartitionConsumer
	)
	w.stop = func() {
		for _, pc := range pcs {
			pc.AsyncClose()
		}
		wg.Wait()
		consumer.Close()
	}
	for _, topic := range []string{cfg.topicPrefix + events.TopicOrders, cfg.topicPrefix + events.TopicPayments} {
		partitions, err := consumer.Partitions(topic)
		if err != nil {
			w.stop()
			return nil, fmt.Errorf("topic %s: %w", topic, err)
		}
		for _, p := range partitions {
			pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetNewest)
			if err != nil {
				w.stop()
				return nil, fmt.Errorf("consume %s/%d: %w", topic, p, err)
			}
			pcs = append(pcs, pc)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for m := range pc.Messages() {
					w.record(m, time.Now())
				}
			}()
		}
	}
	return w, nil
}

func (w *watcher) record(m *sarama.ConsumerMessage, at time.Time) {
	var typ, ceTime string
	for _, h := range m.Headers {
		switch string(h.Key) {
		case events.MetaType:
			typ = string(h.Value)
		case events.MetaTime:
			ceTime = string(h.Value)
		}
	}
	id, _ := strconv.ParseInt(string(m.Key), 10, 64)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch typ {
	case events.TypeOrderCreated:
		// First delivery only: a resend (at-least-once) is not a second sample.
		if _, seen := w.lags[id]; !seen {
			if t, err := time.Parse(time.RFC3339Nano, ceTime); err == nil && !m.Timestamp.IsZero() {
				w.lags[id] = max(m.Timestamp.Sub(t), 0)
			}
		}
	case events.TypePaymentSucceeded, events.TypePaymentFailed:
		if _, seen := w.outcomes[id]; !seen {
			status := "PAID"
			if typ == events.TypePaymentFailed {
				status = "PAYMENT_FAILED"
			}
			w.outcomes[id] = outcome{status: status, at: at}
		}
	}
}

// load sends the orders and collects the report.
func load(ctx context.Context, cfg loadConfig, progress io.Writer) (loadReport, error) {
	w, err := watch(cfg)
	if err != nil {
		return loadReport{}, err
	}
	defer w.stop()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute}}
	if _, err := client.Get(cfg.apiURL + "/healthz"); err != nil {
		return loadReport{}, fmt.Errorf("api at %s: %w", cfg.apiURL, err)
	}

	var (
		mu      sync.Mutex
		created = map[int64]time.Time{} // order id → when its POST was sent
		posts   []time.Duration
		errs    = map[string]int64{}
		sent    atomic.Int64
		run     = fmt.Sprintf("%d", time.Now().UnixNano())
	)
	send := func(seq int64, scheduled time.Time) {
		amount := "20"
		// Spread declines evenly: order seq is declined when it crosses a multiple of
		// 1/declines, so n orders carry round(n × declines) declines.
		if int64(float64(seq)*cfg.declines) > int64(float64(seq-1)*cfg.declines) {
			amount = "20.51" // paymentsim declines amounts ending in .51
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, cfg.apiURL+"/orders",
			strings.NewReader(`{"customerId":"LOAD","amount":`+amount+`,"currency":"`+cfg.currency+`"}`))
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
		mu.Lock()
		defer mu.Unlock()
		if kind != "" {
			errs[kind]++
			return
		}
		posts = append(posts, lat)
		created[o.ID] = scheduled
	}

	start := time.Now()
	done := func() bool {
		n := sent.Load()
		return ctx.Err() != nil || (cfg.orders > 0 && n >= int64(cfg.orders)) ||
			(cfg.duration > 0 && time.Since(start) >= cfg.duration)
	}
	stopProgress := showProgress(progress, func() string {
		mu.Lock()
		defer mu.Unlock()
		var nerr int64
		for _, n := range errs {
			nerr += n
		}
		p := percentilesOf(append([]time.Duration(nil), posts...))
		w.mu.Lock()
		final := len(w.outcomes)
		w.mu.Unlock()
		return fmt.Sprintf("%6.1fs  sent %d  %.0f/s  errors %d  POST p99 %.1f ms  final %d",
			time.Since(start).Seconds(), sent.Load(), float64(sent.Load())/time.Since(start).Seconds(), nerr, p.P99, final)
	})
	var wg sync.WaitGroup
	if cfg.rate > 0 { // open loop: a request every 1/rate, answered or not
		interval := time.Duration(float64(time.Second) / cfg.rate)
		for next := start; !done(); next = next.Add(interval) {
			time.Sleep(time.Until(next))
			seq := sent.Add(1)
			wg.Add(1)
			go func(at time.Time) { defer wg.Done(); send(seq, at) }(next)
		}
	} else { // closed loop: each client sends its next request when the last is answered
		for i := 0; i < cfg.concurrency; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !done() {
					seq := sent.Add(1)
					if cfg.orders > 0 && seq > int64(cfg.orders) {
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
	deadline := time.Now().Add(cfg.settle)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		mu.Lock()
		w.mu.Lock()
		missing := 0
		for id := range created {
			if _, ok := w.outcomes[id]; !ok {
				missing++
			}
		}
		w.mu.Unlock()
		mu.Unlock()
		if missing == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopProgress()

	mu.Lock()
	defer mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	r := loadReport{Sent: sent.Load(), Created: int64(len(created)), Errors: errs, DurationS: elapsed.Seconds(),
		RatePerS: float64(len(created)) / elapsed.Seconds(), PostMs: percentilesOf(posts),
		FinalStatus: map[string]int64{}}
	var toFinal, lags []time.Duration
	for id, at := range created {
		if lag, ok := w.lags[id]; ok {
			lags = append(lags, lag)
		}
		o, ok := w.outcomes[id]
		if !ok {
			r.FinalStatus["PENDING"]++
			continue
		}
		r.FinalStatus[o.status]++
		toFinal = append(toFinal, o.at.Sub(at))
	}
	r.CreateToFinalMs = percentilesOf(toFinal)
	r.OutboxToKafkaMs = percentilesOf(lags)
	if r.Created == 0 && r.Sent > 0 {
		return r, errors.New("no order was created: see the errors")
	}
	return r, nil
}

// showProgress prints status() once a second: on one rewritten line on a terminal,
// else one line every five seconds. The returned func stops it.
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

func printReport(w io.Writer, r loadReport) {
	fmt.Fprintf(w, "sent %d, created %d in %.1fs (%.0f orders/s)\n", r.Sent, r.Created, r.DurationS, r.RatePerS)
	line := func(name string, p percentiles) {
		fmt.Fprintf(w, "%-22s n=%-6d p50 %8.2f  p90 %8.2f  p99 %8.2f  p99.9 %8.2f  max %8.2f ms\n",
			name, p.N, p.P50, p.P90, p.P99, p.P999, p.Max)
	}
	line("POST /orders", r.PostMs)
	line("create → terminal", r.CreateToFinalMs)
	line("outbox → Kafka", r.OutboxToKafkaMs)
	fmt.Fprintf(w, "final status: %v\n", r.FinalStatus)
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors: %v\n", r.Errors)
	}
}
