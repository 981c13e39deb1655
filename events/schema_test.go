package events_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/orderpipe/orderpipe/events"
)

// schemaPath is where the JSON Schema of an event type's data lives.
func schemaPath(typ string) string { return filepath.Join("schemas", typ+".json") }

// compileSchema compiles the schema of an event type, asserting formats (date-time),
// which draft 2020-12 only annotates by default.
func compileSchema(t *testing.T, typ string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	s, err := c.Compile(schemaPath(typ))
	if err != nil {
		t.Fatalf("compile %s: %v", schemaPath(typ), err)
	}
	return s
}

func validate(s *jsonschema.Schema, payload []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return err
	}
	return s.Validate(v)
}

// TestEventsValidate checks the data of every event type, as NewMessage serializes it,
// against its published schema.
func TestEventsValidate(t *testing.T) {
	for _, e := range samples() {
		t.Run(e.Type(), func(t *testing.T) {
			msg, err := events.NewMessage(e, sampleTime)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(compileSchema(t, e.Type()), msg.Payload); err != nil {
				t.Errorf("payload %s does not validate: %v", msg.Payload, err)
			}
		})
	}
}

// TestSchemasMatchTypes keeps each schema in step with its Go type: every JSON field is a
// property, the fields without omitempty are exactly the required ones, consumers are
// told to tolerate added fields, and no schema exists without an event type.
func TestSchemasMatchTypes(t *testing.T) {
	for _, e := range samples() {
		t.Run(e.Type(), func(t *testing.T) {
			b, err := os.ReadFile(schemaPath(e.Type()))
			if err != nil {
				t.Fatal(err)
			}
			var s struct {
				Schema     string                     `json:"$schema"`
				Title      string                     `json:"title"`
				Required   []string                   `json:"required"`
				Properties map[string]json.RawMessage `json:"properties"`
				Additional *bool                      `json:"additionalProperties"`
			}
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatal(err)
			}
			if s.Schema != "https://json-schema.org/draft/2020-12/schema" || s.Title != e.Type() {
				t.Errorf("$schema %q, title %q; want draft 2020-12 and %q", s.Schema, s.Title, e.Type())
			}
			if s.Additional == nil || !*s.Additional {
				t.Error("additionalProperties must be true: consumers must accept added optional fields")
			}
			var fields, required, properties []string
			rt := reflect.TypeOf(e)
			for i := 0; i < rt.NumField(); i++ {
				name, opts, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
				fields = append(fields, name)
				if !strings.Contains(opts, "omitempty") {
					required = append(required, name)
				}
			}
			for p := range s.Properties {
				properties = append(properties, p)
			}
			sort.Strings(fields)
			sort.Strings(required)
			sort.Strings(properties)
			sort.Strings(s.Required)
			if diff := cmp.Diff(fields, properties); diff != "" {
				t.Errorf("schema properties vs Go fields (-go +schema):\n%s", diff)
			}
			if diff := cmp.Diff(required, s.Required); diff != "" {
				t.Errorf("schema required vs Go fields without omitempty (-go +schema):\n%s", diff)
			}
		})
	}
	files, err := filepath.Glob(filepath.Join("schemas", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, e := range samples() {
		types[e.Type()] = true
	}
	for _, f := range files {
		if typ := strings.TrimSuffix(filepath.Base(f), ".json"); !types[typ] {
			t.Errorf("%s: no event type %q", f, typ)
		}
	}
}

// TestSchemasReject proves the schemas can fail: every required field, and each field's
// type and format, is enforced.
func TestSchemasReject(t *testing.T) {
	// Each case edits the sample's data, as a JSON object, into something invalid.
	type edit func(map[string]any)
	set := func(k string, v any) edit { return func(m map[string]any) { m[k] = v } }
	common := map[string]edit{
		"orderId zero":      set("orderId", 0),
		"orderId negative":  set("orderId", -1),
		"orderId fraction":  set("orderId", 1.5),
		"orderId as string": set("orderId", "1"),
	}
	money := map[string]edit{
		"amountMinor zero":      set("amountMinor", 0),
		"amountMinor fraction":  set("amountMinor", 19.99),
		"amountMinor as string": set("amountMinor", "20000"),
		"currency lowercase":    set("currency", "usd"),
		"currency too long":     set("currency", "USDX"),
	}
	times := func(field string) map[string]edit {
		return map[string]edit{
			field + " not a date-time": set(field, "yesterday"),
			field + " without zone":    set(field, "2026-11-25T01:03:33"),
			field + " not UTC":         set(field, "2026-11-25T02:03:33+01:00"),
			field + " as number":       set(field, 1764032613),
		}
	}
	specific := map[string]map[string]edit{
		events.TypeOrderCreated:     merge(money, times("createdAt"), map[string]edit{"customerId empty": set("customerId", "")}),
		events.TypePaymentSucceeded: merge(money, times("paidAt"), map[string]edit{"paymentId as number": set("paymentId", 1)}),
		events.TypePaymentFailed:    merge(times("failedAt"), map[string]edit{"reason as null": set("reason", nil)}),
	}
	for _, e := range samples() {
		t.Run(e.Type(), func(t *testing.T) {
			schema := compileSchema(t, e.Type())
			msg, err := events.NewMessage(e, sampleTime)
			if err != nil {
				t.Fatal(err)
			}
			cases := merge(common, specific[e.Type()])
			var s struct{ Required []string }
			if b, err := os.ReadFile(schemaPath(e.Type())); err != nil || json.Unmarshal(b, &s) != nil || len(s.Required) == 0 {
				t.Fatalf("schema without required fields: %v", err)
			}
			for _, f := range s.Required {
				cases["without "+f] = func(m map[string]any) { delete(m, f) }
			}
			for name, ed := range cases {
				m := map[string]any{}
				if err := json.Unmarshal(msg.Payload, &m); err != nil {
					t.Fatal(err)
				}
				ed(m)
				payload, _ := json.Marshal(m)
				if err := validate(schema, payload); err == nil {
					t.Errorf("%s: %s validates, want an error", name, payload)
				}
			}
			for _, payload := range []string{`"a string"`, `[]`, `null`} {
				if err := validate(schema, []byte(payload)); err == nil {
					t.Errorf("%s validates, want an error", payload)
				}
			}
		})
	}
}

// TestSchemasAcceptAddedFields is the compatibility rule seen from a consumer that
// validates: a producer that adds an optional field must not break it.
func TestSchemasAcceptAddedFields(t *testing.T) {
	for _, e := range samples() {
		msg, err := events.NewMessage(e, sampleTime)
		if err != nil {
			t.Fatal(err)
		}
		payload := append(bytes.TrimSuffix(msg.Payload, []byte("}")), []byte(`,"addedInV1_1":{"any":"thing"}}`)...)
		if err := validate(compileSchema(t, e.Type()), payload); err != nil {
			t.Errorf("%s with an added field: %v", e.Type(), err)
		}
	}
	// paymentId is optional in PaymentFailed (omitempty): absent must validate.
	msg, err := events.NewMessage(events.PaymentFailed{ID: 3, Reason: "card_declined", FailedAt: sampleTime}, sampleTime)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate(compileSchema(t, events.TypePaymentFailed), msg.Payload); err != nil {
		t.Errorf("PaymentFailed without paymentId %s: %v", msg.Payload, err)
	}
}

func merge[V any](ms ...map[string]V) map[string]V {
	out := map[string]V{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}
