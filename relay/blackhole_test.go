package relay_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/relay"
)

// blackholeProxy forwards TCP connections to target until blackhole is called; from then
// on it keeps every connection open and drops whatever either side sends, as a network
// that silently loses packets does. Neither end sees a reset or a close.
type blackholeProxy struct {
	ln      net.Listener
	target  string
	dropped atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) addr() string { return p.ln.Addr().String() }

func (p *blackholeProxy) blackhole() { p.dropped.Store(true) }

func (p *blackholeProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(server, client)
		go p.pipe(client, server)
	}
}

// pipe copies from src to dst, or reads and drops once the proxy is a black hole.
func (p *blackholeProxy) pipe(dst io.Writer, src io.Reader) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if p.dropped.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// TestLeaderOnBlackholedNetwork cuts the active relay off from Postgres without closing
// anything (a black-holed network): the relay must notice within a bounded time, and
// Postgres must end its session and so free the leader lock, so that the standby takes
// over and forwards what was written since.
func TestLeaderOnBlackholedNetwork(t *testing.T) {
	dbURL := testenv.DatabaseURL(t)
	direct, err := postgres.Open(context.Background(), dbURL, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close() })
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newBlackholeProxy(t, u.Host)
	u.Host = proxy.addr()
	viaProxy, err := postgres.Open(context.Background(), u.String(), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { viaProxy.Close() })

	prefix := testenv.TopicPrefix(t)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	startRelay(t, viaProxy, relay.Config{Registerer: regA, MaxBackoff: 200 * time.Millisecond,
		SessionTimeout: 2 * time.Second})
	testenv.Eventually(t, 10*time.Second, func() (bool, string) {
		return metric(t, regA, "relay_leader") == 1, "relay A is not active"
	})
	startRelay(t, direct, relay.Config{Registerer: regB, StandbyInterval: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		SessionTimeout: 2 * time.Second})
	before := commitEvents(t, direct, prefix, 1, 2, 3)
	testenv.Eventually(t, 20*time.Second, func() (bool, string) {
		n := metric(t, regA, "relay_forwarded_total")
		return n == 3, fmt.Sprintf("relay A forwarded %v, want 3", n)
	})

	proxy.blackhole()
	cut := time.Now()
	after := commitEvents(t, direct, prefix, 4, 5, 6)
	testenv.Eventually(t, 60*time.Second, func() (bool, string) {
		a, b := metric(t, regA, "relay_leader"), metric(t, regB, "relay_leader")
		return a == 0 && b == 1, fmt.Sprintf("%s after the black hole: relay_leader A = %v, B = %v; want 0 and 1",
			time.Since(cut).Round(time.Second), a, b)
	})
	t.Logf("standby active %s after the black hole", time.Since(cut).Round(100*time.Millisecond))
	byKey, _ := ceIDsByKey(t, prefix+events.TopicOrders, 6)
	for i, id := range append(before, after...) {
		key := fmt.Sprint(i + 1)
		if got := byKey[key]; len(got) != 1 || got[0] != id {
			t.Errorf("order %s: events on Kafka %v, want [%s]", key, got, id)
		}
	}
}
