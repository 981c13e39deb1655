package events_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v4"
)

// asyncAPI is events/asyncapi.yaml decoded as JSON would be (maps, slices, strings,
// float64), so that JSON pointers and the JSON Schema validator work on it.
type asyncAPI map[string]any

func loadAsyncAPI(t *testing.T) asyncAPI {
	t.Helper()
	b, err := os.ReadFile("asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("asyncapi.yaml is not YAML: %v", err)
	}
	// Through JSON: YAML allows what JSON (and so AsyncAPI) does not, such as non-string keys.
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("asyncapi.yaml is not representable as JSON: %v", err)
	}
	var out asyncAPI
	if err := json.Unmarshal(j, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// pointer resolves a JSON pointer ("/components/messages/x") in v.
func pointer(v any, ptr string) (any, error) {
	if ptr == "" {
		return v, nil
	}
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch node := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = node[tok]; !ok {
				return nil, fmt.Errorf("%s: no %q", ptr, tok)
			}
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(node) {
				return nil, fmt.Errorf("%s: no element %q", ptr, tok)
			}
			v = node[i]
		default:
			return nil, fmt.Errorf("%s: %q is inside a scalar", ptr, tok)
		}
	}
	return v, nil
}

// get is pointer for paths the test expects to exist.
func (d asyncAPI) get(t *testing.T, ptr string) any {
	t.Helper()
	v, err := pointer(map[string]any(d), ptr)
	if err != nil {
		t.Fatalf("asyncapi.yaml: %v", err)
	}
	return v
}

func (d asyncAPI) str(t *testing.T, ptr string) string {
	t.Helper()
	s, ok := d.get(t, ptr).(string)
	if !ok {
		t.Fatalf("asyncapi.yaml: %s is not a string", ptr)
	}
	return s
}

func (d asyncAPI) object(t *testing.T, ptr string) map[string]any {
	t.Helper()
	m, ok := d.get(t, ptr).(map[string]any)
	if !ok {
		t.Fatalf("asyncapi.yaml: %s is not an object", ptr)
	}
	return m
}

// ref returns the $ref of the object at ptr.
func (d asyncAPI) ref(t *testing.T, ptr string) string {
	t.Helper()
	return d.str(t, ptr+"/$ref")
}

func TestAsyncAPIIsVersion3(t *testing.T) {
	d := loadAsyncAPI(t)
	if got := d.str(t, "/asyncapi"); got != "3.0.0" {
		t.Errorf("asyncapi = %q, want 3.0.0", got)
	}
	if d.str(t, "/info/title") == "" || d.str(t, "/info/version") == "" {
		t.Error("info needs a title and a version")
	}
	if got := d.str(t, "/defaultContentType"); got != "application/json" {
		t.Errorf("defaultContentType = %q", got)
	}
}

// TestAsyncAPIRefsResolve follows every $ref: local ones to a node of the document, others
// to an existing file (and a node in it, if they name one).
func TestAsyncAPIRefsResolve(t *testing.T) {
	d := loadAsyncAPI(t)
	n := 0
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if k != "$ref" {
					walk(path+"/"+k, c)
					continue
				}
				n++
				ref, _ := c.(string)
				file, frag, _ := strings.Cut(ref, "#")
				var target any = map[string]any(d)
				if file != "" {
					b, err := os.ReadFile(filepath.FromSlash(file))
					if err != nil {
						t.Errorf("%s: $ref %q: %v", path, ref, err)
						continue
					}
					if err := json.Unmarshal(b, &target); err != nil {
						t.Errorf("%s: $ref %q: not JSON: %v", path, ref, err)
						continue
					}
				}
				if _, err := pointer(target, frag); err != nil {
					t.Errorf("%s: $ref %q does not resolve: %v", path, ref, err)
				}
			}
		case []any:
			for i, c := range v {
				walk(fmt.Sprintf("%s/%d", path, i), c)
			}
		}
	}
	walk("", map[string]any(d))
	if n < 10 {
		t.Errorf("found %d $refs; the walk is broken", n)
	}
}

// messageKey returns the components/messages key of the message named typ.
func messageKey(t *testing.T, d asyncAPI, typ string) string {
	t.Helper()
	for key, m := range d.object(t, "/components/messages") {
		if name, _ := m.(map[string]any)["name"].(string); name == typ {
			return key
		}
	}
	t.Fatalf("asyncapi.yaml has no message named %q", typ)
	return ""
}

// TestAsyncAPIDescribesEveryEvent checks that every event type is a message with its
// schema as payload, and that the channel of its topic carries it.
func TestAsyncAPIDescribesEveryEvent(t *testing.T) {
	d := loadAsyncAPI(t)
	channels := map[string]string{} // address → channel key
	for key := range d.object(t, "/channels") {
		channels[d.str(t, "/channels/"+key+"/address")] = key
	}
	for name, topic := range declared(t, "Topic") {
		if channels[topic] == "" {
			t.Errorf("no channel has the address %q (%s)", topic, name)
		}
	}
	topicOf := map[string]string{}
	for _, e := range samples() {
		topicOf[e.Type()] = e.Topic()
	}
	for name, typ := range declared(t, "Type") {
		t.Run(typ, func(t *testing.T) {
			key := messageKey(t, d, typ)
			msg := "/components/messages/" + key
			if got, want := d.ref(t, msg+"/payload"), "schemas/"+typ+".json"; got != want {
				t.Errorf("%s payload $ref = %q, want %q", name, got, want)
			}
			if got := d.ref(t, msg+"/bindings/kafka/key"); got != "#/components/schemas/orderKey" {
				t.Errorf("kafka key = %q, want the order key", got)
			}
			channel := channels[topicOf[typ]]
			if channel == "" {
				t.Fatalf("no channel for topic %q", topicOf[typ])
			}
			found := false
			for _, m := range d.object(t, "/channels/"+channel+"/messages") {
				ref, _ := m.(map[string]any)["$ref"].(string)
				found = found || ref == "#"+msg
			}
			if !found {
				t.Errorf("channel %s does not carry %s", channel, msg)
			}
		})
	}
}

