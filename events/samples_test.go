package events_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderpipe/orderpipe/events"
)

// sampleTime is the fixed time of the sample events: a whole number of microseconds,
// as Postgres stores it, and in a zone other than UTC to prove the output is UTC anyway.
var sampleTime = time.Date(2026, 11, 25, 2, 3, 33, 660835000, time.FixedZone("CET", 3600))

// samples returns one event of each type, as the system builds them.
func samples() []events.Event {
	return []events.Event{
		events.OrderCreated{ID: 1, CustomerID: "CUST001", AmountMinor: 20000, Currency: "USD", CreatedAt: sampleTime},
		events.PaymentSucceeded{ID: 1, PaymentID: "pay_1", AmountMinor: 20000, Currency: "USD", PaidAt: sampleTime},
		events.PaymentFailed{ID: 2, PaymentID: "pay_2", Reason: "insufficient_funds", FailedAt: sampleTime},
	}
}

// sampleID is the fixed event id of sample i.
func sampleID(i int) string { return "00000000-0000-4000-8000-00000000000" + strconv.Itoa(i+1) }

// declared returns the values of the exported constants of package events whose names
// start with prefix, read from its source: a constant added without a schema, a golden
// file or an AsyncAPI message is then caught by the tests that range over them.
func declared(t *testing.T, prefix string) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "events.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, prefix) || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s is not a string literal", name.Name)
				}
				v, _ := strconv.Unquote(lit.Value)
				out[name.Name] = v
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no constants %s* in events.go", prefix)
	}
	return out
}

func sortedValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// TestSamplesCoverEveryType keeps the samples, and so every test built on them, in step
// with the event types the package declares.
func TestSamplesCoverEveryType(t *testing.T) {
	have := map[string]bool{}
	for _, e := range samples() {
		have[e.Type()] = true
	}
	for name, typ := range declared(t, "Type") {
		if !have[typ] {
			t.Errorf("no sample event for %s (%s): add one to samples()", name, typ)
		}
	}
	topics := map[string]bool{}
	for _, topic := range declared(t, "Topic") {
		topics[topic] = true
	}
	for _, e := range samples() {
		if !topics[e.Topic()] {
			t.Errorf("%s goes to topic %q, which is not a Topic constant", e.Type(), e.Topic())
		}
		// The naming rule: <topic>.<entity>.<past-tense verb>.v<major version>.
		parts := strings.Split(e.Type(), ".")
		if len(parts) != 4 || parts[0] != e.Topic() || !strings.HasPrefix(parts[3], "v") {
			t.Errorf("type %q does not follow <topic>.<entity>.<verb>.v<N> for topic %q", e.Type(), e.Topic())
		}
	}
}
