package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

// cachedFixture is the API with a Redis cache in front of Postgres.
type cachedFixture struct {
	*fixture
	store *orders.Store
	cache *orders.Cache
}

func newCachedFixture(t *testing.T, redisURL string) *cachedFixture {
	t.Helper()
	db := testenv.DB(t)
	store := orders.NewStore(db, outbox.New(""))
	cache, err := orders.OpenCache(redisURL, orders.CacheConfig{KeyPrefix: testenv.CachePrefix(t), PendingTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	srv := httptest.NewServer(api.New(store, db, slog.New(slog.NewTextHandler(t.Output(), nil)), api.Config{Cache: cache}))
	t.Cleanup(srv.Close)
	return &cachedFixture{fixture: &fixture{srv: srv, db: db}, store: store, cache: cache}
}

func (f *cachedFixture) status(t *testing.T, id string) string {
	t.Helper()
	resp := f.do(t, http.MethodGet, "/orders/"+id, "")
	if resp.status != http.StatusOK {
		t.Fatalf("GET /orders/%s = %d %s", id, resp.status, resp.body)
	}
	var o struct{ Status string }
	json.Unmarshal(resp.body, &o)
	return o.Status
}

// TestCacheHitAndInvalidation shows reads come from Redis once cached (a value planted
// there is served), and that a status change followed by its invalidation is visible at
// once, never the cached old status.
func TestCacheHitAndInvalidation(t *testing.T) {
	f := newCachedFixture(t, testenv.RedisURL())
	ctx := context.Background()
	if resp := f.do(t, http.MethodPost, "/orders", seedBody, "Content-Type", "application/json"); resp.status != http.StatusCreated {
		t.Fatalf("POST = %d %s", resp.status, resp.body)
	}
	if got := f.status(t, "1"); got != "PENDING" { // a miss that fills the cache
		t.Fatalf("status = %s, want PENDING", got)
	}
	planted, err := f.store.Get(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	planted.Amount = money.Amount{Minor: 4242, Currency: "USD"} // same version: Put replaces
	if err := f.cache.Put(ctx, planted); err != nil {
		t.Fatal(err)
	}
	resp := f.do(t, http.MethodGet, "/orders/1", "")
	var o struct{ Amount json.Number }
	json.Unmarshal(resp.body, &o)
	if o.Amount != "42.42" {
		t.Fatalf("amount = %s, want the planted 42.42: GET did not read the cache", o.Amount)
	}

	paid, _, err := f.store.RecordOutcome(ctx, "payment", "msg-1", 1, orders.Outcome{PaymentID: "pay_1", Approved: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Invalidate(ctx, paid.ID, paid.Version); err != nil {
		t.Fatal(err)
	}
	if got := f.status(t, "1"); got != "PAID" {
		t.Errorf("status after invalidation = %s, want PAID (never the stale PENDING)", got)
	}
}

// TestRedisDownStillServes points the cache at a port where nothing listens.
func TestRedisDownStillServes(t *testing.T) {
	f := newCachedFixture(t, "redis://"+testenv.FreeAddr(t)+"/0")
	if resp := f.do(t, http.MethodPost, "/orders", seedBody, "Content-Type", "application/json"); resp.status != http.StatusCreated {
		t.Fatalf("POST = %d %s", resp.status, resp.body)
	}
	for i := 0; i < 3; i++ {
		if got := f.status(t, "1"); got != "PENDING" {
			t.Fatalf("status = %s, want PENDING from Postgres", got)
		}
	}
	metrics := f.do(t, http.MethodGet, "/metrics", "")
	if !bytes.Contains(metrics.body, []byte(`order_cache_lookups_total{result="error"} 3`)) {
		t.Errorf("metrics do not count the 3 cache errors:\n%s", metrics.body)
	}
}

// TestRedisStoppedMidTest stops a private Redis between reads.
func TestRedisStoppedMidTest(t *testing.T) {
	testenv.Integration(t)
	addr := testenv.FreeAddr(t)
	redis := testenv.StartRedis(t, addr)
	f := newCachedFixture(t, "redis://"+addr+"/0")
	if resp := f.do(t, http.MethodPost, "/orders", seedBody, "Content-Type", "application/json"); resp.status != http.StatusCreated {
		t.Fatalf("POST = %d %s", resp.status, resp.body)
	}
	f.status(t, "1")
	redis.Kill()
	if got := f.status(t, "1"); got != "PENDING" {
		t.Errorf("status with Redis gone = %s, want PENDING", got)
	}
}

// TestDatabaseDownAnswers503 serves from a "database" that accepts connections and
// never answers (a hung server), and one that refuses them: both are 503 problem+json
// with Retry-After, within the request's database timeout, never a hang.
func TestDatabaseDownAnswers503(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	for name, addr := range map[string]string{"hung": hung.Addr().String(), "refused": testenv.FreeAddr(t)} {
		t.Run(name, func(t *testing.T) {
			db, err := postgres.Open(context.Background(), "postgres://u:p@"+addr+"/x?sslmode=disable&connect_timeout=1", 4)
			if err == nil {
				t.Fatal("Open succeeded against a dead server")
			}
			// The API's handle, as main builds it, on a server that is down.
			db, err = postgres.New("postgres://u:p@"+addr+"/x?sslmode=disable", 4)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			srv := httptest.NewServer(api.New(orders.NewStore(db, outbox.New("")), db,
				slog.New(slog.NewTextHandler(t.Output(), nil)), api.Config{DBTimeout: 2 * time.Second}))
			defer srv.Close()
			f := &fixture{srv: srv}
			for _, req := range []struct{ method, path, body string }{
				{http.MethodPost, "/orders", seedBody}, {http.MethodGet, "/orders/1", ""}, {http.MethodGet, "/orders", ""},
			} {
				start := time.Now()
				resp := f.do(t, req.method, req.path, req.body, "Content-Type", "application/json")
				if resp.status != http.StatusServiceUnavailable || resp.header.Get("Content-Type") != "application/problem+json" ||
					resp.header.Get("Retry-After") == "" {
					t.Errorf("%s %s = %d %s %q, want 503 problem+json with Retry-After", req.method, req.path,
						resp.status, resp.header.Get("Content-Type"), resp.body)
				}
				if bytes.Contains(resp.body, []byte("dial")) || bytes.Contains(resp.body, []byte("127.0.0.1")) {
					t.Errorf("503 body leaks the driver's error: %s", resp.body)
				}
				t.Logf("%s %s answered in %s", req.method, req.path, time.Since(start).Round(time.Millisecond))
			}
		})
	}
}
