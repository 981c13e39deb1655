// Command apibench measures POST /orders against the database's own limit (make bench):
//
//  1. pgbench runs the API's create transaction (idempotency claim, order insert,
//     outbox insert, stored response) as a custom script → pgbench_create_tps; and an
//     order's whole life (that plus the worker's transaction) → db_limit_orders_per_s,
//     the database's limit for the whole pipeline.
//
//  2. The api binary, on the same fresh database, takes POST /orders with unique
//     Idempotency-Keys from a closed loop of the same concurrency → api_create_rps;
//     api_ratio = api_create_rps / pgbench_create_tps.
//
//  3. An open loop at 70 % of api_create_rps → api_p99_ms (latency from each request's
//     scheduled start, so a stall is not hidden by the loop slowing down).
//
//  4. pgbench runs the worker's transaction on seeded PENDING orders, one order per
//     transaction and eight per transaction → worker_outcome_tx_orders_per_s and
//     worker_outcome_group8_orders_per_s: whether group commits would pay.
//
// With -pool it first runs step 2 for several DB_MAX_CONNS values, which is how the
// api's default pool size was chosen.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/orderpipe/orderpipe/bench"
)

var (
	adminURL    = flag.String("db", envOr("DATABASE_URL", "postgres://orderuser:secret@127.0.0.1:5432/orderdb?sslmode=disable"), "database to create the bench database from")
	results     = flag.String("results", "bench/results", "where latest.json goes")
	concurrency = flag.Int("c", 16, "concurrent clients (pgbench -c and HTTP)")
	duration    = flag.Duration("duration", 20*time.Second, "length of each phase")
	pool        = flag.String("pool", "", "comma-separated DB_MAX_CONNS values to compare first (e.g. 4,8,16,32)")
	outcomeOnly = flag.Bool("outcome-only", false, "only step 4, the worker's transaction alone and in groups of eight")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "apibench:", err)
		os.Exit(1)
	}
}

func run() error {
	flag.Parse()
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "apibench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	apiBin := filepath.Join(dir, "api")
	if out, err := exec.Command("go", "build", "-o", apiBin, "./cmd/api").CombinedOutput(); err != nil {
		return fmt.Errorf("build api: %v\n%s", err, out)
	}

	dbURL, drop, err := bench.FreshDB(ctx, *adminURL, "bench_api")
	if err != nil {
		return err
	}
	defer drop()
	if *outcomeOnly {
		single, group, err := outcomeCommits(ctx, dbURL, dir)
		if err != nil {
			return err
		}
		return bench.Record(*results, map[string]any{
			"worker_outcome_tx_orders_per_s":     float64(int(single)),
			"worker_outcome_group8_orders_per_s": float64(int(group)),
		})
	}

	tps, err := pgbench(dbURL, dir, "create", createScript)
	if err != nil {
		return fmt.Errorf("pgbench: %w", err)
	}
	fmt.Printf("pgbench create transaction: %.0f TPS (-c %d)\n", tps, *concurrency)

	if *pool != "" {
		for _, v := range strings.Split(*pool, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("-pool: %w", err)
			}
			r, err := withAPI(apiBin, dbURL, n, func(base string) (result, error) { return closedLoop(base, *duration/2) })
			if err != nil {
				return err
			}
			fmt.Printf("DB_MAX_CONNS=%-3d %6.0f orders/s  p50 %6.2f ms  p99 %6.2f ms\n", n, r.rate, bench.Ms(r.p50), bench.Ms(r.p99))
		}
	}

	var max, at70 result
	_, err = withAPI(apiBin, dbURL, 0, func(base string) (result, error) {
		if max, err = closedLoop(base, *duration); err != nil {
			return result{}, err
		}
		at70, err = openLoop(base, 0.7*max.rate, *duration)
		return at70, err
	})
	if err != nil {
		return err
	}
	// Last, so that its extra writes do not weigh on the api's phases.
	whole, err := pgbench(dbURL, dir, "whole-life", wholeLifeScript)
	if err != nil {
		return fmt.Errorf("pgbench: %w", err)
	}
	fmt.Printf("pgbench whole life of an order (create + worker transaction): %.0f orders/s (-c %d)\n", whole, *concurrency)
	single, group, err := outcomeCommits(ctx, dbURL, dir)
	if err != nil { // a side measurement: the api's figures are recorded anyway
		fmt.Fprintln(os.Stderr, "apibench: worker transaction:", err)
	}
	ratio := max.rate / tps
	fmt.Printf("api POST /orders: %.0f orders/s (closed loop, %d clients), p50 %.2f ms, p99 %.2f ms, errors %d\n",
		max.rate, *concurrency, bench.Ms(max.p50), bench.Ms(max.p99), max.errors)
	fmt.Printf("api at 70%% (%.0f/s open loop): p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, errors %d\n",
		at70.rate, bench.Ms(at70.p50), bench.Ms(at70.p99), bench.Ms(at70.p999), at70.errors)
	fmt.Printf("api_ratio = %.2f (goal >= 0.85); api_p99_ms = %.2f (goal < 50)\n", ratio, bench.Ms(at70.p99))
	figures := map[string]any{
		"pgbench_create_tps":    float64(int(tps)),
		"db_limit_orders_per_s": float64(int(whole)),
		"api_create_rps":        float64(int(max.rate)),
		"api_ratio":             ratio,
		"api_p99_ms":            bench.Ms(at70.p99),
		"api_p50_ms":            bench.Ms(at70.p50),
		"api_max_load_p99_ms":   bench.Ms(max.p99),
		"api_concurrency":       *concurrency,
	}
	if single > 0 { // whether the worker should record several orders' outcomes per transaction
		figures["worker_outcome_tx_orders_per_s"] = float64(int(single))
		figures["worker_outcome_group8_orders_per_s"] = float64(int(group))
	}
	return bench.Record(*results, figures)
}

