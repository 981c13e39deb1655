package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/bench"
	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// layout is how many worker and relay processes a pipeline runs, and how many
// partitions its topics have (0: the broker's default, 8 on the local stack).
type layout struct {
	workers, relays, partitions int
	// slowProvider has paymentsim answer in 100 ms plus up to 100 ms (mean 150 ms), as
	// real providers do, instead of at once.
	slowProvider bool
	// baseline runs the worker built from -baseline-worker instead of this tree's.
	baseline bool
}

func (l layout) String() string {
	s := fmt.Sprintf("%d worker(s), %d relay(s)", l.workers, l.relays)
	if l.partitions > 0 {
		s += fmt.Sprintf(", %d partitions", l.partitions)
	}
	if l.slowProvider {
		s += ", provider 100-200 ms"
	}
	if l.baseline {
		s += ", baseline worker " + *baselineRev
	}
	return s
}

// key names the layout in latest.json.
func (l layout) key() string {
	k := fmt.Sprintf("workers%d_relays%d", l.workers, l.relays)
	if l.partitions > 0 {
		k += fmt.Sprintf("_partitions%d", l.partitions)
	}
	if l.slowProvider {
		k += "_provider150ms"
	}
	if l.baseline {
		k += "_baselineworker"
	}
	return k
}

// pipeline is the four daemons as processes on a fresh database and topic prefix of
// their own, against the local stack.
type pipeline struct {
	layout  layout
	dbURL   string
	prefix  string
	apiURL  string
	daemons []*daemon
	dropDB  func()
}

// daemon is one running binary.
type daemon struct {
	name     string // api, relay, worker, paymentsim
	adminURL string // where /healthz and /metrics answer
	debugURL string // pprof, empty for paymentsim
	logPath  string
	cmd      *exec.Cmd
	done     chan struct{}
}

// build compiles the daemons into dir.
func build(dir string) error {
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/api", "./cmd/relay", "./cmd/worker", "./cmd/paymentsim")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build daemons: %v\n%s", err, out)
	}
	return nil
}

// buildBaseline builds the worker of git revision rev as dir/worker-baseline, from an
// export of that revision (the module cache serves its dependencies).
func buildBaseline(dir, rev string) error {
	src, err := os.MkdirTemp("", "e2ebench-baseline")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	export := exec.Command("sh", "-c", `git archive --format=tar "$1" | tar -x -C "$2"`, "sh", rev, src)
	if out, err := export.CombinedOutput(); err != nil {
		return fmt.Errorf("export %s: %v\n%s", rev, err, out)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "worker-baseline"), "./cmd/worker")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the worker of %s: %v\n%s", rev, err, out)
	}
	return nil
}

