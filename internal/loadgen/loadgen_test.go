package loadgen

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
	"github.com/orderpipe/orderpipe/paymentsim"
	"github.com/orderpipe/orderpipe/relay"
	"github.com/orderpipe/orderpipe/worker"
)

// inProcessPipeline runs api, relay, worker and paymentsim in this process on the real
// stack, with a topic prefix of its own, and returns the api URL and the prefix.
func inProcessPipeline(t *testing.T) (apiURL, prefix string) {
	t.Helper()
	db := testenv.DB(t)
	prefix = testenv.TopicPrefix(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := orders.NewStore(db, outbox.New(prefix))
	apiSrv := httptest.NewServer(api.New(store, db, quiet, api.Config{}))
	t.Cleanup(apiSrv.Close)
	sim, err := paymentsim.New(paymentsim.Config{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	simSrv := httptest.NewServer(sim)
	t.Cleanup(simSrv.Close)
	r, err := relay.New(db, relay.Config{Brokers: testenv.Brokers()}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(store, worker.Config{Brokers: testenv.Brokers(), TopicPrefix: prefix,
		ConsumerGroup: "load-" + testenv.ID(), PaymentURL: simSrv.URL}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { r.Run(ctx); done <- struct{}{} }()
	go func() { w.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	<-w.Running()
	return apiSrv.URL, prefix
}

func TestRun(t *testing.T) {
	apiURL, prefix := inProcessPipeline(t)
	base := Config{APIURL: apiURL, Brokers: testenv.Brokers(), TopicPrefix: prefix, Settle: 30 * time.Second}
	// The topics must exist before a run's watcher attaches at their end.
	if err := Prime(context.Background(), base, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name        string
		rate        float64
		concurrency int
	}{
		{name: "closed loop", concurrency: 4},
		{name: "open loop", rate: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			cfg.Orders, cfg.Declines, cfg.Rate, cfg.Concurrency = 60, 0.25, tc.rate, tc.concurrency
			cfg.SampleInterval = 100 * time.Millisecond
			r, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent != 60 || r.Created != 60 || len(r.Errors) != 0 {
				t.Errorf("sent %d, created %d, errors %v; want 60, 60, none", r.Sent, r.Created, r.Errors)
			}
			if r.FinalStatus["PAID"]+r.FinalStatus["PAYMENT_FAILED"] != 60 || r.FinalStatus["PAYMENT_FAILED"] != 15 {
				t.Errorf("final status %v, want 60 final of which 15 declined (25%%)", r.FinalStatus)
			}
			if r.PostMs.N != 60 || r.CreateToFinalMs.N != 60 || r.CreateToFinalMs.P50 <= 0 || r.OutboxToKafkaMs.N != 60 {
				t.Errorf("percentiles: POST %+v, create→terminal %+v, outbox→Kafka %+v; want 60 samples each",
					r.PostMs, r.CreateToFinalMs, r.OutboxToKafkaMs)
			}
			if len(r.Backlog) == 0 {
				t.Fatal("no backlog samples")
			}
			if last := r.Backlog[len(r.Backlog)-1]; last.Created != 60 || last.Terminal != 60 || last.Backlog != 0 {
				t.Errorf("last backlog sample %+v, want 60 created, 60 terminal, 0 backlog", last)
			}
			for i, s := range r.Backlog {
				if s.Backlog != s.Created-s.Terminal || (i > 0 && s.AtS < r.Backlog[i-1].AtS) {
					t.Errorf("sample %d %+v: backlog is not created − terminal, or time went back", i, s)
				}
			}
			var out bytes.Buffer
			Print(&out, r)
			for _, want := range []string{"create → terminal", "backlog"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("printed report lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestRunRejects(t *testing.T) {
	ok := Config{APIURL: "http://127.0.0.1:1", Brokers: []string{"127.0.0.1:1"}, Orders: 1}
	for _, tc := range []struct {
		name   string
		change func(*Config)
	}{
		{"no api", func(c *Config) { c.APIURL = "" }},
		{"no brokers", func(c *Config) { c.Brokers = nil }},
		{"negative rate", func(c *Config) { c.Rate = -1 }},
		{"declines above 1", func(c *Config) { c.Declines = 2 }},
		{"no end", func(c *Config) { c.Orders, c.Duration = 0, 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			if err := c.Validate(); err == nil {
				t.Errorf("Validate(%+v) = nil, want an error", c)
			}
			if _, err := Run(context.Background(), c); err == nil {
				t.Errorf("Run(%+v) = nil error, want one", c)
			}
		})
	}

	// Nothing listens at the api address: a clear error, not a hang.
	c := Config{APIURL: "http://" + testenv.FreeAddr(t), Brokers: testenv.Brokers(), TopicPrefix: testenv.TopicPrefix(t),
		Orders: 1}
	if _, err := Run(context.Background(), c); err == nil {
		t.Error("Run against a dead api = nil error, want one")
	}
}

func TestBacklogGrowth(t *testing.T) {
	samples := func(f func(at float64) int64) []BacklogSample {
		var s []BacklogSample
		for at := 1.0; at <= 20; at++ {
			s = append(s, BacklogSample{AtS: at, Backlog: f(at)})
		}
		return s
	}
	for _, tc := range []struct {
		name     string
		backlog  []BacklogSample
		from, to float64
		want     float64
	}{
		{"level", samples(func(float64) int64 { return 40 }), 0, 20, 0},
		{"growing 30/s", samples(func(at float64) int64 { return int64(30 * at) }), 10, 20, 30},
		{"growing only in the first half", samples(func(at float64) int64 { return int64(50 * min(at, 10)) }), 10, 20, 0},
		{"one sample", samples(func(float64) int64 { return 1 }), 5, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Report{Backlog: tc.backlog}.BacklogGrowth(tc.from, tc.to)
			if got < tc.want-1e-9 || got > tc.want+1e-9 {
				t.Errorf("BacklogGrowth(%v, %v) = %v, want %v", tc.from, tc.to, got, tc.want)
			}
		})
	}
}

func TestSendingBacklog(t *testing.T) {
	r := Report{DurationS: 3, Backlog: []BacklogSample{{AtS: 1, Backlog: 5}, {AtS: 2, Backlog: 9}, {AtS: 3, Backlog: 7},
		{AtS: 4, Backlog: 20}}}
	if peak, last := r.SendingBacklog(); peak != 9 || last != 7 {
		t.Errorf("SendingBacklog() = %d, %d; want 9, 7 (the settle time's samples left out)", peak, last)
	}
}