// outcomeCommits measures the worker's transaction on seeded PENDING orders, sent as
// orders.RecordOutcome sends it (two pipelined round trips: BEGIN with the inbox entry
// and forward-only status change in one statement; then the outcome event in the
// outbox and COMMIT), one order per transaction and eight per transaction (a group
// commit: the eight commit or abort together), in orders/s: whether group commits
// would pay. Each is run twice, alternating; the figures are the means.
func outcomeCommits(ctx context.Context, dbURL, dir string) (single, group8 float64, err error) {
	const seeded = 2_000_000
	out, err := exec.CommandContext(ctx, psqlBin(), "-At", dbURL, "-c", "SELECT coalesce(max(id), 0) FROM orders").CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("orders so far: %v\n%s", err, out)
	}
	base, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, 0, fmt.Errorf("orders so far: %q", out)
	}
	seed := exec.CommandContext(ctx, psqlBin(), "-q", "-v", "ON_ERROR_STOP=1", dbURL, "-c",
		fmt.Sprintf(`INSERT INTO orders (customer_id, amount_minor, currency) SELECT 'CUST001', 20000, 'USD' FROM generate_series(1, %d)`, seeded),
		"-c", "VACUUM ANALYZE orders")
	if out, err := seed.CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("seed orders: %v\n%s", err, out)
	}
	// script pays n orders per transaction, drawn from ids lo..hi.
	script := func(n, lo, hi int) string {
		var sets, updates, inserts string
		for i := range n {
			v := fmt.Sprintf("id%d", i)
			sets += fmt.Sprintf("\\set %s random(%d, %d)\n", v, lo, hi)
			updates += strings.ReplaceAll(outcomeUpdate, ":id", ":"+v) + "\n"
			inserts += strings.ReplaceAll(outcomeInsert, ":id", ":"+v) + "\n"
		}
		return sets + "\\startpipeline\nBEGIN;\n" + updates + "\\endpipeline\n\\startpipeline\n" + inserts + "COMMIT;\n\\endpipeline\n"
	}
	// Each run pays orders of its own quarter of the seeded ones, so that none finds
	// another's decided.
	quarter := seeded / 4
	for round := range 2 {
		lo := base + 2*round*quarter + 1
		tps, err := pgbench(dbURL, dir, "outcome", script(1, lo, lo+quarter-1))
		if err != nil {
			return 0, 0, err
		}
		single += tps / 2
		if tps, err = pgbench(dbURL, dir, "outcome-group8", script(8, lo+quarter, lo+2*quarter-1)); err != nil {
			return 0, 0, err
		}
		group8 += 8 * tps / 2
	}
	fmt.Printf("worker transaction: %.0f orders/s one per transaction, %.0f orders/s eight per transaction (x%.2f) (-c %d)\n",
		single, group8, group8/single, *concurrency)
	return single, group8, nil
}

