package orders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache is a read-through cache of orders in Redis (cache-aside). It never holds a
// status older than one whose invalidation has run: every entry carries the order's
// version, and a Lua script refuses to replace an entry with an older version. An
// invalidation leaves a tombstone with the new version instead of deleting the key, so
// a reader that fetched the old row just before the change cannot put it back.
//
// Redis is optional: every call is bounded by Timeout, and callers treat any error as a
// miss and read Postgres.
type Cache struct {
	rdb *redis.Client
	cfg CacheConfig
}

// CacheConfig tunes the cache.
type CacheConfig struct {
	// KeyPrefix is put before the order id to form the Redis key. Default "order:".
	KeyPrefix string
	// Timeout bounds each Redis call; slower is treated as down. Default 50ms.
	Timeout time.Duration
	// FinalTTL is how long an order with a final status (which never changes again) is
	// kept. Default 1h.
	FinalTTL time.Duration
	// PendingTTL is how long a PENDING order is kept. It is short, so that even a lost
	// invalidation (Redis down at that moment) heals quickly. Default 2s.
	PendingTTL time.Duration
}

// DefaultPendingTTL is CacheConfig.PendingTTL's default.
const DefaultPendingTTL = 2 * time.Second

func (c *CacheConfig) setDefaults() {
	if c.KeyPrefix == "" {
		c.KeyPrefix = "order:"
	}
	if c.Timeout == 0 {
		c.Timeout = 50 * time.Millisecond
	}
	if c.FinalTTL == 0 {
		c.FinalTTL = time.Hour
	}
	if c.PendingTTL == 0 {
		c.PendingTTL = DefaultPendingTTL
	}
}

// OpenCache returns a cache on the Redis server at url (redis://host:port/db). It does
// not connect yet: Redis being down at start is no reason not to serve.
func OpenCache(url string, cfg CacheConfig) (*Cache, error) {
	cfg.setDefaults()
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parse REDIS_URL: %w", err)
	}
	// Fail fast and never retry: a miss costs one Postgres read, a hang costs the request.
	opts.DialTimeout = 4 * cfg.Timeout
	opts.ReadTimeout = cfg.Timeout
	opts.WriteTimeout = cfg.Timeout
	opts.PoolTimeout = cfg.Timeout
	opts.MaxRetries = -1
	return &Cache{rdb: redis.NewClient(opts), cfg: cfg}, nil
}

// Close closes the Redis connections.
func (c *Cache) Close() error { return c.rdb.Close() }

// Ping reports whether Redis answers, for readiness reporting.
func (c *Cache) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	return c.rdb.Ping(ctx).Err()
}

// ErrCacheMiss: the order is not cached (or only its tombstone is).
var ErrCacheMiss = errors.New("cache miss")

func (c *Cache) key(id int64) string { return c.cfg.KeyPrefix + strconv.FormatInt(id, 10) }

// Entries are "<version>|<order JSON>"; a tombstone is "<version>|".
//
// setIfNotOlder: KEYS[1] key, ARGV[1] version, ARGV[2] value, ARGV[3] TTL in ms.
var setIfNotOlder = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
`)

// Get returns the cached order, ErrCacheMiss, or a Redis error.
func (c *Cache) Get(ctx context.Context, id int64) (Order, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	val, err := c.rdb.Get(ctx, c.key(id)).Result()
	if errors.Is(err, redis.Nil) {
		return Order{}, ErrCacheMiss
	}
	if err != nil {
		return Order{}, fmt.Errorf("cache get: %w", err)
	}
	_, data, ok := cutVersion(val)
	if !ok {
		return Order{}, fmt.Errorf("cache get: malformed entry %.40q", val)
	}
	if data == "" {
		return Order{}, ErrCacheMiss
	}
	var o Order
	if err := json.Unmarshal([]byte(data), &o); err != nil {
		return Order{}, fmt.Errorf("cache get: %w", err)
	}
	return o, nil
}

// Put caches o unless a newer version (or its tombstone) is already there.
func (c *Cache) Put(ctx context.Context, o Order) error {
	data, err := json.Marshal(o)
	if err != nil {
		return err
	}
	ttl := c.cfg.FinalTTL
	if o.Status == StatusPending {
		ttl = c.cfg.PendingTTL
	}
	return c.set(ctx, o.ID, o.Version, string(data), ttl)
}

// Invalidate marks every cached version of the order older than version as gone. Call
// it after the change to version commits.
func (c *Cache) Invalidate(ctx context.Context, id int64, version int) error {
	return c.set(ctx, id, version, "", c.cfg.FinalTTL)
}

func (c *Cache) set(ctx context.Context, id int64, version int, data string, ttl time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	err := setIfNotOlder.Run(ctx, c.rdb, []string{c.key(id)}, version, data, ttl.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("cache set: %w", err)
	}
	return nil
}

func cutVersion(val string) (int, string, bool) {
	for i := 0; i < len(val); i++ {
		if val[i] == '|' {
			v, err := strconv.Atoi(val[:i])
			return v, val[i+1:], err == nil
		}
	}
	return 0, "", false
}
