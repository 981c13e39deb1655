package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/envconf"
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

func TestLoad(t *testing.T) {
	apiURL, prefix := inProcessPipeline(t)
	env := envconf.Map(map[string]string{"API_URL": apiURL, "KAFKA_TOPIC_PREFIX": prefix,
		"KAFKA_BROKERS": strings.Join(testenv.Brokers(), ",")})
	// The topics must exist before the load's watcher attaches at their end.
	warm := loadConfig{apiURL: apiURL, brokers: testenv.Brokers(), topicPrefix: prefix, orders: 1, concurrency: 1,
		currency: "USD", settle: 30 * time.Second}
	for {
		if _, err := load(context.Background(), warm, io.Discard); err == nil {
			break
		} else if !strings.Contains(err.Error(), "topic") && !strings.Contains(err.Error(), "consume") {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, mode := range [][]string{{"--concurrency", "4"}, {"--rate", "100"}} {
		t.Run(mode[0], func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"--orders", "60", "--declines", "0.25", "--json", "-"}, mode...)
			if err := runLoad(context.Background(), args, env, &stdout, &stderr); err != nil {
				t.Fatalf("load: %v\n%s", err, stderr.String())
			}
			out := stdout.String()
			var r loadReport
			if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); err != nil {
				t.Fatalf("--json report: %v\n%s", err, out)
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
			if !strings.Contains(out, "create → terminal") {
				t.Errorf("human report missing:\n%s", out)
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	for _, args := range [][]string{{"--declines", "2"}, {"--concurrency", "0"}, {"--rate", "-1"}, {"extra"}, {"--bogus"}} {
		err := runLoad(context.Background(), args, envconf.Map(nil), io.Discard, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("load %q = %v, want a usage error", args, err)
		}
	}
	// Nothing listens at the api address: a clear error, not a hang.
	env := envconf.Map(map[string]string{"API_URL": "http://" + testenv.FreeAddr(t),
		"KAFKA_BROKERS": strings.Join(testenv.Brokers(), ","), "KAFKA_TOPIC_PREFIX": testenv.TopicPrefix(t)})
	err := runLoad(context.Background(), []string{"--orders", "1"}, env, io.Discard, io.Discard)
	if err == nil {
		t.Error("load against a dead api = nil, want an error")
	}
}
