package relay_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/relay"
)

// insertEnvelope writes an outbox row for topic, keyed by key, with a payload of size
// bytes, in a transaction of its own, and returns its message id.
func insertEnvelope(t *testing.T, db *sql.DB, topic, key string, size int) string {
	t.Helper()
	id := "m-" + testenv.ID()
	env, err := json.Marshal(map[string]any{
		"destination_topic": topic, "uuid": id, "payload": []byte(strings.Repeat("x", size)),
		"metadata": map[string]string{events.MetaSubject: key, events.MetaID: id},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id)
		VALUES ($1, $2, '{}', pg_current_xact_id())`, id, string(env)); err != nil {
		t.Fatal(err)
	}
	return id
}

// records counts the records on a topic (all partitions, from offset 0), or -1 if
// the topic does not exist.
func records(t *testing.T, client sarama.Client, topic string) int64 {
	t.Helper()
	if err := client.RefreshMetadata(topic); err != nil {
		return -1
	}
	parts, err := client.Partitions(topic)
	if err != nil {
		return -1
	}
	var n int64
	for _, p := range parts {
		off, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatalf("offset of %s/%d: %v", topic, p, err)
		}
		n += off
	}
	return n
}

// TestPermanentRejectionsAreDeadLettered puts rows that Kafka can never accept between
// good ones: one larger than the producer's limit, one larger than its topic's
// max.message.bytes (in the same partition batch as good rows), one for a topic whose
// name is invalid. They must be set aside as dead letters with the reason; the good rows
// reach Kafka exactly once (no batch resent in a loop) and the position moves past all.
func TestPermanentRejectionsAreDeadLettered(t *testing.T) {
	db := testenv.DB(t)
	prefix := testenv.TopicPrefix(t)
	orders, small := prefix+events.TopicOrders, prefix+"small"
	admin, err := sarama.NewClusterAdmin(testenv.Brokers(), kafkaconf.Producer("test-admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	maxBytes := "2048"
	if err := admin.CreateTopic(small, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: map[string]*string{"max.message.bytes": &maxBytes}}, false); err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(testenv.Brokers(), kafkaconf.Consumer("test-"+testenv.ID()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	good := []string{insertEnvelope(t, db, orders, "1", 10)}
	huge := insertEnvelope(t, db, orders, "2", 2<<20) // over the producer's 1 MiB
	good = append(good, insertEnvelope(t, db, small, "k", 10))
	tooBig := insertEnvelope(t, db, small, "k", 4096) // over the topic's 2 KiB, same partition
	good = append(good, insertEnvelope(t, db, small, "k", 10))
	badTopic := insertEnvelope(t, db, prefix+"bad topic/x", "3", 10)
	good = append(good, insertEnvelope(t, db, orders, "4", 10))
	var last string
	db.QueryRow(`SELECT transaction_id::text || '/' || "offset" FROM watermill_outbox
		ORDER BY transaction_id DESC, "offset" DESC LIMIT 1`).Scan(&last)

	reg := prometheus.NewRegistry()
	startRelay(t, db, relay.Config{Registerer: reg, MaxBackoff: 200 * time.Millisecond})
	testenv.Eventually(t, 60*time.Second, func() (bool, string) {
		var pos string
		db.QueryRow(`SELECT last_processed_transaction_id::text || '/' || offset_acked FROM watermill_offsets_outbox`).Scan(&pos)
		return pos == last, fmt.Sprintf("position %q, want the last row %s; records on %s: %d, on %s: %d; relay_publish_errors_total %v",
			pos, last, orders, records(t, client, orders), small, records(t, client, small), metric(t, reg, "relay_publish_errors_total"))
	})

	reasons := map[string]string{}
	rs, err := db.Query(`SELECT uuid, reason FROM outbox_dead_letters`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id, reason string
		rs.Scan(&id, &reason)
		reasons[id] = reason
	}
	rs.Close()
	t.Logf("dead letters: %q", reasons)
	for id, want := range map[string]string{huge: "larger than", tooBig: "too large", badTopic: "invalid"} {
		if !strings.Contains(strings.ToLower(reasons[id]), want) {
			t.Errorf("dead letter %s: reason %q, want one that says %q", id, reasons[id], want)
		}
	}
	if len(reasons) != 3 {
		t.Errorf("dead letters %v, want the 3 rejected rows", reasons)
	}
	if n := metric(t, reg, "relay_dead_letters_total"); n != 3 {
		t.Errorf("relay_dead_letters_total = %v, want 3", n)
	}
	// Exactly once: each good row one record, nothing resent.
	if n := records(t, client, orders); n != 2 {
		t.Errorf("%d records on %s, want 2", n, orders)
	}
	if n := records(t, client, small); n != 2 {
		t.Errorf("%d records on %s, want 2", n, small)
	}
	byKey, _ := ceIDsByKey(t, small, 2)
	if fmt.Sprint(byKey["k"]) != fmt.Sprint(good[1:3]) {
		t.Errorf("%s: %v, want %v in order", small, byKey["k"], good[1:3])
	}
}