// startPipeline starts paymentsim (latency 0), the api, the relays and the workers.
// On error what was started is stopped again.
func startPipeline(ctx context.Context, binDir, logDir string, l layout) (p *pipeline, err error) {
	p = &pipeline{layout: l, prefix: fmt.Sprintf("e2ebench%d.", time.Now().UnixNano())}
	defer func() {
		if err != nil {
			p.stop()
		}
	}()
	if p.dbURL, p.dropDB, err = bench.FreshDB(ctx, *adminURL, "bench_e2e"); err != nil {
		return nil, err
	}
	if l.partitions > 0 {
		if err := createTopics(p.prefix, l.partitions); err != nil {
			return nil, err
		}
	}
	cachePrefix := p.prefix + "order:"
	payAddr, apiAddr := freeAddr(), freeAddr()
	p.apiURL = "http://" + apiAddr
	start := func(name string, env ...string) error {
		bin := name
		if name == "worker" && l.baseline {
			bin = "worker-baseline"
		}
		admin, debug := "http://"+freeAddr(), ""
		switch name {
		case "api":
			admin = p.apiURL
			env = append(env, "HTTP_ADDR="+apiAddr)
		case "paymentsim":
			admin = "http://" + payAddr
			env = append(env, "HTTP_ADDR="+payAddr)
		default:
			env = append(env, "ADMIN_ADDR="+strings.TrimPrefix(admin, "http://"))
		}
		if name != "paymentsim" {
			debug = "http://" + freeAddr()
			env = append(env, "DEBUG_ADDR="+strings.TrimPrefix(debug, "http://"))
		}
		d, err := startDaemon(ctx, binDir, logDir, bin, len(p.daemons), admin, debug, env)
		if d != nil {
			p.daemons = append(p.daemons, d)
		}
		return err
	}
	latency := []string{"PAYMENTSIM_LATENCY=0"}
	if l.slowProvider {
		latency = []string{"PAYMENTSIM_LATENCY=100ms", "PAYMENTSIM_LATENCY_JITTER=100ms"}
	}
	if err := start("paymentsim", latency...); err != nil {
		return nil, err
	}
	if err := start("api", "DATABASE_URL="+p.dbURL, "KAFKA_TOPIC_PREFIX="+p.prefix, "REDIS_URL="+*redisURL,
		"CACHE_KEY_PREFIX="+cachePrefix, "RATE_LIMIT=0"); err != nil {
		return nil, err
	}
	for range l.relays {
		if err := start("relay", "DATABASE_URL="+p.dbURL, "KAFKA_BROKERS="+*brokers); err != nil {
			return nil, err
		}
	}
	for range l.workers {
		if err := start("worker", "DATABASE_URL="+p.dbURL, "KAFKA_BROKERS="+*brokers, "KAFKA_TOPIC_PREFIX="+p.prefix,
			"WORKER_GROUP="+p.prefix+"worker", "PAYMENT_URL=http://"+payAddr, "REDIS_URL="+*redisURL,
			"CACHE_KEY_PREFIX="+cachePrefix); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// startDaemon runs binDir/name with env added to a minimal environment, its output to
// a log file, and waits until adminURL/healthz answers.
func startDaemon(ctx context.Context, binDir, logDir, name string, n int, adminURL, debugURL string, env []string) (*daemon, error) {
	d := &daemon{name: name, adminURL: adminURL, debugURL: debugURL, done: make(chan struct{}),
		logPath: filepath.Join(logDir, fmt.Sprintf("%02d-%s.log", n, name))}
	log, err := os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own descriptor
	d.cmd = exec.Command(filepath.Join(binDir, name))
	d.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	// Killed with the benchmark even if it dies without stopping them.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for !healthy(adminURL + "/healthz") {
		select {
		case <-d.done:
			return d, fmt.Errorf("%s exited during start: %v\n%s", name, d.cmd.ProcessState, d.tail())
		case <-ctx.Done():
			return d, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return d, fmt.Errorf("%s not healthy at %s after 60s\n%s", name, adminURL, d.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return d, nil
}

// stop sends SIGTERM, waits up to 15 s, then kills.
func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// tail is the end of the daemon's log, for error messages.
func (d *daemon) tail() string {
	b, _ := os.ReadFile(d.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop stops every daemon (workers and relays first) and drops the database.
func (p *pipeline) stop() {
	for i := len(p.daemons) - 1; i >= 0; i-- {
		p.daemons[i].stop()
	}
	if p.dropDB != nil {
		p.dropDB()
	}
}

// pids maps each daemon's process id to its name.
func (p *pipeline) pids() map[int]string {
	m := map[int]string{}
	for _, d := range p.daemons {
		m[d.cmd.Process.Pid] = d.name
	}
	return m
}

// exited names a daemon that is no longer running, if any.
func (p *pipeline) exited() error {
	for _, d := range p.daemons {
		select {
		case <-d.done:
			return fmt.Errorf("%s exited: %v\n%s", d.name, d.cmd.ProcessState, d.tail())
		default:
		}
	}
	return nil
}

// pending counts the orders still PENDING in the database: the ground truth of the
// backlog, used to let a step's stragglers finish before the next step.
func (p *pipeline) pending(ctx context.Context) (int64, error) {
	db, err := postgres.Open(ctx, p.dbURL, 1)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var n int64
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM orders WHERE status = 'PENDING'`).Scan(&n)
	return n, err
}

// waitIdle waits up to timeout for no order to be PENDING.
func (p *pipeline) waitIdle(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := p.pending(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d orders still PENDING after %v", n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// metric sums the samples of one metric on each daemon called name.
func (p *pipeline) metric(name, metric string) []float64 {
	var out []float64
	for _, d := range p.daemons {
		if d.name == name {
			out = append(out, scrape(d.adminURL+"/metrics", metric))
		}
	}
	return out
}

func scrape(url, name string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			fields := strings.Fields(line)
			v, _ := strconv.ParseFloat(fields[len(fields)-1], 64)
			sum += v
		}
	}
	return sum
}

// profile fetches a CPU profile of seconds from every daemon with pprof into dir.
func (p *pipeline) profile(ctx context.Context, dir string, seconds int) error {
	errc := make(chan error, len(p.daemons))
	n := 0
	for i, d := range p.daemons {
		if d.debugURL == "" {
			continue
		}
		n++
		go func() {
			errc <- fetch(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", d.debugURL, seconds),
				filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", d.name, i)))
		}()
	}
	var errs []error
	for range n {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func fetch(ctx context.Context, url, path string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func healthy(url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freeAddr is a loopback address whose port was free a moment ago.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// createTopics creates the pipeline's topics with n partitions, instead of the
// broker's default (the local stack's is 8).
func createTopics(prefix string, n int) error {
	admin, err := sarama.NewClusterAdmin(kafkaconf.Brokers(*brokers), kafkaconf.Producer("e2ebench"))
	if err != nil {
		return err
	}
	defer admin.Close()
	for _, t := range []string{events.TopicOrders, events.TopicPayments} {
		if err := admin.CreateTopic(prefix+t, &sarama.TopicDetail{NumPartitions: int32(n), ReplicationFactor: 1}, false); err != nil {
			return fmt.Errorf("create topic %s: %w", prefix+t, err)
		}
	}
	return nil
}
