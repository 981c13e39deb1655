package orders_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
)

func newCache(t *testing.T, url string) *orders.Cache {
	t.Helper()
	c, err := orders.OpenCache(url, orders.CacheConfig{KeyPrefix: testenv.CachePrefix(t), PendingTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sampleOrder(version int, status orders.Status) orders.Order {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return orders.Order{ID: 7, CustomerID: "C", Amount: money.Amount{Minor: 100, Currency: "USD"},
		Status: status, Version: version, CreatedAt: at, UpdatedAt: at}
}

func TestCacheRoundTrip(t *testing.T) {
	c := newCache(t, testenv.RedisURL())
	ctx := context.Background()
	if _, err := c.Get(ctx, 7); !errors.Is(err, orders.ErrCacheMiss) {
		t.Fatalf("Get on empty cache = %v, want ErrCacheMiss", err)
	}
	want := sampleOrder(1, orders.StatusPending)
	if err := c.Put(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, 7)
	if err != nil || got != want {
		t.Errorf("Get = %+v, %v; want %+v", got, err, want)
	}
}

// TestStaleFillCannotOverwriteInvalidation is the cache-aside race: a reader fetches
// version 1 from Postgres, the worker commits version 2 and invalidates, then the reader
// fills the cache with what it fetched. The old version must not come back.
func TestStaleFillCannotOverwriteInvalidation(t *testing.T) {
	c := newCache(t, testenv.RedisURL())
	ctx := context.Background()
	stale := sampleOrder(1, orders.StatusPending)
	if err := c.Put(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if err := c.Invalidate(ctx, 7, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, 7); !errors.Is(err, orders.ErrCacheMiss) {
		t.Fatalf("Get after invalidation = %v, want ErrCacheMiss", err)
	}
	if err := c.Put(ctx, stale); err != nil { // the late reader
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, 7); !errors.Is(err, orders.ErrCacheMiss) {
		t.Errorf("Get after a stale fill = %v, want ErrCacheMiss: version 1 came back", err)
	}
	fresh := sampleOrder(2, orders.StatusPaid)
	if err := c.Put(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, 7); err != nil || got.Status != orders.StatusPaid {
		t.Errorf("Get after a fresh fill = %+v, %v; want PAID", got, err)
	}
}

func TestCacheDownIsAnError(t *testing.T) {
	addr := testenv.FreeAddr(t) // nothing listens there
	c, err := orders.OpenCache("redis://"+addr+"/0", orders.CacheConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Get(context.Background(), 1)
	if err == nil || errors.Is(err, orders.ErrCacheMiss) {
		t.Errorf("Get with Redis down = %v, want a Redis error (not a miss)", err)
	}
	if err := c.Put(context.Background(), sampleOrder(1, orders.StatusPaid)); err == nil {
		t.Error("Put with Redis down = nil, want an error")
	}
}
