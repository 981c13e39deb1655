// Command e2ebench measures the whole pipeline (make bench, after relaybench and
// apibench): the four daemons as processes on the local stack, a fresh database and
// topic prefix, paymentsim answering at once, driven by internal/loadgen.
//
//  1. Rising load: open-loop steps (-step, 20 s each) from 30 % of
//     db_limit_orders_per_s up by 10 % of it, until a step is not sustained, then
//     bisected (-refine) between the last sustained rate and the first failed one →
//     e2e_orders_per_s, the highest sustained rate. A step is sustained when every
//     request got 201, the api took at least 97 % of the offered rate, the backlog
//     (orders created but without an outcome event) did not grow by more than 3 % of
//     the rate per second over the step's second half nor averaged more than one
//     second of arrivals there, and every order reached its outcome within 30 s after
//     the step. The machine is shared: a step that fails
//     while other programs use more than 0.3 cores is run once more (both recorded).
//  2. A hold at 70 % of that rate (-hold, default 5 min; E2E_HOLD) →
//     create_to_terminal_p99_ms, e2e_api_p99_ms, and whether the backlog grew: it
//     did when its trend over the hold (first 10 % left out) adds up to more than one
//     second of arrivals.
//  3. Scale-out: the search again with 2 workers, and with 2 relays (one leads, the
//     other is a hot standby).
//
// e2e_ratio = e2e_orders_per_s / db_limit_orders_per_s, the latter measured by apibench
// in the same make bench and read from bench/results/latest.json. The figures are
// merged there; bench/results/latest.md summarises every benchmark's figures and
// bench/results/e2e.png plots throughput against p99 latency for the steps.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/orderpipe/orderpipe/bench"
	"github.com/orderpipe/orderpipe/internal/loadgen"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