// TestAsyncAPIOperationsUseTheirChannelsMessages is AsyncAPI 3's rule that an operation's
// messages are a subset of its channel's.
func TestAsyncAPIOperationsUseTheirChannelsMessages(t *testing.T) {
	d := loadAsyncAPI(t)
	for key := range d.object(t, "/operations") {
		op := "/operations/" + key
		channel := strings.TrimPrefix(d.ref(t, op+"/channel"), "#")
		msgs, _ := d.get(t, op+"/messages").([]any)
		if len(msgs) == 0 {
			t.Errorf("%s has no messages", op)
		}
		for _, m := range msgs {
			ref, _ := m.(map[string]any)["$ref"].(string)
			if !strings.HasPrefix(ref, "#"+channel+"/messages/") {
				t.Errorf("%s: message %q is not one of %s's", op, ref, channel)
			}
		}
	}
}

// asyncAPISchemas compiles schemas inside asyncapi.yaml (AsyncAPI schemas are JSON
// Schema draft 07 with additions); $refs to schemas/*.json load those files.
type asyncAPISchemas struct {
	c    *jsonschema.Compiler
	base string
}

func newAsyncAPISchemas(t *testing.T, d asyncAPI) asyncAPISchemas {
	t.Helper()
	abs, err := filepath.Abs("asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	base := (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}).String()
	// A round trip through the validator's own decoder, which keeps numbers exact.
	j, _ := json.Marshal(d)
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(string(j)))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	c.AssertFormat()
	if err := c.AddResource(base, doc); err != nil {
		t.Fatal(err)
	}
	return asyncAPISchemas{c: c, base: base}
}

func (s asyncAPISchemas) compile(t *testing.T, ptr string) *jsonschema.Schema {
	t.Helper()
	sch, err := s.c.Compile(s.base + "#" + ptr)
	if err != nil {
		t.Fatalf("compile %s: %v", ptr, err)
	}
	return sch
}

// asJSON converts a Go value to what the validator expects.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(strings.NewReader(string(j)))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAsyncAPIHeadersAndKeyMatchRecords validates the Kafka record of every event type
// (headers and key) against the message's headers schema and key binding in
// asyncapi.yaml, and shows that those schemas reject a record of another type.
func TestAsyncAPIHeadersAndKeyMatchRecords(t *testing.T) {
	d := loadAsyncAPI(t)
	s := newAsyncAPISchemas(t, d)
	keySchema := s.compile(t, "/components/schemas/orderKey")
	for i, e := range samples() {
		t.Run(e.Type(), func(t *testing.T) {
			msg := "/components/messages/" + messageKey(t, d, e.Type())
			hs := s.compile(t, msg+"/headers")
			pm := record(t, i, e)
			h := headers(t, pm)
			if err := hs.Validate(asJSON(t, h)); err != nil {
				t.Errorf("headers %v: %v", h, err)
			}
			if err := keySchema.Validate(string(encode(t, pm.Key))); err != nil {
				t.Errorf("key: %v", err)
			}
			for j, other := range samples() {
				if other.Type() == e.Type() {
					continue
				}
				if err := hs.Validate(asJSON(t, headers(t, record(t, j, other)))); err == nil {
					t.Errorf("the headers of a %s validate as %s", other.Type(), e.Type())
				}
			}
			for _, broken := range []map[string]string{
				with(h, "ce_specversion", "0.3"),
				with(h, "ce_time", "2026-11-25 01:03:33"),
				with(h, "ce_subject", "01"),
				with(h, "content-type", "text/plain"),
				with(h, "traceparent", "not-a-traceparent"),
				with(h, "ce_id", ""),
			} {
				if err := hs.Validate(asJSON(t, broken)); err == nil {
					t.Errorf("broken headers validate: %v", broken)
				}
			}
			delete(h, "ce_id")
			if err := hs.Validate(asJSON(t, h)); err == nil {
				t.Error("headers without ce_id validate")
			}
		})
	}
}

func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		if mk != k {
			out[mk] = mv
		}
	}
	return out
}

// TestAsyncAPIExamplesValidate keeps the document's examples true to its own schemas.
func TestAsyncAPIExamplesValidate(t *testing.T) {
	d := loadAsyncAPI(t)
	s := newAsyncAPISchemas(t, d)
	n := 0
	for key := range d.object(t, "/components/messages") {
		msg := "/components/messages/" + key
		examples, _ := d.object(t, msg)["examples"].([]any)
		for i := range examples {
			ex := fmt.Sprintf("%s/examples/%d", msg, i)
			for _, part := range []string{"headers", "payload"} {
				n++
				if err := s.compile(t, msg+"/"+part).Validate(asJSON(t, d.get(t, ex+"/"+part))); err != nil {
					t.Errorf("%s/%s: %v", ex, part, err)
				}
			}
		}
	}
	if n < 2*len(declared(t, "Type")) {
		t.Errorf("validated %d example parts; want headers and payload for every event type", n)
	}
}
