package admin_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/internal/admin"
)

func TestServeDebug(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- admin.ServeDebug(ctx, addr, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	var resp *http.Response
	for i := 0; ; i++ {
		if resp, err = http.Get("http://" + addr + "/debug/pprof/cmdline"); err == nil {
			break
		}
		if i == 100 {
			t.Fatalf("debug server not answering: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /debug/pprof/cmdline = %d, want 200", resp.StatusCode)
	}
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /metrics on the debug port = %d, want 404 (pprof only)", resp.StatusCode)
		}
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("ServeDebug after cancel = %v, want nil", err)
	}
}