// outcomeUpdate and outcomeInsert are the worker's two statements for order :id, as
// orders.RecordOutcome sends them (a seeded order decided before would change nothing).
const (
	outcomeUpdate = `WITH inbox AS (INSERT INTO processed_messages (handler, order_id, message_id) VALUES ('payment', :id, 'm-' || :client_id || '-' || :id || '-' || random()) ON CONFLICT DO NOTHING RETURNING 1) UPDATE orders SET status = 'PAID', version = version + 1, updated_at = now() WHERE id = :id AND status = 'PENDING' AND EXISTS (SELECT 1 FROM inbox) RETURNING id, customer_id, amount_minor, currency, status, version, created_at, updated_at, payment_key;`
	outcomeInsert = `INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id) VALUES (gen_random_uuid()::text, '{"destination_topic":"payments","uuid":"0c5f3f2e-5d3c-4a8e-9c55-6c0f5b8e7a11","payload":"eyJvcmRlcklkIjoxLCJwYXltZW50SWQiOiJwYXlfMSIsImFtb3VudE1pbm9yIjoyMDAwMCwiY3VycmVuY3kiOiJVU0QiLCJwYWlkQXQiOiIyMDI2LTExLTI1VDAxOjAzOjMzLjY2MDgzNVoifQ==","metadata":{"ce_id":"0c5f3f2e-5d3c-4a8e-9c55-6c0f5b8e7a11","ce_source":"/orderpipe/payments","ce_specversion":"1.0","ce_subject":"1","ce_time":"2026-11-25T01:03:33.660835Z","ce_type":"payments.payment.succeeded.v1","content-type":"application/json"}}', NULL, pg_current_xact_id());`
)

func psqlBin() string {
	if _, err := exec.LookPath("psql"); err == nil {
		return "psql"
	}
	return "/usr/lib/postgresql/15/bin/psql"
}

// createScript is the api's create transaction with a fresh Idempotency-Key, written
// with the same statements and row sizes (the outbox payload is a real envelope).
const createScript = `\set k random(1, 9000000000000000000)
BEGIN;
INSERT INTO idempotency_keys (key, request_hash, expires_at) VALUES ('k-' || :client_id || '-' || :k, '\x0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef', now() + make_interval(secs => 86400)) ON CONFLICT (key) DO NOTHING;
INSERT INTO orders (customer_id, amount_minor, currency) VALUES ('CUST001', 20000, 'USD') RETURNING id, customer_id, amount_minor, currency, status, version, created_at, updated_at, payment_key;
INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id) VALUES (gen_random_uuid()::text, '{"destination_topic":"orders","uuid":"7bd446c6-1097-4a74-b200-5eaa2faa943f","payload":"eyJvcmRlcklkIjoxLCJjdXN0b21lcklkIjoiQ1VTVDAwMSIsImFtb3VudE1pbm9yIjoyMDAwMCwiY3VycmVuY3kiOiJVU0QiLCJjcmVhdGVkQXQiOiIyMDI2LTExLTI1VDAxOjAzOjMzLjY2MDgzNVoifQ==","metadata":{"ce_id":"7bd446c6-1097-4a74-b200-5eaa2faa943f","ce_source":"/orderpipe/orders","ce_specversion":"1.0","ce_subject":"1","ce_time":"2026-11-25T01:03:33.660835Z","ce_type":"orders.order.created.v1","content-type":"application/json"}}', NULL, pg_current_xact_id());
UPDATE idempotency_keys SET status_code = 201, response_body = '\x7b226964223a312c22637573746f6d65724964223a2243555354303031222c22616d6f756e74223a3230302c2263757272656e6379223a22555344222c22737461747573223a2250454e44494e47222c22637265617465644174223a22323032362d31312d32355430313a30333a33332e3636303833355a222c22757064617465644174223a22323032362d31312d32355430313a30333a33332e3636303833355a227d', order_id = currval(pg_get_serial_sequence('orders', 'id')) WHERE key = 'k-' || :client_id || '-' || :k;
COMMIT;
`

