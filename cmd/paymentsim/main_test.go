package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/internal/envconf"
)

func TestRunRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name, key, value string
	}{
		{"fail rate above 1", "PAYMENTSIM_FAIL_RATE", "1.5"},
		{"decline rate not a number", "PAYMENTSIM_DECLINE_RATE", "lots"},
		{"negative latency", "PAYMENTSIM_LATENCY", "-1ms"},
		{"jitter without a unit", "PAYMENTSIM_LATENCY_JITTER", "20"},
		{"zero slow delay", "PAYMENTSIM_SLOW_DELAY", "0"},
		{"seed not a number", "PAYMENTSIM_SEED", "x"},
		{"ledger in a missing directory", "PAYMENTSIM_LEDGER", "/nonexistent/dir/ledger.jsonl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := envconf.Map(map[string]string{"HTTP_ADDR": "127.0.0.1:0", tt.key: tt.value})
			err := run(context.Background(), env, io.Discard)
			// Config errors name the variable; a ledger that cannot be opened, its path.
			if err == nil || !strings.Contains(err.Error(), tt.key) && !strings.Contains(err.Error(), tt.value) {
				t.Errorf("run with %s=%q = %v, want an error naming the variable or its value", tt.key, tt.value, err)
			}
		})
	}
}

func TestRunServesAndStops(t *testing.T) {
	ledgerPath := filepath.Join(t.TempDir(), "ledger.jsonl")
	env := envconf.Map(map[string]string{
		"HTTP_ADDR":                "127.0.0.1:0",
		"PAYMENTSIM_LEDGER":        ledgerPath,
		"PAYMENTSIM_LATENCY":       "0",
		"PAYMENTSIM_TIMEOUT_DELAY": "1h",
		"PAYMENTSIM_SEED":          "42",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs, logw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, env, logw)
		logw.Close()
	}()
	addr := listeningAddr(t, logs)
	go io.Copy(io.Discard, logs)

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/payments",
		strings.NewReader(`{"orderId":1,"amount":1000,"currency":"USD"}`))
	req.Header.Set("Idempotency-Key", "order-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST = %d, want 201", resp.StatusCode)
	}

	// A request waiting out TimeoutDelay (an hour) must not hold up the shutdown.
	waiting := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/payments",
			strings.NewReader(`{"orderId":2,"amount":1972,"currency":"USD"}`))
		req.Header.Set("Idempotency-Key", "order-2")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		waiting <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); lines(t, ledgerPath) < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the 72 charge never reached the ledger file")
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run = %v, want nil after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run still running 5s after cancel")
	}
	<-waiting
	if got := lines(t, ledgerPath); got != 2 {
		t.Errorf("ledger file has %d lines, want 2", got)
	}
}

// listeningAddr reads JSON log lines until the "listening" one and returns its address.
func listeningAddr(t *testing.T, logs io.Reader) string {
	t.Helper()
	sc := bufio.NewScanner(logs)
	for sc.Scan() {
		var line struct {
			Msg      string `json:"msg"`
			HTTPAddr string `json:"http_addr"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
			return line.HTTPAddr
		}
	}
	t.Fatalf("run logged no listening line (scan error: %v)", sc.Err())
	return ""
}

func lines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}
