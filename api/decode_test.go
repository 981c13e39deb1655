package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/orderpipe/orderpipe/money"
)

const seedBody = `{"customerId": "CUST001", "amount": 200, "currency": "USD"}`

type validCase struct {
	name string
	body string
	want createRequest
}

var validCases = []validCase{
	{"seed", seedBody, createRequest{"CUST001", money.Amount{Minor: 20000, Currency: "USD"}}},
	{"cents", `{"customerId": "CUST001", "amount": 19.99, "currency": "USD"}`,
		createRequest{"CUST001", money.Amount{Minor: 1999, Currency: "USD"}}},
	{"JPY has no minor digits", `{"customerId": "CUST001", "amount": 500, "currency": "JPY"}`,
		createRequest{"CUST001", money.Amount{Minor: 500, Currency: "JPY"}}},
	{"BHD has three minor digits", `{"customerId": "CUST001", "amount": 1.234, "currency": "BHD"}`,
		createRequest{"CUST001", money.Amount{Minor: 1234, Currency: "BHD"}}},
	{"200.00 is 200", `{"customerId": "CUST001", "amount": 200.00, "currency": "USD"}`,
		createRequest{"CUST001", money.Amount{Minor: 20000, Currency: "USD"}}},
	{"trailing zeros beyond the currency digits", `{"customerId": "CUST001", "amount": 19.990, "currency": "USD"}`,
		createRequest{"CUST001", money.Amount{Minor: 1999, Currency: "USD"}}},
	{"smallest amount", `{"customerId": "CUST001", "amount": 0.01, "currency": "USD"}`,
		createRequest{"CUST001", money.Amount{Minor: 1, Currency: "USD"}}},
	{"largest amount", `{"customerId": "CUST001", "amount": 92233720368547758.07, "currency": "USD"}`,
		createRequest{"CUST001", money.Amount{Minor: 1<<63 - 1, Currency: "USD"}}},
	{"other field order and no whitespace", `{"currency":"USD","amount":200,"customerId":"CUST001"}`,
		createRequest{"CUST001", money.Amount{Minor: 20000, Currency: "USD"}}},
	{"surrounding whitespace", " \n\t" + seedBody + "\r\n ",
		createRequest{"CUST001", money.Amount{Minor: 20000, Currency: "USD"}}},
	{"escaped key is the same key", `{"customerId": "CUST001", "amou\u006et": 200, "currency": "USD"}`,
		createRequest{"CUST001", money.Amount{Minor: 20000, Currency: "USD"}}},
	{"customerId of 64 characters", `{"customerId": "` + strings.Repeat("a", 64) + `", "amount": 200, "currency": "USD"}`,
		createRequest{strings.Repeat("a", 64), money.Amount{Minor: 20000, Currency: "USD"}}},
	{"customerId with every allowed character class", `{"customerId": "aZ09_-", "amount": 200, "currency": "USD"}`,
		createRequest{"aZ09_-", money.Amount{Minor: 20000, Currency: "USD"}}},
}