// wholeLifeScript is an order's whole life in the database: the api's create
// transaction, then the worker's (inbox entry, forward-only status change, outcome event
// in the outbox). Its rate is the database's limit for the pipeline: db_limit_orders_per_s.
const wholeLifeScript = createScript + `BEGIN;
INSERT INTO processed_messages (handler, order_id, message_id) VALUES ('payment', currval(pg_get_serial_sequence('orders', 'id')), 'm-' || :client_id || '-' || :k) ON CONFLICT DO NOTHING;
UPDATE orders SET status = 'PAID', version = version + 1, updated_at = now() WHERE id = (SELECT currval(pg_get_serial_sequence('orders', 'id'))) AND status = 'PENDING' RETURNING id, customer_id, amount_minor, currency, status, version, created_at, updated_at, payment_key;
INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id) VALUES (gen_random_uuid()::text, '{"destination_topic":"payments","uuid":"0c5f3f2e-5d3c-4a8e-9c55-6c0f5b8e7a11","payload":"eyJvcmRlcklkIjoxLCJwYXltZW50SWQiOiJwYXlfMSIsImFtb3VudE1pbm9yIjoyMDAwMCwiY3VycmVuY3kiOiJVU0QiLCJwYWlkQXQiOiIyMDI2LTExLTI1VDAxOjAzOjMzLjY2MDgzNVoifQ==","metadata":{"ce_id":"0c5f3f2e-5d3c-4a8e-9c55-6c0f5b8e7a11","ce_source":"/orderpipe/payments","ce_specversion":"1.0","ce_subject":"1","ce_time":"2026-11-25T01:03:33.660835Z","ce_type":"payments.payment.succeeded.v1","content-type":"application/json"}}', NULL, pg_current_xact_id());
COMMIT;
`

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

func pgbench(dbURL, dir, name, sql string) (float64, error) {
	script := filepath.Join(dir, name+".sql")
	if err := os.WriteFile(script, []byte(sql), 0o644); err != nil {
		return 0, err
	}
	bin := "pgbench"
	if _, err := exec.LookPath(bin); err != nil {
		bin = "/usr/lib/postgresql/15/bin/pgbench"
	}
	out, err := exec.Command(bin, "-n", "-M", "prepared", "-c", strconv.Itoa(*concurrency), "-j", "2",
		"-T", strconv.Itoa(int(duration.Seconds())), "-f", script, dbURL).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v\n%s", err, out)
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no tps in pgbench output:\n%s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// withAPI runs the api binary on dbURL (poolSize 0: its default) during fn.
func withAPI(bin, dbURL string, poolSize int, fn func(base string) (result, error)) (result, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "HTTP_ADDR="+addr, "DATABASE_URL="+dbURL, "RATE_LIMIT=0")
	if poolSize > 0 {
		cmd.Env = append(cmd.Env, "DB_MAX_CONNS="+strconv.Itoa(poolSize))
	}
	cmd.Stdout = io.Discard // the access log is written, as in production, and dropped here
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	base := "http://" + addr
	for i := 0; ; i++ {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 200 {
			return result{}, fmt.Errorf("api did not start: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fn(base)
}

type result struct {
	rate                float64
	p50, p99, p999, max time.Duration
	errors              int64
}

var keySeq atomic.Int64

func client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute}}
}

