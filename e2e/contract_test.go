package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/testenv"
)

// TestEventContract sends an approved and a declined order through the real pipeline and
// checks every record the system wrote to orders and payments against the published
// contract: the CloudEvents Kafka protocol binding in binary mode (by the spec's rules,
// and by reading each record with the CloudEvents Go SDK, which knows nothing of our
// code), and each event's data against its JSON Schema in events/schemas.
func TestEventContract(t *testing.T) {
	p := startPipeline(t)
	paid := p.create(t, "19.00", "USD")
	declined := p.create(t, "19.51", "USD") // paymentsim declines …51: insufficient_funds
	p.waitStatus(t, paid, "PAID", 60*time.Second)
	p.waitStatus(t, declined, "PAYMENT_FAILED", 60*time.Second)

	want := map[string][]string{ // topic → the types expected on it, one per order
		events.TopicOrders:   {events.TypeOrderCreated, events.TypeOrderCreated},
		events.TopicPayments: {events.TypePaymentSucceeded, events.TypePaymentFailed},
	}
	wantType := map[string]map[int64]string{
		events.TopicOrders:   {paid: events.TypeOrderCreated, declined: events.TypeOrderCreated},
		events.TopicPayments: {paid: events.TypePaymentSucceeded, declined: events.TypePaymentFailed},
	}
	schemas := compileEventSchemas(t)
	ids := map[string]string{}          // ce_id → where it was seen
	correlation := map[int64][]string{} // order → correlation ids of its events
	for _, topic := range []string{events.TopicOrders, events.TopicPayments} {
		msgs := testenv.Consume(t, p.topicPrefix+topic, 30*time.Second,
			func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= len(want[topic]) })
		if len(msgs) != len(want[topic]) {
			t.Fatalf("%s holds %d records, want %d", topic, len(msgs), len(want[topic]))
		}
		for _, m := range msgs {
			where := fmt.Sprintf("%s/%d@%d", m.Topic, m.Partition, m.Offset)
			t.Run(where, func(t *testing.T) {
				h := checkCloudEvent(t, topic, m)
				checkSDKReads(t, m, h)
				orderID, _ := strconv.ParseInt(h[events.MetaSubject], 10, 64)
				if got, want := h[events.MetaType], wantType[topic][orderID]; got != want {
					t.Errorf("order %d: ce_type %q on %s, want %q", orderID, got, topic, want)
				}
				if s := schemas[h[events.MetaType]]; s == nil {
					t.Errorf("no schema for ce_type %q", h[events.MetaType])
				} else {
					checkData(t, s, m.Value, orderID, h[events.MetaTime])
				}
				if prev, dup := ids[h[events.MetaID]]; dup {
					t.Errorf("ce_id %s also on %s: ids must be unique per event", h[events.MetaID], prev)
				}
				ids[h[events.MetaID]] = where
				correlation[orderID] = append(correlation[orderID], h[events.MetaCorrelationID])
			})
		}
	}
	// The payment outcome carries the correlation id of the request that created the order.
	for _, id := range []int64{paid, declined} {
		c := correlation[id]
		if len(c) != 2 || c[0] == "" || c[0] != c[1] {
			t.Errorf("order %d: correlation ids %q, want one non-empty id on both its events", id, c)
		}
	}
}

// compileEventSchemas compiles events/schemas/<type>.json for every type, asserting
// formats (date-time), which draft 2020-12 only annotates by default.
func compileEventSchemas(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	out := map[string]*jsonschema.Schema{}
	for _, typ := range []string{events.TypeOrderCreated, events.TypePaymentSucceeded, events.TypePaymentFailed} {
		s, err := c.Compile(filepath.Join("..", "events", "schemas", typ+".json"))
		if err != nil {
			t.Fatalf("schema of %s: %v", typ, err)
		}
		out[typ] = s
	}
	return out
}

