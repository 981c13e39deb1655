package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChartAndSummary(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), []byte(`{"db_limit_orders_per_s": 1345, "e2e_ratio": 0.5,
		"relay_lag_p99_ms": 13.58, "machine": {"cpus": 2}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cpu := map[string]float64{"postgres": 0.6, "worker": 0.3, "other": 0.1, "machine": 1.9}
	base := search{Key: "workers1_relays1", Layout: "1 worker(s), 1 relay(s)", Max: 674, Steps: []step{
		{Rate: 404, CompletedPerS: 403, APIP99Ms: 12, C2TP99Ms: 92, Sustained: true, CPU: cpu},
		{Rate: 674, CompletedPerS: 671, APIP99Ms: 66, C2TP99Ms: 419, Sustained: true, CPU: cpu},
		{Rate: 809, CompletedPerS: 533, APIP99Ms: 0, C2TP99Ms: 7392, CPU: cpu}, // 0: drawn at the floor, not lost
	}}
	scale := []search{{Key: "workers2_relays1", Layout: "2 worker(s), 1 relay(s)", Max: 600, Steps: base.Steps[:2]},
		{Key: "workers1_relays2", Layout: "1 worker(s), 2 relay(s)", Max: 650, RelaysLeading: 1}}
	hold := step{Rate: 472, CompletedPerS: 470, APIP99Ms: 30, C2TP99Ms: 200, Sustained: true, CPU: cpu}

	path := filepath.Join(dir, "e2e.png")
	if err := chart(path, base, hold, scale); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if img, err := png.Decode(f); err != nil || img.Bounds().Dx() < 500 {
		t.Errorf("e2e.png: %v, %v; want a PNG image", err, img)
	}
	if out := os.Getenv("E2EBENCH_CHART"); out != "" { // to look at it
		b, _ := os.ReadFile(path)
		os.WriteFile(out, b, 0o644)
	}

	if err := writeSummary(dir, base, hold, 0.1, false, scale); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "latest.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| e2e_ratio = e2e_orders_per_s / db_limit_orders_per_s | 0.50 | ≥ 0.75 | **not met** |",
		"| 809 | 0 | 533 |", "leading at the end: 1", "relay_lag_p99_ms | 13.58", "![p99 latency vs throughput](e2e.png)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("latest.md lacks %q:\n%s", want, md)
		}
	}
}