func TestDecodeCreateValid(t *testing.T) {
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			got, fieldErrs, err := decodeCreate([]byte(tc.body))
			if err != nil {
				t.Fatalf("decodeCreate(%q) error = %v, want nil", tc.body, err)
			}
			if len(fieldErrs) > 0 {
				t.Fatalf("decodeCreate(%q) field errors = %+v, want none", tc.body, fieldErrs)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decodeCreate(%q) mismatch (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}

// mustDecode returns the request in body, failing the test if it is not valid.
func mustDecode(t *testing.T, body string) createRequest {
	t.Helper()
	req, fieldErrs, err := decodeCreate([]byte(body))
	if err != nil || len(fieldErrs) > 0 {
		t.Fatalf("decodeCreate(%q) = %+v, %v, want a valid request", body, fieldErrs, err)
	}
	return req
}

func TestFingerprint(t *testing.T) {
	seed := mustDecode(t, seedBody).fingerprint()
	tests := []struct {
		name string
		body string
		same bool
	}{
		{"200.00 for 200", `{"customerId": "CUST001", "amount": 200.00, "currency": "USD"}`, true},
		{"other whitespace and field order", `{"currency":"USD","customerId":"CUST001","amount":200}`, true},
		{"other amount", `{"customerId": "CUST001", "amount": 19.99, "currency": "USD"}`, false},
		{"other customer", `{"customerId": "CUST002", "amount": 200, "currency": "USD"}`, false},
		// 20000 JPY has the same minor units as 200 USD: the currency must count.
		{"same minor units, other currency", `{"customerId": "CUST001", "amount": 20000, "currency": "JPY"}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := bytes.Equal(mustDecode(t, tc.body).fingerprint(), seed)
			if got != tc.same {
				t.Errorf("fingerprint(%s) == fingerprint(seed) is %t, want %t", tc.body, got, tc.same)
			}
		})
	}
}

type badCase struct {
	name string
	body string
	// decodeErr: the body is not one JSON object (400). Otherwise pointers lists the
	// fields reported invalid (422), in any order.
	decodeErr bool
	pointers  []string
}

// seedWith returns the seed body with the members given as name=value: a seed field
// given replaces its value ("-" drops it), any other name is added.
func seedWith(members ...string) string {
	fields := map[string]string{"customerId": `"CUST001"`, "amount": `200`, "currency": `"USD"`}
	var extra []string
	for _, m := range members {
		name, value, _ := strings.Cut(m, "=")
		if _, ok := fields[name]; ok {
			fields[name] = value
			continue
		}
		extra = append(extra, `"`+name+`": `+value)
	}
	var parts []string
	for _, name := range []string{"customerId", "amount", "currency"} {
		if v := fields[name]; v != "-" {
			parts = append(parts, `"`+name+`": `+v)
		}
	}
	return "{" + strings.Join(append(parts, extra...), ", ") + "}"
}

var badCases = []badCase{
	// Not one JSON object: 400.
	{name: "empty body", body: "", decodeErr: true},
	{name: "whitespace only", body: " \n ", decodeErr: true},
	{name: "malformed", body: `{customerId: "CUST001"}`, decodeErr: true},
	{name: "single quotes", body: `{'customerId': 'CUST001'}`, decodeErr: true},
	{name: "truncated after a value", body: seedBody[:len(seedBody)-1], decodeErr: true},
	{name: "truncated in a string", body: `{"customerId": "CU`, decodeErr: true},
	{name: "truncated after the colon", body: `{"customerId":`, decodeErr: true},
	{name: "missing colon", body: `{"customerId" "CUST001", "amount": 200, "currency": "USD"}`, decodeErr: true},
	{name: "missing comma", body: `{"customerId": "CUST001" "amount": 200, "currency": "USD"}`, decodeErr: true},
	{name: "trailing comma", body: `{"customerId": "CUST001", "amount": 200, "currency": "USD",}`, decodeErr: true},
	{name: "object closed by a bracket", body: `{"customerId": "CUST001", "amount": 200, "currency": "USD"]`, decodeErr: true},
	{name: "array instead of object", body: "[" + seedBody + "]", decodeErr: true},
	{name: "null", body: `null`, decodeErr: true},
	{name: "string", body: `"CUST001"`, decodeErr: true},
	{name: "number", body: `200`, decodeErr: true},
	{name: "trailing object", body: seedBody + `{}`, decodeErr: true},
	{name: "trailing garbage", body: seedBody + ` x`, decodeErr: true},
	{name: "two seed objects", body: seedBody + "\n" + seedBody, decodeErr: true},
	{name: "duplicate key", body: `{"customerId": "CUST001", "amount": 200, "amount": 300, "currency": "USD"}`, decodeErr: true},
	{name: "duplicate key, same value", body: `{"customerId": "CUST001", "customerId": "CUST001", "amount": 200, "currency": "USD"}`, decodeErr: true},
	{name: "case-variant duplicate key", body: seedWith(`Amount=300`), decodeErr: true},
	{name: "escaped duplicate key", body: seedWith(`amou\u006et=300`), decodeErr: true},
	{name: "raw control character in a string", body: seedWith("customerId=\"CUST\t001\""), decodeErr: true},
	{name: "invalid number", body: seedWith(`amount=01`), decodeErr: true},
	{name: "NaN", body: seedWith(`amount=NaN`), decodeErr: true},
	{name: "plus sign", body: seedWith(`amount=+200`), decodeErr: true},
	{name: "leading dot", body: seedWith(`amount=.5`), decodeErr: true},
	{name: "byte order mark", body: "\ufeff" + seedBody, decodeErr: true},

	// One well-formed object with invalid fields: 422.
	{name: "empty object", body: `{}`, pointers: []string{"/customerId", "/amount", "/currency"}},
	{name: "missing customerId", body: seedWith(`customerId=-`), pointers: []string{"/customerId"}},
	{name: "missing amount", body: seedWith(`amount=-`), pointers: []string{"/amount"}},
	{name: "missing currency", body: seedWith(`currency=-`), pointers: []string{"/currency"}},
	{name: "amount as string", body: seedWith(`amount="200"`), pointers: []string{"/amount"}},
	{name: "amount as bool", body: seedWith(`amount=true`), pointers: []string{"/amount"}},
	{name: "amount null", body: seedWith(`amount=null`), pointers: []string{"/amount"}},
	{name: "amount as object", body: seedWith(`amount={"value": 200}`), pointers: []string{"/amount"}},
	{name: "customerId as number", body: seedWith(`customerId=1`), pointers: []string{"/customerId"}},
	{name: "customerId as array", body: seedWith(`customerId=["CUST001"]`), pointers: []string{"/customerId"}},
	{name: "currency null", body: seedWith(`currency=null`), pointers: []string{"/currency"}},
	{name: "negative amount", body: seedWith(`amount=-200`), pointers: []string{"/amount"}},
	{name: "negative zero", body: seedWith(`amount=-0`), pointers: []string{"/amount"}},
	{name: "zero amount", body: seedWith(`amount=0`), pointers: []string{"/amount"}},
	{name: "zero with decimals", body: seedWith(`amount=0.00`), pointers: []string{"/amount"}},
	{name: "amount overflows int64 minor units", body: seedWith(`amount=92233720368547758.08`), pointers: []string{"/amount"}},
	{name: "huge amount", body: seedWith(`amount=` + strings.Repeat("9", 400)), pointers: []string{"/amount"}},
	{name: "too many decimals for USD", body: seedWith(`amount=19.999`), pointers: []string{"/amount"}},
	{name: "decimals for JPY", body: seedWith(`amount=1.5`, `currency="JPY"`), pointers: []string{"/amount"}},
	{name: "too many decimals for BHD", body: seedWith(`amount=1.2345`, `currency="BHD"`), pointers: []string{"/amount"}},
	{name: "below the smallest unit", body: seedWith(`amount=0.001`), pointers: []string{"/amount"}},
	{name: "exponent", body: seedWith(`amount=2e2`), pointers: []string{"/amount"}},
	{name: "negative exponent", body: seedWith(`amount=2E-2`), pointers: []string{"/amount"}},
	{name: "lowercase currency", body: seedWith(`currency="usd"`), pointers: []string{"/currency"}},
	{name: "unknown currency", body: seedWith(`currency="XXX"`), pointers: []string{"/currency"}},
	{name: "empty currency", body: seedWith(`currency=""`), pointers: []string{"/currency"}},
	{name: "currency with a space", body: seedWith(`currency="USD "`), pointers: []string{"/currency"}},
	{name: "unknown field", body: seedWith(`note="gift"`), pointers: []string{"/note"}},
	{name: "case-variant field alone", body: seedWith(`amount=-`, `Amount=200`), pointers: []string{"/Amount", "/amount"}},
	{name: "read-only id", body: seedWith(`id=1`), pointers: []string{"/id"}},
	{name: "read-only status", body: seedWith(`status="PAID"`), pointers: []string{"/status"}},
	{name: "read-only version", body: seedWith(`version=7`), pointers: []string{"/version"}},
	{name: "read-only createdAt", body: seedWith(`createdAt="2020-01-01T00:00:00Z"`), pointers: []string{"/createdAt"}},
	{name: "pointer escapes / and ~", body: seedWith(`a/b~c=1`), pointers: []string{"/a~1b~0c"}},
	{name: "empty key", body: seedWith(`=1`), pointers: []string{"/"}},
	{name: "several invalid fields", body: seedWith(`id=1`, `currency="usd"`, `customerId=""`), pointers: []string{"/id", "/customerId", "/currency"}},
	{name: "customerId too long", body: seedWith(`customerId="` + strings.Repeat("a", 65) + `"`), pointers: []string{"/customerId"}},
	{name: "empty customerId", body: seedWith(`customerId=""`), pointers: []string{"/customerId"}},
	{name: "customerId with escaped control character", body: seedWith(`customerId="CUST\u0001"`), pointers: []string{"/customerId"}},
	{name: "customerId with NUL", body: seedWith(`customerId="CUST\u0000001"`), pointers: []string{"/customerId"}},
	{name: "customerId with trailing newline", body: seedWith(`customerId="CUST001\n"`), pointers: []string{"/customerId"}},
	{name: "customerId with a space", body: seedWith(`customerId="CUST 001"`), pointers: []string{"/customerId"}},
	{name: "customerId with surrounding spaces", body: seedWith(`customerId=" CUST001 "`), pointers: []string{"/customerId"}},
	{name: "customerId non-ASCII", body: seedWith(`customerId="CÜST001"`), pointers: []string{"/customerId"}},
	{name: "customerId with a fullwidth digit", body: seedWith(`customerId="CUST００1"`), pointers: []string{"/customerId"}},
	{name: "customerId invalid UTF-8", body: seedWith("customerId=\"CUST\xff\""), pointers: []string{"/customerId"}},
	{name: "customerId looks like SQL", body: seedWith(`customerId="x'; DROP TABLE orders;--"`), pointers: []string{"/customerId"}},
	{name: "customerId is a path", body: seedWith(`customerId="../etc/passwd"`), pointers: []string{"/customerId"}},
}

func TestDecodeCreateInvalid(t *testing.T) {
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			_, fieldErrs, err := decodeCreate([]byte(tc.body))
			if tc.decodeErr {
				var de *decodeError
				if !errors.As(err, &de) {
					t.Fatalf("decodeCreate(%q) error = %v, want a *decodeError (400)", tc.body, err)
				}
				if de.detail == "" {
					t.Errorf("decodeCreate(%q) decodeError detail is empty", tc.body)
				}
				if fieldErrs != nil {
					t.Errorf("decodeCreate(%q) field errors = %+v alongside a decode error, want none", tc.body, fieldErrs)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeCreate(%q) error = %v, want field errors only (422)", tc.body, err)
			}
			var got []string
			for _, fe := range fieldErrs {
				got = append(got, fe.Pointer)
				if fe.Detail == "" {
					t.Errorf("decodeCreate(%q) field error %q has no detail", tc.body, fe.Pointer)
				}
			}
			if diff := cmp.Diff(tc.pointers, got, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("decodeCreate(%q) field error pointers mismatch (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}

// TestDecodeCreateDetails checks the messages a client reads for common mistakes.
func TestDecodeCreateDetails(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{"duplicate key", seedWith(`Amount=300`), `duplicate key "Amount" (also given as "amount")`},
		{"trailing data", seedBody + `{}`, "unexpected data after the JSON object"},
		{"not an object", `[]`, "body must be a JSON object"},
		{"read-only", seedWith(`id=1`), "is read-only and set by the server"},
		{"unknown", seedWith(`note=1`), "is not a known field"},
		{"not positive", seedWith(`amount=0`), "must be greater than zero"},
		{"too precise", seedWith(`amount=1.234`), "has more than 2 decimal places, the most USD allows"},
		{"overflow", seedWith(`amount=92233720368547758.08`), "is too large"},
		{"exponent", seedWith(`amount=2e2`), "must be a plain decimal number in major units, such as 19.99"},
		{"not a number", seedWith(`amount="200"`), "must be a JSON number"},
		{"not a string", seedWith(`currency=null`), "must be a string"},
		{"required", seedWith(`currency=-`), "is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, fieldErrs, err := decodeCreate([]byte(tc.body))
			var got string
			var de *decodeError
			switch {
			case errors.As(err, &de):
				got = de.detail
			case err != nil:
				t.Fatalf("decodeCreate(%q) error = %v", tc.body, err)
			case len(fieldErrs) != 1:
				t.Fatalf("decodeCreate(%q) field errors = %+v, want exactly one", tc.body, fieldErrs)
			default:
				got = fieldErrs[0].Detail
			}
			if got != tc.want {
				t.Errorf("detail = %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzDecodeCreate(f *testing.F) {
	for _, tc := range validCases {
		f.Add([]byte(tc.body))
	}
	for _, tc := range badCases {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, fieldErrs, err := decodeCreate(body)
		if err != nil {
			var de *decodeError
			if !errors.As(err, &de) {
				t.Fatalf("decodeCreate(%q) error = %T %v, want only *decodeError", body, err, err)
			}
			if fieldErrs != nil {
				t.Fatalf("decodeCreate(%q) returned field errors %+v with a decode error", body, fieldErrs)
			}
			return
		}
		// No decode error: the body was one JSON value, so the standard library agrees it is valid.
		if !json.Valid(body) {
			t.Fatalf("decodeCreate(%q) accepted a body json.Valid rejects", body)
		}
		if len(fieldErrs) > 0 {
			for _, fe := range fieldErrs {
				if !strings.HasPrefix(fe.Pointer, "/") || fe.Detail == "" {
					t.Fatalf("decodeCreate(%q) field error %+v: want a /pointer and a detail", body, fe)
				}
			}
			return
		}

		if req.Amount.Minor <= 0 {
			t.Fatalf("decodeCreate(%q) Amount.Minor = %d, want > 0", body, req.Amount.Minor)
		}
		if _, ok := money.MinorDigits(req.Amount.Currency); !ok {
			t.Fatalf("decodeCreate(%q) Currency = %q, not a known currency", body, req.Amount.Currency)
		}
		if !customerIDPattern.MatchString(req.CustomerID) {
			t.Fatalf("decodeCreate(%q) CustomerID = %q, does not match %s", body, req.CustomerID, customerIDPattern)
		}
		back, err := money.Parse(req.Amount.Decimal(), req.Amount.Currency)
		if err != nil || back != req.Amount {
			t.Fatalf("money.Parse(%q, %q) = %+v, %v, want %+v", req.Amount.Decimal(), req.Amount.Currency, back, err, req.Amount)
		}
		// A valid body is an object of exactly the three fields, and they say what req says.
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("json.Unmarshal(%q): %v", body, err)
		}
		if keys := memberNames(t, body); len(m) != 3 || len(keys) != 3 {
			t.Fatalf("decodeCreate(%q) accepted an object with members %q, want customerId, amount and currency once each", body, keys)
		}
		var customerID, currency string
		if err := json.Unmarshal(m["customerId"], &customerID); err != nil || customerID != req.CustomerID {
			t.Fatalf("customerId in %q = %q (%v), decodeCreate says %q", body, customerID, err, req.CustomerID)
		}
		if err := json.Unmarshal(m["currency"], &currency); err != nil || currency != req.Amount.Currency {
			t.Fatalf("currency in %q = %q (%v), decodeCreate says %q", body, currency, err, req.Amount.Currency)
		}
		if amount, err := money.Parse(string(m["amount"]), currency); err != nil || amount != req.Amount {
			t.Fatalf("amount in %q = %+v (%v), decodeCreate says %+v", body, amount, err, req.Amount)
		}
	})
}

// memberNames lists the names of the top-level object's members as written, duplicates
// included (json.Unmarshal into a map would keep only the last of each).
func memberNames(t *testing.T, body []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil { // {
		t.Fatalf("memberNames(%q): %v", body, err)
	}
	var names []string
	for dec.More() {
		name, err := dec.Token()
		if err != nil {
			t.Fatalf("memberNames(%q): %v", body, err)
		}
		names = append(names, name.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatalf("memberNames(%q): %v", body, err)
		}
	}
	return names
}
