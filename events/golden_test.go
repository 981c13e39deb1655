package events_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/google/go-cmp/cmp"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current code")

// record returns sample i as the Kafka record the relay sends: events.NewMessage (with a
// fixed id) through kafkaconf.Marshaler, as relay.decodeRow does.
func record(t *testing.T, i int, e events.Event) *sarama.ProducerMessage {
	t.Helper()
	msg, err := events.NewMessageWithID(sampleID(i), e, sampleTime)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := kafkaconf.Marshaler.Marshal(e.Topic(), msg)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

func encode(t *testing.T, enc sarama.Encoder) []byte {
	t.Helper()
	b, err := enc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// headers returns a record's headers by name, failing on a repeated one (CloudEvents
// attributes occur once).
func headers(t *testing.T, pm *sarama.ProducerMessage) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, h := range pm.Headers {
		if _, dup := out[string(h.Key)]; dup {
			t.Errorf("header %q occurs twice", h.Key)
		}
		out[string(h.Key)] = string(h.Value)
	}
	return out
}

// serialize renders a record as the golden files hold it: topic, key, sorted headers and
// the exact value bytes.
func serialize(t *testing.T, pm *sarama.ProducerMessage) []byte {
	t.Helper()
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The Kafka record of one event, as the relay sends it. Regenerate after a deliberate change:\n")
	fmt.Fprintf(&b, "# go test ./events -run Golden -update (then check the change against the compatibility rule).\n")
	fmt.Fprintf(&b, "topic: %s\nkey: %s\nheaders:\n", pm.Topic, encode(t, pm.Key))
	h := headers(t, pm)
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "  %s: %s\n", k, h[k])
	}
	fmt.Fprintf(&b, "value:\n%s\n", encode(t, pm.Value))
	return b.Bytes()
}

// TestGolden pins the serialized form of every event type: a change to a field name, a
// JSON tag, the time format, the headers or the key shows up here as a diff.
func TestGolden(t *testing.T) {
	for i, e := range samples() {
		t.Run(e.Type(), func(t *testing.T) {
			got := serialize(t, record(t, i, e))
			path := filepath.Join("testdata", e.Type()+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./events -run Golden -update to create it)", err)
			}
			if diff := cmp.Diff(strings.Split(string(want), "\n"), strings.Split(string(got), "\n")); diff != "" {
				t.Errorf("%s changed (-golden +now):\n%s", path, diff)
			}
		})
	}
}

// TestGoldenFilesHaveEvents finds golden files left behind by a removed or renamed type.
func TestGoldenFilesHaveEvents(t *testing.T) {
	types := map[string]bool{}
	for _, e := range samples() {
		types[e.Type()] = true
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if typ := strings.TrimSuffix(filepath.Base(f), ".golden"); !types[typ] {
			t.Errorf("%s: no event type %q", f, typ)
		}
	}
}
