package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// writeSummary writes dir/latest.md: every benchmark's figures from latest.json, then
// this run's steps, hold and scale-out.
func writeSummary(dir string, base search, hold step, growth float64, growing bool, scale []search) error {
	b, err := os.ReadFile(filepath.Join(dir, "latest.json"))
	if err != nil {
		return err
	}
	var all map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	num := func(k string) string {
		switch v := all[k].(type) {
		case float64:
			if v == float64(int64(v)) {
				return fmt.Sprintf("%d", int64(v))
			}
			return fmt.Sprintf("%.2f", v)
		case nil:
			return "—"
		default:
			return fmt.Sprint(v)
		}
	}
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	f := func(k string) float64 { v, _ := all[k].(float64); return v }

	var w strings.Builder
	m, _ := all["machine"].(map[string]any)
	fmt.Fprintf(&w, "# Benchmark results\n\nWritten by `make bench` (bench/e2ebench) at %s from `latest.json`; machine: "+
		"%v cores (%v), %v GiB, %v/%v, %v.\n", num("updated_at"), m["cpus"], m["cpu_model"], m["mem_gib"], m["goos"],
		m["goarch"], m["go"])
	fmt.Fprintf(&w, "Everything runs on this one machine (Postgres, Kafka, Redis, the daemons and the load generators), "+
		"which is shared: it was %.2f cores busy before the end-to-end run started.\n\n", f("e2e_background_busy_cores"))

	w.WriteString("## Relay (bench/relaybench)\n\n| figure | value | goal |\n|---|---|---|\n")
	fmt.Fprintf(&w, "| relay_lag_p99_ms | %s (p50 %s, max %s) | < 50 |\n", num("relay_lag_p99_ms"), num("relay_lag_p50_ms"), num("relay_lag_max_ms"))
	fmt.Fprintf(&w, "| relay_events_per_s | %s | ≥ 5000 |\n", num("relay_events_per_s"))
	fmt.Fprintf(&w, "| relay_backlog_drain_rows_per_s | %s | ≥ 5000 |\n\n", num("relay_backlog_drain_rows_per_s"))

	w.WriteString("## API (bench/apibench)\n\n| figure | value | goal |\n|---|---|---|\n")
	fmt.Fprintf(&w, "| pgbench_create_tps | %s | |\n| db_limit_orders_per_s | %s | |\n| api_create_rps | %s | |\n",
		num("pgbench_create_tps"), num("db_limit_orders_per_s"), num("api_create_rps"))
	fmt.Fprintf(&w, "| api_ratio | %s | ≥ 0.85 |\n| api_p99_ms (api alone, 70 %% of api_create_rps) | %s | < 50 |\n\n",
		num("api_ratio"), num("api_p99_ms"))

	w.WriteString("## End to end (bench/e2ebench)\n\n| figure | value | goal | |\n|---|---|---|---|\n")
	fmt.Fprintf(&w, "| e2e_orders_per_s (max sustained, 1 worker, 1 relay) | %s | | |\n", num("e2e_orders_per_s"))
	fmt.Fprintf(&w, "| e2e_ratio = e2e_orders_per_s / db_limit_orders_per_s | %s | ≥ 0.75 | %s |\n", num("e2e_ratio"), met(f("e2e_ratio") >= 0.75))
	fmt.Fprintf(&w, "| create_to_terminal_p99_ms at 70 %% (%.0f/s) | %.1f (p50 %.1f) | < 250 | %s |\n", hold.Rate, hold.C2TP99Ms,
		hold.C2TP50Ms, met(hold.C2TP99Ms < 250))
	fmt.Fprintf(&w, "| e2e_api_p99_ms: POST /orders p99 at 70 %% | %.1f | < 50 | %s |\n", hold.APIP99Ms, met(hold.APIP99Ms < 50))
	fmt.Fprintf(&w, "| backlog growth at 70 %% over %s s | %+.2f orders/s (peak %d) | none | %s |\n\n", num("e2e_hold_s"), growth,
		hold.BacklogPeak, met(!growing))

	fmt.Fprintf(&w, "Rising load, %s, %s s per step (open loop):\n\n", base.Layout, num("e2e_step_s"))
	stepTable(&w, base.Steps)
	fmt.Fprintf(&w, "\nCPU in cores during the hold: %s\n\n", cpuLine(hold.CPU))
	if len(scale) > 0 {
		w.WriteString("### Scale-out\n\n| layout | max sustained orders/s | CPU at that rate (cores) |\n|---|---|---|\n")
		for _, s := range append([]search{base}, scale...) {
			layout := s.Layout
			if s.RelaysLeading > 0 {
				layout += fmt.Sprintf(" (leading at the end: %d)", s.RelaysLeading)
			}
			fmt.Fprintf(&w, "| %s | %.0f | %s |\n", layout, s.Max, cpuLine(s.maxStep().CPU))
		}
		for _, s := range scale {
			fmt.Fprintf(&w, "\n%s:\n\n", s.Layout)
			stepTable(&w, s.Steps)
		}
	}
	w.WriteString("\n![p99 latency vs throughput](e2e.png)\n")
	return os.WriteFile(filepath.Join(dir, "latest.md"), []byte(w.String()), 0o644)
}

