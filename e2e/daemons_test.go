package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDir holds the daemons, built once for the package by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "orderpipe-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", append(args, "../cmd/api", "../cmd/relay", "../cmd/worker", "../cmd/paymentsim")...)
	cmd.Dir = filepath.Dir(file)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build daemons:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// daemon is one of our binaries running as a real process.
type daemon struct {
	name      string
	adminURL  string // base URL of its health/metrics endpoints
	env       []string
	healthURL string
	cmd       *exec.Cmd
	log       *bytes.Buffer
	done      chan struct{}
}

// startDaemon runs bin with env (added to a minimal environment) and waits until
// healthURL answers 200. The process is stopped (SIGTERM, then SIGKILL) when the test
// ends; if the test failed, its output is saved (see saveLog) and its end printed.
func startDaemon(t *testing.T, bin string, env []string, healthURL string) *daemon {
	t.Helper()
	d := &daemon{name: bin, env: env, healthURL: healthURL, log: &bytes.Buffer{}, done: make(chan struct{})}
	if u, err := url.Parse(healthURL); err == nil {
		d.adminURL = u.Scheme + "://" + u.Host
	}
	d.cmd = exec.Command(filepath.Join(binDir, bin))
	// Killed with the test binary even if it crashes before t.Cleanup runs.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	d.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LOG_LEVEL=debug"}, env...)
	d.cmd.Stdout, d.cmd.Stderr = syncWriter{d.log}, syncWriter{d.log}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			d.saveLog(t)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("%s exited during start: %v\n%s", bin, d.cmd.ProcessState, d.output())
		default:
		}
		if ok(healthURL) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy at %s after 60s\n%s", bin, healthURL, d.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restart starts the same binary again with the same environment (and so the same
// ports) after it stopped or was killed.
func (d *daemon) restart(t *testing.T) *daemon {
	t.Helper()
	return startDaemon(t, d.name, d.env, d.healthURL)
}

// signal sends sig to the process; kill also waits until it is gone.
func (d *daemon) signal(sig syscall.Signal) { d.cmd.Process.Signal(sig) }

func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// exited reports whether the process has ended.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to 15 s, then kills.
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

// logTail is how many lines of a daemon's output a failed test prints.
const logTail = 40

// saveLog writes the daemon's whole output to a file in E2E_LOG_DIR (default: a
// directory under the system's temporary directory) and prints its last lines and where
// the rest is: a failed test's own messages stay readable at the end of a long run.
func (d *daemon) saveLog(t *testing.T) {
	out := d.output()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	dir := os.Getenv("E2E_LOG_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "orderpipe-e2e-logs")
	}
	dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	file := filepath.Join(dir, fmt.Sprintf("%s-%d.log", d.name, d.cmd.Process.Pid))
	where := file
	if err := os.MkdirAll(dir, 0o755); err != nil {
		where = err.Error()
	} else if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
		where = err.Error()
	}
	if len(lines) > logTail {
		lines = lines[len(lines)-logTail:]
	}
	t.Logf("---- %s (pid %d): last %d lines; all of it: %s ----\n%s", d.name, d.cmd.Process.Pid,
		len(lines), where, strings.Join(lines, "\n"))
}

func (d *daemon) output() string {
	logMu.Lock()
	defer logMu.Unlock()
	return d.log.String()
}

func ok(url string) bool {
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

var logMu sync.Mutex

// syncWriter lets a process's stdout and stderr share one buffer.
type syncWriter struct{ b *bytes.Buffer }

func (w syncWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return w.b.Write(p)
}

// metricSum scrapes a daemon's admin /metrics and sums the samples of one metric whose
// lines contain each of labels (e.g. `result="replayed"`).
func metricSum(t *testing.T, d *daemon, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(d.adminURL + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if (strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{")) && containsAll(line, labels) {
			fields := strings.Fields(line)
			v, _ := strconv.ParseFloat(fields[len(fields)-1], 64)
			sum += v
		}
	}
	return sum
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