func post(c *http.Client, base string) error {
	req, _ := http.NewRequest(http.MethodPost, base+"/orders",
		strings.NewReader(`{"customerId":"CUST001","amount":200,"currency":"USD"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", fmt.Sprintf("bench-%d-%d", os.Getpid(), keySeq.Add(1)))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func summarize(lats []time.Duration, errs int64, elapsed time.Duration) result {
	return result{rate: float64(len(lats)) / elapsed.Seconds(), p50: bench.Percentile(lats, 50),
		p99: bench.Percentile(lats, 99), p999: bench.Percentile(lats, 99.9), max: bench.Percentile(lats, 100), errors: errs}
}

// wrkScript makes every request of a wrk run a new order: a unique Idempotency-Key from
// the run (argument 1), the thread and a counter.
const wrkScript = `
wrk.method = "POST"
wrk.body = '{"customerId":"CUST001","amount":200,"currency":"USD"}'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args) run = args[1] end
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, nil, {["Content-Type"] = "application/json",
    ["Idempotency-Key"] = run .. "-" .. tid .. "-" .. n})
end
`

// closedLoop runs -c connections back to back for d with wrk, after a 2 s warm-up. The
// client is C, as pgbench's is: a Go client would take a good part of the two cores the
// api and Postgres share, and the ratio would measure the client as much as the api.
func closedLoop(base string, d time.Duration) (result, error) {
	dir, err := os.MkdirTemp("", "apibench-wrk")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "orders.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		return result{}, err
	}
	wrk := func(d time.Duration, run string) (string, error) {
		out, err := exec.Command("wrk", "-t2", "-c"+strconv.Itoa(*concurrency), "-d"+d.String(), "--latency",
			"-s", script, base+"/orders", "--", run).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("wrk (make bench installs it: stack/stack.sh tools): %v\n%s", err, out)
		}
		return string(out), nil
	}
	prefix := fmt.Sprintf("bench-%d-%d", os.Getpid(), keySeq.Add(1))
	if _, err := wrk(2*time.Second, prefix+"w"); err != nil {
		return result{}, err
	}
	out, err := wrk(d, prefix)
	if err != nil {
		return result{}, err
	}
	return parseWrk(out)
}

var (
	wrkRate     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkLatency  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSockErrs = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// parseWrk reads the rate, the median and p99 latency and the errors of a wrk report.
func parseWrk(out string) (result, error) {
	m := wrkRate.FindStringSubmatch(out)
	if m == nil {
		return result{}, fmt.Errorf("no rate in wrk's report:\n%s", out)
	}
	var r result
	r.rate, _ = strconv.ParseFloat(m[1], 64)
	for _, l := range wrkLatency.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(l[2], 64)
		d := time.Duration(v * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[l[3]]))
		if l[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.errors += n
	}
	if m := wrkSockErrs.FindStringSubmatch(out); m != nil {
		for _, v := range m[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			r.errors += n
		}
	}
	if r.errors > 0 {
		return r, fmt.Errorf("wrk saw %d failed requests:\n%s", r.errors, out)
	}
	return r, nil
}

// openLoop sends at rate per second for d regardless of answers; each latency counts
// from the request's scheduled start.
func openLoop(base string, rate float64, d time.Duration) (result, error) {
	c := client()
	interval := time.Duration(float64(time.Second) / rate)
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs atomic.Int64
		wg   sync.WaitGroup
	)
	start := time.Now()
	for next := start; next.Before(start.Add(d)); next = next.Add(interval) {
		time.Sleep(time.Until(next))
		wg.Add(1)
		go func(scheduled time.Time) {
			defer wg.Done()
			if err := post(c, base); err != nil {
				errs.Add(1)
				return
			}
			lat := time.Since(scheduled)
			mu.Lock()
			lats = append(lats, lat)
			mu.Unlock()
		}(next)
	}
	wg.Wait()
	return summarize(lats, errs.Load(), d), nil
}
