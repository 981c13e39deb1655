package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Stack is a private set of services (Postgres, Kafka) that one fault test may stop,
// kill and restart without disturbing other tests, started by stack/stack.sh on free
// ports with its state in a temporary directory.
type Stack struct {
	t        testing.TB
	dir      string
	env      []string
	pg       string // port
	kfk      string // port
	services []string
}

// repoRoot is the repository's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func port(t testing.TB) string {
	addr := FreeAddr(t)
	return addr[strings.LastIndexByte(addr, ':')+1:]
}

// PrivateStack starts the named services ("postgres", "kafka") for this test only and
// stops them when it ends.
func PrivateStack(t testing.TB, services ...string) *Stack {
	t.Helper()
	Integration(t)
	dir, err := os.MkdirTemp("", "orderpipe-stack-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Stack{t: t, dir: dir, pg: port(t), kfk: port(t), services: services}
	s.env = append(os.Environ(),
		"STACK_DIR="+dir,
		"KAFKA_LIBS_DIR="+filepath.Join(repoRoot(), ".stack", "kafka"),
		"PG_PORT="+s.pg,
		"KAFKA_PORT="+s.kfk,
		"KAFKA_CONTROLLER_PORT="+port(t),
	)
	// The services are detached (stack.sh starts them in the background), so a test
	// binary that crashes would skip t.Cleanup and leave them running. A watchdog
	// process stops them by their pid files once this process is gone.
	watchdog := exec.Command("sh", "-c", `while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down; rm -rf "$3"`,
		"watchdog", strconv.Itoa(os.Getpid()), filepath.Join(repoRoot(), "stack", "stack.sh"), dir)
	watchdog.Env = s.env
	if err := watchdog.Start(); err != nil {
		t.Fatalf("start the stack's watchdog: %v", err)
	}
	t.Cleanup(func() {
		s.run("down")
		watchdog.Process.Kill()
		watchdog.Wait()
		if pg, err := filepath.EvalSymlinks(filepath.Join(dir, "postgres")); err == nil && pg != filepath.Join(dir, "postgres") {
			os.RemoveAll(pg) // the data dir lives in /tmp when the postgres user cannot reach dir
		}
		os.RemoveAll(dir)
	})
	s.Start(services...)
	return s
}

func (s *Stack) run(args ...string) error {
	cmd := exec.Command(filepath.Join(repoRoot(), "stack", "stack.sh"), args...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("stack.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Start starts (or restarts) services, waiting until they are ready.
func (s *Stack) Start(services ...string) {
	s.t.Helper()
	if err := s.run(append([]string{"up"}, services...)...); err != nil {
		s.t.Fatal(err)
	}
}

// Stop stops a service gracefully (SIGTERM; for Postgres, pg_ctl -m fast).
func (s *Stack) Stop(service string) {
	s.t.Helper()
	if err := s.run("down", service); err != nil {
		s.t.Fatal(err)
	}
}

// Crash stops a service abruptly: kill -9 for Kafka, pg_ctl stop -m immediate for
// Postgres (which is how Postgres itself models a crash).
func (s *Stack) Crash(service string) {
	s.t.Helper()
	switch service {
	case "postgres":
		env := s.env
		s.env = append(s.env, "PG_STOP_MODE=immediate")
		err := s.run("down", "postgres")
		s.env = env
		if err != nil {
			s.t.Fatal(err)
		}
	default:
		b, err := os.ReadFile(filepath.Join(s.dir, service+".pid"))
		if err != nil {
			s.t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			s.t.Fatal(err)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		Eventually(s.t, 10*time.Second, func() (bool, string) {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			// Gone, or a zombie waiting for its parent to reap it: dead either way.
			return err != nil || strings.Contains(string(stat), ") Z "), fmt.Sprintf("%s (pid %d) still alive", service, pid)
		})
	}
}

// Has reports whether the stack runs service.
func (s *Stack) Has(service string) bool { return slices.Contains(s.services, service) }

// Brokers is the private Kafka's address.
func (s *Stack) Brokers() []string { return []string{"127.0.0.1:" + s.kfk} }

// DatabaseURL is the private Postgres's orderdb.
func (s *Stack) DatabaseURL() string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword("orderuser", "secret"), Host: "127.0.0.1:" + s.pg,
		Path: "/orderdb", RawQuery: "sslmode=disable"}
	return u.String()
}

// Redis is a private redis-server process.
type Redis struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRedis runs a redis-server of the test's own on addr (host:port) and waits until
// it answers; it is killed when the test ends.
func StartRedis(t testing.TB, addr string) *Redis {
	t.Helper()
	host, p, _ := strings.Cut(addr, ":")
	cmd := exec.Command("redis-server", "--bind", host, "--port", p, "--save", "", "--appendonly", "no")
	// Killed with this process even if it crashes before t.Cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server (make up installs it): %v", err)
	}
	r := &Redis{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(r.done) }()
	t.Cleanup(r.Kill)
	Eventually(t, 10*time.Second, func() (bool, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false, "redis not listening: " + err.Error()
		}
		defer c.Close()
		c.Write([]byte("PING\r\n"))
		buf := make([]byte, 7)
		n, _ := c.Read(buf)
		return string(buf[:n]) == "+PONG\r\n", "redis did not answer PONG"
	})
	return r
}

// Kill stops the server with SIGKILL and waits for it.
func (r *Redis) Kill() {
	r.cmd.Process.Kill()
	<-r.done
}