var (
	// contractTraceparent is W3C Trace Context's traceparent header.
	contractTraceparent = regexp.MustCompile(`^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
	// contractOrderKey is an order id in canonical decimal.
	contractOrderKey = regexp.MustCompile(`^[1-9][0-9]*$`)
	// contractAttribute is a CloudEvents attribute name.
	contractAttribute = regexp.MustCompile(`^[a-z0-9]{1,20}$`)
)

// checkCloudEvent applies the CloudEvents 1.0 Kafka protocol binding (binary content
// mode) and our rules for the attributes to a record, and returns its headers.
func checkCloudEvent(t *testing.T, topic string, m *sarama.ConsumerMessage) map[string]string {
	t.Helper()
	h := map[string]string{}
	for _, rh := range m.Headers {
		k := string(rh.Key)
		if _, dup := h[k]; dup {
			t.Errorf("header %q occurs twice", k)
		}
		h[k] = string(rh.Value)
	}
	for _, k := range []string{events.MetaSpecVersion, events.MetaID, events.MetaSource, events.MetaType,
		events.MetaTime, events.MetaSubject, events.MetaContentType} {
		if h[k] == "" {
			t.Errorf("required header %s missing or empty; headers %v", k, h)
		}
	}
	if got := h[events.MetaSpecVersion]; got != "1.0" {
		t.Errorf("ce_specversion = %q, want 1.0", got)
	}
	if got := h[events.MetaContentType]; got != "application/json" {
		t.Errorf("content-type = %q, want application/json (binary mode: the value is the data)", got)
	}
	if _, err := url.Parse(h[events.MetaSource]); err != nil || h[events.MetaSource] != events.Source(topic) {
		t.Errorf("ce_source = %q (%v), want the URI-reference %q", h[events.MetaSource], err, events.Source(topic))
	}
	if tm, err := time.Parse(time.RFC3339Nano, h[events.MetaTime]); err != nil || tm.Location() != time.UTC {
		t.Errorf("ce_time = %q: want RFC 3339 in UTC (%v)", h[events.MetaTime], err)
	}
	if !strings.HasPrefix(h[events.MetaType], topic+".") {
		t.Errorf("ce_type %q on topic %s: the type names its topic first", h[events.MetaType], topic)
	}
	if s := h[events.MetaSubject]; !contractOrderKey.MatchString(s) || string(m.Key) != s {
		t.Errorf("ce_subject %q, key %q: want the same order id in decimal", s, m.Key)
	}
	if uuid, ok := h["_watermill_message_uuid"]; ok && uuid != h[events.MetaID] {
		t.Errorf("_watermill_message_uuid %q differs from ce_id %q", uuid, h[events.MetaID])
	}
	if tp, ok := h["traceparent"]; ok && !contractTraceparent.MatchString(tp) {
		t.Errorf("traceparent %q is not W3C Trace Context", tp)
	}
	for k := range h {
		// Binary mode: every ce_ header is an attribute, and attribute names are lowercase
		// letters and digits.
		if name, ok := strings.CutPrefix(k, "ce_"); ok && !contractAttribute.MatchString(name) {
			t.Errorf("header %q is not a valid CloudEvents attribute name", k)
		}
	}
	return h
}

// checkSDKReads reads the record with the CloudEvents Go SDK's Kafka binding, as a
// consumer in another team would, and compares what it sees with the headers.
func checkSDKReads(t *testing.T, m *sarama.ConsumerMessage, h map[string]string) {
	t.Helper()
	msg := kafka_sarama.NewMessageFromConsumerMessage(m)
	if enc := msg.ReadEncoding(); enc != binding.EncodingBinary {
		t.Fatalf("the CloudEvents SDK sees encoding %v, want binary", enc)
	}
	e, err := binding.ToEvent(context.Background(), msg)
	if err != nil {
		t.Fatalf("the CloudEvents SDK cannot read the record: %v", err)
	}
	if err := e.Validate(); err != nil {
		t.Errorf("the CloudEvents SDK finds the event invalid: %v", err)
	}
	got := []string{e.SpecVersion(), e.ID(), e.Source(), e.Type(), e.Subject(), e.DataContentType(),
		e.Time().UTC().Format(time.RFC3339Nano)}
	want := []string{"1.0", h[events.MetaID], h[events.MetaSource], h[events.MetaType], h[events.MetaSubject],
		"application/json", h[events.MetaTime]}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("SDK attribute %d = %q, want %q (from the headers)", i, got[i], want[i])
		}
	}
	if !bytes.Equal(e.Data(), m.Value) {
		t.Errorf("SDK data = %s, want the record value %s", e.Data(), m.Value)
	}
}

// checkData validates an event's data against its schema and ties it to the headers:
// the data's order id is the subject, and its timestamp is ce_time.
func checkData(t *testing.T, s *jsonschema.Schema, value []byte, orderID int64, ceTime string) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
	if err != nil {
		t.Fatalf("value is not JSON: %v: %s", err, value)
	}
	if err := s.Validate(inst); err != nil {
		t.Errorf("data %s does not validate against its schema: %v", value, err)
	}
	var d struct {
		OrderID   int64  `json:"orderId"`
		CreatedAt string `json:"createdAt"`
		PaidAt    string `json:"paidAt"`
		FailedAt  string `json:"failedAt"`
	}
	if err := json.Unmarshal(value, &d); err != nil {
		t.Fatal(err)
	}
	if d.OrderID != orderID {
		t.Errorf("data orderId %d, ce_subject %d", d.OrderID, orderID)
	}
	if at := d.CreatedAt + d.PaidAt + d.FailedAt; at != ceTime {
		t.Errorf("data time %q, ce_time %q: want the same instant, written the same way", at, ceTime)
	}
}