var (
	adminURL   = flag.String("db", envOr("DATABASE_URL", "postgres://orderuser:secret@127.0.0.1:5432/orderdb?sslmode=disable"), "database to create the bench databases from")
	brokers    = flag.String("brokers", envOr("KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka brokers")
	redisURL   = flag.String("redis", envOr("REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis")
	results    = flag.String("results", "bench/results", "where latest.json, latest.md and e2e.png go")
	stepLen    = flag.Duration("step", 20*time.Second, "length of each rising-load step")
	hold       = flag.Duration("hold", envDuration("E2E_HOLD", 5*time.Minute), "length of the run at 70 % of the maximum (E2E_HOLD)")
	startRate  = flag.Float64("start", 0, "first step's rate, orders/s (default 30 % of db_limit_orders_per_s)")
	increment  = flag.Float64("inc", 0, "rate added per step, orders/s (default 10 % of db_limit_orders_per_s)")
	refine     = flag.Int("refine", 2, "bisections between the last sustained and the first failed rate")
	scaleOut   = flag.Bool("scaleout", true, "also search with 2 workers and with 2 relays")
	knownMax   = flag.Float64("max", 0, "skip the search and hold at 70 % of this rate; nothing is recorded")
	partitions = flag.Int("partitions", 0, "create the topics with this many partitions (default: the broker's, 8 on the local stack); the scale-out also runs 16")
	renderOnly = flag.Bool("render", false, "only write latest.md and e2e.png again from latest.json, measuring nothing")
	profileDir = flag.String("profile", "", "take 30 s CPU profiles of api, relay and worker during the hold into this directory")
	slow       = flag.Bool("slow", true, "also search with the payment provider answering in 100-200 ms, and hold at 70 % of that")
	slowHold   = flag.Duration("hold-slow", 2*time.Minute, "length of the run at 70 % of the slow provider's maximum")
	// The worker before key-ordered concurrency (one message per partition at a time).
	baselineRev = flag.String("baseline-worker", "9a9297babde1cfbc4b86332ade171ba3c19793c3", "git revision whose worker is searched beside this tree's, instant provider; empty: skip")
	pairs       = flag.Int("pairs", 2, "side-by-side searches (baseline worker, then this tree's) with -baseline-worker")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envDuration(k string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(k)); err == nil && d > 0 {
		return d
	}
	return def
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2ebench:", err)
		os.Exit(1)
	}
}

// step is one rate held for a while, as measured from outside.
type step struct {
	Rate          float64 `json:"rate"`            // offered, orders/s
	CreatedPerS   float64 `json:"created_per_s"`   // answered 201 by the api
	CompletedPerS float64 `json:"completed_per_s"` // outcome events seen while sending
	GrowthPerS    float64 `json:"backlog_growth_per_s"`
	BacklogPeak   int64   `json:"backlog_peak"`
	// BacklogLate is the mean backlog over the second half of sending.
	BacklogLate float64 `json:"backlog_second_half_mean"`
	APIP99Ms    float64 `json:"api_p99_ms"`
	C2TP50Ms    float64 `json:"create_to_terminal_p50_ms"`
	C2TP99Ms    float64 `json:"create_to_terminal_p99_ms"`
	// RelayP99Ms is outbox → Kafka (commit to the broker's timestamp) of the orders'
	// OrderCreated: the relay's share of create → terminal.
	RelayP99Ms float64 `json:"outbox_to_kafka_p99_ms"`
	Errors     int64   `json:"errors"`
	Pending    int64   `json:"pending_after_settle"`
	Sustained  bool    `json:"sustained"`
	// CPU is each process group's use while sending, in cores (see cpu.go).
	CPU map[string]float64 `json:"cpu_cores"`
}

// search is the rising-load search on one pipeline.
type search struct {
	Key    string  `json:"key"`
	Layout string  `json:"layout"`
	Max    float64 `json:"max_orders_per_s"`
	// RelaysLeading counts the relays whose relay_leader gauge is 1 at the end.
	RelaysLeading int    `json:"relays_leading,omitempty"`
	Steps         []step `json:"steps"`
}

func (s search) maxStep() step {
	for _, st := range s.Steps {
		if st.Sustained && st.Rate == s.Max {
			return st
		}
	}
	return step{}
}

func run(ctx context.Context) error {
	flag.Parse()
	if *renderOnly {
		return render(*results)
	}
	dbLimit, err := readDBLimit()
	if err != nil && *knownMax == 0 {
		return err
	}
	tmp, err := os.MkdirTemp("", "e2ebench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	binDir, logDir := filepath.Join(tmp, "bin"), filepath.Join(tmp, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	if err := build(binDir); err != nil {
		return err
	}
	if *baselineRev != "" && *pairs > 0 && *knownMax == 0 {
		if err := buildBaseline(binDir, *baselineRev); err != nil {
			// A shallow clone or a source archive lacks the revision: measure the rest.
			fmt.Fprintf(os.Stderr, "e2ebench: no side-by-side runs: %v\n", err)
			*baselineRev = ""
		}
	}

	// What the rest of the machine uses before we start: it is shared.
	idle0 := snapshot(groups(nil))
	time.Sleep(3 * time.Second)
	background := coresBetween(idle0, snapshot(groups(nil)))["machine"]
	loadavg, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("e2ebench: db_limit_orders_per_s %.0f (from apibench); machine busy %.2f cores before start; loadavg %s",
		dbLimit, background, loadavg)

	start, inc := *startRate, *increment
	if start == 0 {
		start = math.Round(0.3 * dbLimit)
	}
	if inc == 0 {
		inc = math.Round(0.1 * dbLimit)
	}

	var (
		base     search
		holdStep step
		holdRep  loadgen.Report
	)
	err = withPipeline(ctx, logDir, binDir, layout{workers: 1, relays: 1, partitions: *partitions}, func(p *pipeline) error {
		if *knownMax > 0 {
			base = search{Key: p.layout.key(), Layout: p.layout.String(), Max: *knownMax}
			// Warm up as the search would have: connection pools filled, caches hot.
			if _, _, err := runStep(ctx, p, math.Round(0.7*base.Max), 10*time.Second, time.Second); err != nil {
				return err
			}
		} else {
			fmt.Printf("\nrising load, %s, %v per step\n", p.layout, *stepLen)
			if base, err = rise(ctx, p, start, inc, *refine); err != nil {
				return err
			}
			fmt.Printf("e2e_orders_per_s = %.0f\n", base.Max)
		}
		rate := math.Round(0.7 * base.Max)
		fmt.Printf("\nhold at 70 %% = %.0f orders/s for %v\n", rate, *hold)
		var stopProfile func() error
		if *profileDir != "" {
			stopProfile = profileDuring(ctx, p, *profileDir, min(*hold/4, 10*time.Second), min(*hold/2, 30*time.Second))
		}
		holdStep, holdRep, err = runStep(ctx, p, rate, *hold, time.Second)
		if stopProfile != nil {
			if perr := stopProfile(); perr != nil {
				fmt.Fprintln(os.Stderr, "e2ebench: profile:", perr)
			} else {
				fmt.Printf("CPU profiles in %s (go tool pprof -top FILE)\n", *profileDir)
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	growth := holdRep.BacklogGrowth(0.1*holdRep.DurationS, holdRep.DurationS)
	growing := growth*holdRep.DurationS > holdStep.Rate || holdStep.Pending > 0
	printStep("hold", holdStep)
	var every10 []string
	for _, b := range holdRep.Backlog {
		if int(b.AtS)%10 == 0 && len(every10) < int(b.AtS)/10+1 {
			every10 = append(every10, fmt.Sprint(b.Backlog))
		}
	}
	fmt.Printf("hold: backlog every 10 s: %s\n", strings.Join(every10, " "))
	fmt.Printf("hold: backlog trend %+.2f orders/s over %.0f s (growing: %v), peak %d\n",
		growth, holdRep.DurationS, growing, holdStep.BacklogPeak)

	var scale []search
	if *scaleOut && *knownMax == 0 {
		for _, l := range []layout{{workers: 2, relays: 1, partitions: *partitions}, {workers: 1, relays: 2, partitions: *partitions}, {workers: 1, relays: 1, partitions: 16}} {
			var s search
			err := withPipeline(ctx, logDir, binDir, l, func(p *pipeline) error {
				fmt.Printf("\nrising load, %s\n", l)
				var err error
				if s, err = rise(ctx, p, math.Round(0.8*base.Max), inc, 1); err != nil {
					return err
				}
				if l.relays > 1 {
					for _, v := range p.metric("relay", "relay_leader") {
						s.RelaysLeading += int(v)
					}
					fmt.Printf("relays leading: %d of %d\n", s.RelaysLeading, l.relays)
				}
				return nil
			})
			if err != nil {
				return err
			}
			fmt.Printf("%s: max sustained %.0f orders/s\n", l, s.Max)
			scale = append(scale, s)
		}
	}

	// The payment provider's latency: the same pipeline with paymentsim answering in
	// 100-200 ms. latency_hiding_ratio compares its maximum with the instant provider's.
	var (
		slowSearch   search
		slowHoldStep step
	)
	if *slow && *knownMax == 0 {
		err := withPipeline(ctx, logDir, binDir, layout{workers: 1, relays: 1, partitions: *partitions, slowProvider: true}, func(p *pipeline) error {
			fmt.Printf("\nrising load, %s\n", p.layout)
			var err error
			if slowSearch, err = rise(ctx, p, math.Round(0.3*base.Max), inc, *refine); err != nil {
				return err
			}
			rate := math.Round(0.7 * slowSearch.Max)
			fmt.Printf("\nhold at 70 %% = %.0f orders/s for %v, %s\n", rate, *slowHold, p.layout)
			slowHoldStep, _, err = runStep(ctx, p, rate, *slowHold, time.Second)
			return err
		})
		if err != nil {
			return err
		}
		printStep("hold", slowHoldStep)
	}

	// The worker before and after key-ordered concurrency, instant provider, searched
	// one after the other, in pairs: the spread within each tells the machine's noise.
	sideBySide := map[string][]float64{}
	if *baselineRev != "" && *knownMax == 0 {
		for range *pairs {
			for _, l := range []layout{{workers: 1, relays: 1, partitions: *partitions, baseline: true}, {workers: 1, relays: 1, partitions: *partitions}} {
				var s search
				err := withPipeline(ctx, logDir, binDir, l, func(p *pipeline) error {
					fmt.Printf("\nrising load, %s\n", l)
					var err error
					s, err = rise(ctx, p, math.Round(0.8*base.Max), inc, 1)
					return err
				})
				if err != nil {
					return err
				}
				name := "head" // this tree's worker, with its defaults (DB pool 16; the baseline's was 8)
				if l.baseline {
					name = "baseline"
				}
				sideBySide[name] = append(sideBySide[name], s.Max)
				fmt.Printf("%s: max sustained %.0f orders/s\n", l, s.Max)
			}
		}
	}

	ratio := 0.0
	if dbLimit > 0 {
		ratio = float64(int(base.Max/dbLimit*100)) / 100
	}
	fmt.Printf("\ne2e_orders_per_s = %.0f; db_limit_orders_per_s = %.0f; e2e_ratio = %.2f (goal >= 0.75)\n",
		base.Max, dbLimit, ratio)
	fmt.Printf("at 70 %% (%.0f/s, %v): create_to_terminal_p99_ms = %.1f (goal < 250), e2e_api_p99_ms = %.1f (goal < 50), backlog growing: %v\n",
		holdStep.Rate, *hold, holdStep.C2TP99Ms, holdStep.APIP99Ms, growing)
	for _, s := range scale {
		fmt.Printf("scale-out: %s: %.0f orders/s (1 worker, 1 relay: %.0f)\n", s.Layout, s.Max, base.Max)
	}
	hiding := 0.0
	if slowSearch.Max > 0 && base.Max > 0 {
		hiding = math.Round(slowSearch.Max/base.Max*100) / 100
		fmt.Printf("e2e_orders_per_s_provider_150ms = %.0f; latency_hiding_ratio = %.2f (goal >= 0.8)\n", slowSearch.Max, hiding)
		fmt.Printf("at 70 %% of it (%.0f/s, %v): create_to_terminal_p99_ms = %.1f (goal < 400)\n",
			slowHoldStep.Rate, *slowHold, slowHoldStep.C2TP99Ms)
	}
	if len(sideBySide) > 0 {
		fmt.Printf("side by side, instant provider: baseline worker (%s) %v orders/s, this tree's %v orders/s\n",
			*baselineRev, sideBySide["baseline"], sideBySide["head"])
	}
	if *knownMax > 0 {
		fmt.Println("(-max given: nothing recorded)")
		return nil
	}

	figures := map[string]any{
		"e2e_orders_per_s":              base.Max,
		"e2e_ratio":                     ratio,
		"create_to_terminal_p99_ms":     holdStep.C2TP99Ms,
		"create_to_terminal_p50_ms":     holdStep.C2TP50Ms,
		"e2e_api_p99_ms":                holdStep.APIP99Ms,
		"e2e_hold_orders_per_s":         holdStep.Rate,
		"e2e_hold_s":                    math.Round(holdRep.DurationS),
		"e2e_hold_backlog_growth_per_s": math.Round(growth*100) / 100,
		"e2e_hold_backlog_peak":         holdStep.BacklogPeak,
		"e2e_hold_backlog_growing":      growing,
		"e2e_hold_cpu_cores":            holdStep.CPU,
		"e2e_hold_backlog":              every5s(holdRep.Backlog),
		"e2e_steps":                     base.Steps,
		"e2e_step_s":                    stepLen.Seconds(),
		"e2e_cpu_at_max":                base.maxStep().CPU,
		"e2e_background_busy_cores":     background,
		"e2e_conditions": "all co-located on this machine: Postgres, Kafka, Redis, api, relay, worker, paymentsim " +
			"(latency 0) and the load generator; the machine is shared, see e2e_background_busy_cores",
	}
	scaleFig := map[string]float64{}
	for _, s := range append([]search{base}, scale...) {
		scaleFig[s.Key] = s.Max
	}
	figures["e2e_scaleout_orders_per_s"] = scaleFig
	figures["e2e_scaleout"] = scale
	if slowSearch.Max > 0 {
		figures["e2e_orders_per_s_provider_150ms"] = slowSearch.Max
		figures["latency_hiding_ratio"] = hiding
		figures["create_to_terminal_p99_ms_provider_150ms"] = slowHoldStep.C2TP99Ms
		figures["e2e_hold_provider_150ms"] = slowHoldStep
		figures["e2e_steps_provider_150ms"] = slowSearch.Steps
	}
	if len(sideBySide) > 0 {
		figures["e2e_orders_per_s_side_by_side"] = sideBySide
		figures["e2e_side_by_side_baseline_rev"] = *baselineRev
	}
	if err := bench.Record(*results, figures); err != nil {
		return err
	}
	if err := chart(filepath.Join(*results, "e2e.png"), base, holdStep, scale); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := writeSummary(*results, base, holdStep, growth, growing, scale); err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	fmt.Printf("recorded in %s/latest.json, latest.md and e2e.png\n", *results)
	return nil
}

// readDBLimit reads db_limit_orders_per_s, which apibench records.
func readDBLimit() (float64, error) {
	path := filepath.Join(*results, "latest.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("%w: run go run ./bench/apibench first (make bench does)", err)
	}
	var all map[string]any
	if err := json.Unmarshal(b, &all); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	v, ok := all["db_limit_orders_per_s"].(float64)
	if !ok || v <= 0 {
		return 0, fmt.Errorf("%s has no db_limit_orders_per_s: run go run ./bench/apibench first (make bench does)", path)
	}
	return v, nil
}

// withPipeline starts a pipeline, primes it, runs fn and stops it.
func withPipeline(ctx context.Context, logDir, binDir string, l layout, fn func(*pipeline) error) error {
	p, err := startPipeline(ctx, binDir, logDir, l)
	if err != nil {
		return err
	}
	defer p.stop()
	if err := loadgen.Prime(ctx, loadConfig(p), 90*time.Second); err != nil {
		return errors.Join(err, p.exited())
	}
	return fn(p)
}

func loadConfig(p *pipeline) loadgen.Config {
	return loadgen.Config{APIURL: p.apiURL, Brokers: kafkaconf.Brokers(*brokers), TopicPrefix: p.prefix,
		Settle: 30 * time.Second}
}

// noisy is how much CPU, in cores, other programs may take during a failed step before
// the step is run once more.
const noisy = 0.3

// rise runs steps from start up by inc until one is not sustained, then bisects refine
// times; the result's Max is the highest sustained rate.
func rise(ctx context.Context, p *pipeline, start, inc float64, refine int) (search, error) {
	s := search{Key: p.layout.key(), Layout: p.layout.String()}
	var good, bad float64 // highest sustained, lowest not sustained (0: none yet)
	rate := start
	for refined, retried := 0, false; ; {
		st, _, err := runStep(ctx, p, rate, *stepLen, 500*time.Millisecond)
		if err != nil {
			return s, err
		}
		printStep("step", st)
		s.Steps = append(s.Steps, st)
		if !st.Sustained && st.CPU["other"] > noisy && !retried {
			// The machine is shared: a step that failed while other programs took a
			// good part of it is run once more. Both are recorded.
			fmt.Printf("      other programs used %.2f cores: running the step again\n", st.CPU["other"])
			retried = true
			continue
		}
		retried = false
		if st.Sustained {
			good = max(good, rate)
		} else if bad == 0 || rate < bad {
			bad = rate
		}
		switch {
		case bad == 0:
			rate += inc
		case good == 0:
			if rate -= inc; rate < inc/2 {
				return s, errors.New("the pipeline sustained no rate")
			}
		case refined < refine && bad-good > 0.02*good:
			refined++
			rate = math.Round((good + bad) / 2)
		default:
			s.Max = good
			return s, nil
		}
	}
}

// runStep offers rate for d, waits for the outcomes, and lets stragglers finish
// before returning.
func runStep(ctx context.Context, p *pipeline, rate float64, d, sample time.Duration) (step, loadgen.Report, error) {
	cfg := loadConfig(p)
	cfg.Rate, cfg.Duration, cfg.SampleInterval = rate, d, sample
	// CPU over the sending window, its first second left out.
	cpuc := make(chan map[string]float64, 1)
	go func() {
		roots := groups(p.pids())
		sleep(ctx, time.Second)
		a := snapshot(roots)
		sleep(ctx, d-time.Second)
		cpuc <- coresBetween(a, snapshot(roots))
	}()
	r, err := loadgen.Run(ctx, cfg)
	cpu := <-cpuc
	if err != nil {
		return step{}, r, errors.Join(err, p.exited())
	}
	if err := p.exited(); err != nil {
		return step{}, r, err
	}
	st := step{Rate: rate, CreatedPerS: round1(r.RatePerS), APIP99Ms: r.PostMs.P99, C2TP50Ms: r.CreateToFinalMs.P50,
		C2TP99Ms: r.CreateToFinalMs.P99, RelayP99Ms: r.OutboxToKafkaMs.P99, Pending: r.FinalStatus["PENDING"], CPU: cpu,
		GrowthPerS: round1(r.BacklogGrowth(r.DurationS/2, r.DurationS))}
	st.BacklogPeak, _ = r.SendingBacklog()
	for _, n := range r.Errors {
		st.Errors += n
	}
	var late, n float64
	for _, b := range r.Backlog {
		if b.AtS <= r.DurationS && b.AtS > 0 {
			st.CompletedPerS = round1(float64(b.Terminal) / b.AtS)
		}
		if b.AtS >= r.DurationS/2 && b.AtS <= r.DurationS {
			late += float64(b.Backlog)
			n++
		}
	}
	if n > 0 {
		st.BacklogLate = round1(late / n)
	}
	// Keeping up: the backlog neither grows nor sits high. One that keeps up holds the
	// arrival rate times the create → terminal latency, well under a second's worth.
	st.Sustained = st.Errors == 0 && st.CreatedPerS >= 0.97*rate && st.GrowthPerS <= 0.03*rate &&
		st.BacklogLate <= rate && st.Pending == 0
	if st.Pending > 0 {
		if err := p.waitIdle(ctx, 2*time.Minute); err != nil {
			return st, r, err
		}
	}
	return st, r, ctx.Err()
}

// every5s is the backlog every 5 s as [seconds, orders] pairs, for latest.json.
func every5s(samples []loadgen.BacklogSample) [][2]float64 {
	var out [][2]float64
	next := 0.0
	for _, b := range samples {
		if b.AtS >= next {
			out = append(out, [2]float64{math.Round(b.AtS), float64(b.Backlog)})
			next = math.Round(b.AtS) + 5
		}
	}
	return out
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

func printStep(label string, s step) {
	verdict := "sustained"
	if !s.Sustained {
		verdict = "NOT sustained"
	}
	var cpu []string
	for _, k := range cpuOrder(s.CPU) {
		cpu = append(cpu, fmt.Sprintf("%s %.2f", k, s.CPU[k]))
	}
	fmt.Printf("%s %5.0f/s: created %6.1f/s, completed %6.1f/s, backlog %+6.1f/s (late mean %.0f, peak %d), POST p99 %6.1f ms, "+
		"create→terminal p50 %6.1f p99 %7.1f ms (outbox→Kafka p99 %.1f), errors %d, pending %d: %s\n      cpu (cores): %s\n",
		label, s.Rate, s.CreatedPerS, s.CompletedPerS, s.GrowthPerS, s.BacklogLate, s.BacklogPeak, s.APIP99Ms, s.C2TP50Ms, s.C2TP99Ms,
		s.RelayP99Ms, s.Errors, s.Pending, verdict, strings.Join(cpu, ", "))
}

// profileDuring takes CPU profiles of the daemons for length, after wait; the returned
// func waits for them.
func profileDuring(ctx context.Context, p *pipeline, dir string, wait, length time.Duration) func() error {
	errc := make(chan error, 1)
	go func() {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errc <- err
			return
		}
		select {
		case <-ctx.Done():
			errc <- ctx.Err()
			return
		case <-time.After(wait):
		}
		errc <- p.profile(ctx, dir, int(length.Seconds()))
	}()
	return func() error { return <-errc }
}
