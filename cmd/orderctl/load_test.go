package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/loadgen"
	"github.com/orderpipe/orderpipe/internal/testenv"
)

// The load itself is tested in internal/loadgen; here, the command line around it.

func TestParseLoad(t *testing.T) {
	env := envconf.Map(map[string]string{"API_URL": "http://api:8080", "KAFKA_BROKERS": "k1:9092,k2:9092",
		"KAFKA_TOPIC_PREFIX": "staging."})
	for _, tc := range []struct {
		name string
		args []string
		want loadFlags
	}{
		{
			name: "defaults",
			want: loadFlags{cfg: loadgen.Config{APIURL: "http://api:8080", Brokers: []string{"k1:9092", "k2:9092"},
				TopicPrefix: "staging.", Concurrency: 8, Duration: 30 * time.Second, Currency: "USD", Settle: 30 * time.Second}},
		},
		{
			name: "open loop with a count",
			args: []string{"--api", "http://other", "--rate", "250", "--orders", "1000", "--declines", "0.1",
				"--currency", "EUR", "--settle", "5s", "--json", "out.json"},
			want: loadFlags{jsonOut: "out.json", cfg: loadgen.Config{APIURL: "http://other", Brokers: []string{"k1:9092", "k2:9092"},
				TopicPrefix: "staging.", Rate: 250, Concurrency: 8, Orders: 1000, Declines: 0.1, Currency: "EUR",
				Settle: 5 * time.Second}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseLoad(tc.args, env, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(loadFlags{})); diff != "" {
				t.Errorf("parseLoad(%q) mismatch (-want +got):\n%s", tc.args, diff)
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

func TestWriteReport(t *testing.T) {
	r := loadgen.Report{Sent: 3, Created: 3, DurationS: 1, RatePerS: 3, FinalStatus: map[string]int64{"PAID": 3},
		CreateToFinalMs: loadgen.Percentiles{N: 3, P50: 12, P99: 20}, Backlog: []loadgen.BacklogSample{{AtS: 1, Created: 3, Terminal: 3}}}
	file := filepath.Join(t.TempDir(), "report.json")
	for _, jsonOut := range []string{"", "-", file} {
		var stdout bytes.Buffer
		if err := writeReport(&stdout, r, jsonOut); err != nil {
			t.Fatalf("json %q: %v", jsonOut, err)
		}
		out := stdout.String()
		if !strings.Contains(out, "create → terminal") {
			t.Errorf("json %q: human report missing:\n%s", jsonOut, out)
		}
		var data []byte
		switch jsonOut {
		case "":
			if strings.Contains(out, "{") {
				t.Errorf("no --json, but JSON printed:\n%s", out)
			}
			continue
		case "-":
			data = []byte(out[strings.Index(out, "{"):])
		default:
			var err error
			if data, err = os.ReadFile(file); err != nil {
				t.Fatal(err)
			}
		}
		var got loadgen.Report
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("json %q: %v\n%s", jsonOut, err, data)
		}
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("json %q: report mismatch (-want +got):\n%s", jsonOut, diff)
		}
	}
}