// render writes latest.md and e2e.png again from dir/latest.json alone (-render), for
// when their format changes: the figures are not measured again.
func render(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "latest.json"))
	if err != nil {
		return err
	}
	var r struct {
		Max      float64            `json:"e2e_orders_per_s"`
		Steps    []step             `json:"e2e_steps"`
		Scale    []search           `json:"e2e_scaleout"`
		HoldRate float64            `json:"e2e_hold_orders_per_s"`
		C2TP50   float64            `json:"create_to_terminal_p50_ms"`
		C2TP99   float64            `json:"create_to_terminal_p99_ms"`
		APIP99   float64            `json:"e2e_api_p99_ms"`
		Peak     int64              `json:"e2e_hold_backlog_peak"`
		CPU      map[string]float64 `json:"e2e_hold_cpu_cores"`
		Growth   float64            `json:"e2e_hold_backlog_growth_per_s"`
		Growing  bool               `json:"e2e_hold_backlog_growing"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	if len(r.Steps) == 0 {
		return fmt.Errorf("%s has no e2e_steps: run e2ebench first", filepath.Join(dir, "latest.json"))
	}
	l := layout{workers: 1, relays: 1}
	base := search{Key: l.key(), Layout: l.String(), Max: r.Max, Steps: r.Steps}
	hold := step{Rate: r.HoldRate, C2TP50Ms: r.C2TP50, C2TP99Ms: r.C2TP99, APIP99Ms: r.APIP99, BacklogPeak: r.Peak,
		CPU: r.CPU, Sustained: !r.Growing}
	if err := chart(filepath.Join(dir, "e2e.png"), base, hold, r.Scale); err != nil {
		return err
	}
	return writeSummary(dir, base, hold, r.Growth, r.Growing, r.Scale)
}

func stepTable(w *strings.Builder, steps []step) {
	w.WriteString("| offered /s | created /s | completed /s | backlog trend /s | backlog, 2nd half | POST p99 ms | " +
		"create→terminal p50 / p99 ms | errors | other programs, cores | sustained |\n")
	w.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range steps {
		fmt.Fprintf(w, "| %.0f | %.0f | %.0f | %+.1f | %.0f | %.1f | %.1f / %.1f | %d | %.2f | %v |\n", s.Rate, s.CreatedPerS,
			s.CompletedPerS, s.GrowthPerS, s.BacklogLate, s.APIP99Ms, s.C2TP50Ms, s.C2TP99Ms, s.Errors, s.CPU["other"], s.Sustained)
	}
}

func cpuLine(m map[string]float64) string {
	var parts []string
	for _, k := range cpuOrder(m) {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
