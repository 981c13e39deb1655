// Package testenv gives integration tests real, isolated resources on the local stack
// (stack/stack.sh up, or make test): a fresh migrated Postgres database per test, a
// unique Kafka topic prefix and consumer group per test, and the Redis address.
//
// Addresses come from TEST_DATABASE_URL, KAFKA_BROKERS and REDIS_URL, defaulting to the
// local stack. A test that needs a service which is not running fails with a hint; under
// go test -short such tests are skipped instead.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"io/fs"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/schema"
)

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// AdminDatabaseURL is the database tests connect to in order to create their own.
func AdminDatabaseURL() string {
	return getenv("TEST_DATABASE_URL", "postgres://orderuser:secret@127.0.0.1:5432/orderdb?sslmode=disable")
}

// Brokers are the Kafka brokers.
func Brokers() []string { return kafkaconf.Brokers(getenv("KAFKA_BROKERS", "127.0.0.1:9092")) }

// RedisURL is the Redis server.
func RedisURL() string { return getenv("REDIS_URL", "redis://127.0.0.1:6379/0") }

// Integration skips the test under -short.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs the local stack (make up)")
	}
}

// ID returns a short random identifier, lowercase, usable in names.
func ID() string {
	b := make([]byte, 5)
	rand.Read(b)
	return hex.EncodeToString(b)
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// DatabaseURL creates a fresh database with the schema applied, drops it when the test
// ends, and returns its URL.
func DatabaseURL(t testing.TB) string {
	t.Helper()
	Integration(t)
	ctx := context.Background()
	admin, err := postgres.Open(ctx, AdminDatabaseURL(), 2)
	if err != nil {
		t.Fatalf("postgres is not reachable (start the stack: make up): %v", err)
	}
	defer admin.Close()
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx, admin) })
	if templateErr != nil {
		t.Fatalf("schema template: %v", templateErr)
	}
	name := "test_" + ID()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+name+` TEMPLATE `+templateName); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		admin, err := postgres.Open(context.Background(), AdminDatabaseURL(), 1)
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer admin.Close()
		if _, err := admin.ExecContext(context.Background(), `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(AdminDatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// DB returns a handle on a fresh migrated database, closed when the test ends.
func DB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := postgres.Open(context.Background(), DatabaseURL(t), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// ensureTemplate creates, once per schema version, a migrated database that test
// databases are copied from; copying is far faster than migrating each one. An advisory
// lock serialises the test binaries of several packages running at once.
func ensureTemplate(ctx context.Context, admin *sql.DB) (string, error) {
	sum := sha256.New()
	err := fs.WalkDir(schema.Migrations, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(schema.Migrations, path)
		sum.Write([]byte(path))
		sum.Write(b)
		return err
	})
	if err != nil {
		return "", err
	}
	name := "tmpl_" + hex.EncodeToString(sum.Sum(nil))[:16]

	conn, err := admin.Conn(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(8675309)`); err != nil {
		return "", err
	}
	defer conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock(8675309)`)
	var exists bool
	if err := conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	building := name + "_build"
	if _, err := conn.ExecContext(ctx, `DROP DATABASE IF EXISTS `+building+` WITH (FORCE)`); err != nil {
		return "", err
	}
	if _, err := conn.ExecContext(ctx, `CREATE DATABASE `+building); err != nil {
		return "", err
	}
	u, _ := url.Parse(AdminDatabaseURL())
	u.Path = "/" + building
	db, err := postgres.Open(ctx, u.String(), 1)
	if err != nil {
		return "", err
	}
	_, err = schema.Migrate(ctx, db, nil)
	db.Close()
	if err != nil {
		return "", err
	}
	// Renamed only when complete, so a crash never leaves a half-migrated template.
	if _, err := conn.ExecContext(ctx, `ALTER DATABASE `+building+` RENAME TO `+name); err != nil {
		return "", err
	}
	return name, nil
}

// TopicPrefix returns a Kafka topic prefix no other test uses, after checking that the
// broker answers.
func TopicPrefix(t testing.TB) string {
	t.Helper()
	Integration(t)
	client, err := sarama.NewClient(Brokers(), kafkaconf.Consumer("testenv"))
	if err != nil {
		t.Fatalf("kafka is not reachable at %v (start the stack: make up): %v", Brokers(), err)
	}
	client.Close()
	return "t" + ID() + "."
}

// FaultDuration is how long a fault test keeps a service down: FAULT_DURATION (make
// chaos sets 30s), else 5s so that make test stays short.
func FaultDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("FAULT_DURATION")); err == nil && d > 0 {
		return d
	}
	return 5 * time.Second
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Eventually polls cond every 50ms until it returns true or timeout passes, then fails
// the test with the last message cond gave.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Consume reads every message of topic from the oldest offset until want(messages)
// reports true or timeout passes, and returns what it read.
func Consume(t testing.TB, topic string, timeout time.Duration, want func([]*sarama.ConsumerMessage) bool) []*sarama.ConsumerMessage {
	t.Helper()
	return ConsumeFrom(t, Brokers(), topic, timeout, want)
}

// ConsumeFrom is Consume on other brokers.
func ConsumeFrom(t testing.TB, brokers []string, topic string, timeout time.Duration, want func([]*sarama.ConsumerMessage) bool) []*sarama.ConsumerMessage {
	t.Helper()
	consumer, err := sarama.NewConsumer(brokers, kafkaconf.Consumer("testenv-"+ID()))
	if err != nil {
		t.Fatalf("kafka consumer: %v", err)
	}
	defer consumer.Close()
	deadline := time.Now().Add(timeout)
	var partitions []int32
	for {
		partitions, err = consumer.Partitions(topic)
		if err == nil && len(partitions) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s has no partitions after %s: %v", topic, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	msgs := make(chan *sarama.ConsumerMessage)
	done := make(chan struct{})
	defer close(done)
	for _, p := range partitions {
		var pc sarama.PartitionConsumer
		for {
			// A topic just created may not have its leaders elected yet.
			if pc, err = consumer.ConsumePartition(topic, p, sarama.OffsetOldest); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("consume %s/%d: %v", topic, p, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		defer pc.Close()
		go func() {
			for m := range pc.Messages() {
				select {
				case msgs <- m:
				case <-done:
					return
				}
			}
		}()
	}
	var got []*sarama.ConsumerMessage
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for !want(got) {
		select {
		case m := <-msgs:
			got = append(got, m)
		case <-timer.C:
			return got
		}
	}
	return got
}

// Header returns the value of a Kafka header.
func Header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// CachePrefix returns a Redis key prefix no other test uses, after checking that Redis
// answers.
func CachePrefix(t testing.TB) string {
	t.Helper()
	Integration(t)
	u, err := url.Parse(RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err != nil {
		t.Fatalf("redis is not reachable at %s (start the stack: make up): %v", u.Host, err)
	}
	conn.Close()
	return "t" + ID() + ":order:"
}

// Buffer is a bytes.Buffer that goroutines (a logger, a command's output) may write
// while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
