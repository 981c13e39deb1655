package api_test

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

const seedBody = `{"customerId": "CUST001", "amount": 200, "currency": "USD"}`

// fixture is the API on a fresh database, served over real HTTP.
type fixture struct {
	srv *httptest.Server
	db  *sql.DB
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db := testenv.DB(t)
	store := orders.NewStore(db, outbox.New(""))
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	srv := httptest.NewServer(api.New(store, db, logger, api.Config{}))
	// Close waits for in-flight handlers, so nothing logs after the test ends.
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, db: db}
}

// response is an HTTP answer read in full.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with the headers given as name, value pairs; a name may repeat.
func (f *fixture) do(t *testing.T, method, path, body string, headers ...string) response {
	t.Helper()
	resp, err := f.send(method, path, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// send is do without a *testing.T, for goroutines.
func (f *fixture) send(method, path, body string, headers ...string) (response, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, r)
	if err != nil {
		return response{}, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}, nil
}

// post sends an order as JSON, with an Idempotency-Key unless key is "".
func (f *fixture) post(t *testing.T, body, key string) response {
	t.Helper()
	headers := []string{"Content-Type", "application/json"}
	if key != "" {
		headers = append(headers, "Idempotency-Key", key)
	}
	return f.do(t, http.MethodPost, "/orders", body, headers...)
}

// count returns the number of rows in table.
func (f *fixture) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	if err := f.db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

// wantRows checks the row counts of the three tables a POST writes.
func (f *fixture) wantRows(t *testing.T, orders, outbox, keys int) {
	t.Helper()
	for _, c := range []struct {
		table string
		want  int
	}{{"orders", orders}, {"watermill_outbox", outbox}, {"idempotency_keys", keys}} {
		if got := f.count(t, c.table); got != c.want {
			t.Errorf("rows in %s = %d, want %d", c.table, got, c.want)
		}
	}
}

// orderBody is an order as the API writes it.
type orderBody struct {
	ID         int64       `json:"id"`
	CustomerID string      `json:"customerId"`
	Amount     json.Number `json:"amount"`
	Currency   string      `json:"currency"`
	Status     string      `json:"status"`
	CreatedAt  time.Time   `json:"createdAt"`
	UpdatedAt  time.Time   `json:"updatedAt"`
}

// decodeOrder decodes an application/json order, rejecting fields it does not know.
func decodeOrder(t *testing.T, r response) orderBody {
	t.Helper()
	if got := r.header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want %q", got, "application/json")
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.UseNumber()
	dec.DisallowUnknownFields()
	var o orderBody
	if err := dec.Decode(&o); err != nil {
		t.Fatalf("decode order %s: %v", r.body, err)
	}
	return o
}

type problemBody struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Errors []struct {
		Pointer string `json:"pointer"`
		Detail  string `json:"detail"`
	} `json:"errors"`
}

// wantProblem checks that r is an RFC 9457 problem with the status and type, and returns it.
func wantProblem(t *testing.T, r response, status int, typ string) problemBody {
	t.Helper()
	if r.status != status {
		t.Errorf("status = %d, want %d (body %s)", r.status, status, r.body)
	}
	if got := r.header.Get("Content-Type"); got != "application/problem+json" {
		t.Errorf("Content-Type = %q, want %q", got, "application/problem+json")
	}
	var p problemBody
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("decode problem %s: %v", r.body, err)
	}
	if p.Status != r.status {
		t.Errorf("problem status = %d, want the HTTP status %d", p.Status, r.status)
	}
	if p.Type != typ {
		t.Errorf("problem type = %q, want %q", p.Type, typ)
	}
	if p.Title == "" {
		t.Errorf("problem title is empty")
	}
	return p
}

func TestCreateAndGet(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	start := time.Now()

	created := f.post(t, seedBody, "key-1")
	if created.status != http.StatusCreated {
		t.Fatalf("POST status = %d, want %d (body %s)", created.status, http.StatusCreated, created.body)
	}
	if got := created.header.Get("Location"); got != "/orders/1" {
		t.Errorf("Location = %q, want %q", got, "/orders/1")
	}
	if got := created.header.Values("Idempotent-Replayed"); len(got) != 0 {
		t.Errorf("Idempotent-Replayed = %q on the first response, want absent", got)
	}
	o := decodeOrder(t, created)
	want := orderBody{ID: 1, CustomerID: "CUST001", Amount: "200", Currency: "USD", Status: "PENDING",
		CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt}
	if diff := cmp.Diff(want, o); diff != "" {
		t.Errorf("POST body mismatch (-want +got):\n%s", diff)
	}
	if o.CreatedAt.Before(start.Add(-time.Minute)) || o.CreatedAt.After(time.Now().Add(time.Minute)) {
		t.Errorf("createdAt = %v, want about now (%v)", o.CreatedAt, start)
	}
	if !o.UpdatedAt.Equal(o.CreatedAt) {
		t.Errorf("updatedAt = %v, want createdAt %v", o.UpdatedAt, o.CreatedAt)
	}
	// The amount goes out as a JSON number, not a string.
	if !bytes.Contains(created.body, []byte(`"amount":200,`)) {
		t.Errorf("POST body %s does not contain %q", created.body, `"amount":200,`)
	}
	f.wantRows(t, 1, 1, 1)

	got := f.do(t, http.MethodGet, "/orders/1", "")
	if got.status != http.StatusOK {
		t.Fatalf("GET /orders/1 status = %d, want %d (body %s)", got.status, http.StatusOK, got.body)
	}
	if diff := cmp.Diff(o, decodeOrder(t, got)); diff != "" {
		t.Errorf("GET /orders/1 mismatch with the created order (-want +got):\n%s", diff)
	}
	if !bytes.Equal(got.body, created.body) {
		t.Errorf("GET /orders/1 body = %s, want the POST body %s", got.body, created.body)
	}

	t.Run("missing order", func(t *testing.T) {
		wantProblem(t, f.do(t, http.MethodGet, "/orders/2", ""), http.StatusNotFound, "/problems/not-found")
	})
	for _, id := range []string{"abc", "0", "-1", "1.5", "1e3", "99999999999999999999"} {
		t.Run("bad id "+id, func(t *testing.T) {
			wantProblem(t, f.do(t, http.MethodGet, "/orders/"+id, ""), http.StatusBadRequest, "/problems/malformed-request")
		})
	}
}

func TestCreateAmounts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name     string
		body     string
		amount   json.Number
		currency string
	}{
		{"cents", `{"customerId": "C1", "amount": 19.99, "currency": "USD"}`, "19.99", "USD"},
		{"trailing zero dropped", `{"customerId": "C1", "amount": 19.50, "currency": "USD"}`, "19.5", "USD"},
		{"JPY", `{"customerId": "C1", "amount": 500, "currency": "JPY"}`, "500", "JPY"},
		{"BHD", `{"customerId": "C1", "amount": 1.234, "currency": "BHD"}`, "1.234", "BHD"},
		{"below one", `{"customerId": "C1", "amount": 0.05, "currency": "EUR"}`, "0.05", "EUR"},
		{"largest", `{"customerId": "C1", "amount": 92233720368547758.07, "currency": "USD"}`, "92233720368547758.07", "USD"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := f.post(t, tc.body, "")
			if r.status != http.StatusCreated {
				t.Fatalf("status = %d, want %d (body %s)", r.status, http.StatusCreated, r.body)
			}
			o := decodeOrder(t, r)
			if o.Amount != tc.amount || o.Currency != tc.currency {
				t.Errorf("amount = %s %s, want %s %s", o.Amount, o.Currency, tc.amount, tc.currency)
			}
			g := decodeOrder(t, f.do(t, http.MethodGet, fmt.Sprintf("/orders/%d", o.ID), ""))
			if g.Amount != tc.amount || g.Currency != tc.currency {
				t.Errorf("GET amount = %s %s, want %s %s", g.Amount, g.Currency, tc.amount, tc.currency)
			}
		})
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	first := f.post(t, seedBody, "replay-key")
	if first.status != http.StatusCreated {
		t.Fatalf("first POST status = %d, want %d (body %s)", first.status, http.StatusCreated, first.body)
	}
	tests := []struct {
		name string
		body string
	}{
		{"same body", seedBody},
		{"200.00 for 200", `{"customerId": "CUST001", "amount": 200.00, "currency": "USD"}`},
		{"other whitespace and order", `{"currency":"USD","amount":200,"customerId":"CUST001"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			again := f.post(t, tc.body, "replay-key")
			if again.status != first.status {
				t.Errorf("status = %d, want the first response's %d", again.status, first.status)
			}
			if !bytes.Equal(again.body, first.body) {
				t.Errorf("body = %s, want the first response's %s byte for byte", again.body, first.body)
			}
			if got := again.header.Get("Idempotent-Replayed"); got != "true" {
				t.Errorf("Idempotent-Replayed = %q, want %q", got, "true")
			}
			if got, want := again.header.Get("Location"), first.header.Get("Location"); got != want {
				t.Errorf("Location = %q, want %q", got, want)
			}
			if got, want := again.header.Get("Content-Type"), first.header.Get("Content-Type"); got != want {
				t.Errorf("Content-Type = %q, want %q", got, want)
			}
			f.wantRows(t, 1, 1, 1)
		})
	}
}

func TestKeyReusedWithOtherBody(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if r := f.post(t, seedBody, "reused"); r.status != http.StatusCreated {
		t.Fatalf("first POST status = %d, want %d (body %s)", r.status, http.StatusCreated, r.body)
	}
	tests := []struct {
		name string
		body string
	}{
		{"other amount", `{"customerId": "CUST001", "amount": 201, "currency": "USD"}`},
		{"other customer", `{"customerId": "CUST002", "amount": 200, "currency": "USD"}`},
		{"same minor units, other currency", `{"customerId": "CUST001", "amount": 20000, "currency": "JPY"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := f.post(t, tc.body, "reused")
			wantProblem(t, r, http.StatusUnprocessableEntity, "/problems/idempotency-key-reused")
			if got := r.header.Values("Idempotent-Replayed"); len(got) != 0 {
				t.Errorf("Idempotent-Replayed = %q, want absent", got)
			}
			if got := r.header.Get("Location"); got != "" {
				t.Errorf("Location = %q, want absent", got)
			}
			f.wantRows(t, 1, 1, 1)
		})
	}
	// The key still answers the original request.
	if r := f.post(t, seedBody, "reused"); r.status != http.StatusCreated || r.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("original body again: status %d, Idempotent-Replayed %q; want %d, %q",
			r.status, r.header.Get("Idempotent-Replayed"), http.StatusCreated, "true")
	}
}

func TestCreateWithoutKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var ids []int64
	for range 2 {
		r := f.post(t, seedBody, "")
		if r.status != http.StatusCreated {
			t.Fatalf("status = %d, want %d (body %s)", r.status, http.StatusCreated, r.body)
		}
		if got := r.header.Values("Idempotent-Replayed"); len(got) != 0 {
			t.Errorf("Idempotent-Replayed = %q, want absent", got)
		}
		ids = append(ids, decodeOrder(t, r).ID)
	}
	if ids[0] == ids[1] {
		t.Errorf("order ids = %v, want two different orders", ids)
	}
	f.wantRows(t, 2, 2, 0)
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	const ctJSON = "application/json"
	tests := []struct {
		name    string
		body    string
		headers []string
		status  int
		typ     string
		pointer string // errors[0].pointer, if any
	}{
		{name: "malformed JSON", body: `{"customerId": `, headers: []string{"Content-Type", ctJSON},
			status: 400, typ: "/problems/malformed-request"},
		{name: "empty body", body: "", headers: []string{"Content-Type", ctJSON},
			status: 400, typ: "/problems/malformed-request"},
		{name: "array", body: "[" + seedBody + "]", headers: []string{"Content-Type", ctJSON},
			status: 400, typ: "/problems/malformed-request"},
		{name: "trailing data", body: seedBody + "{}", headers: []string{"Content-Type", ctJSON},
			status: 400, typ: "/problems/malformed-request"},
		{name: "duplicate key", body: `{"customerId": "CUST001", "amount": 200, "Amount": 1, "currency": "USD"}`,
			headers: []string{"Content-Type", ctJSON}, status: 400, typ: "/problems/malformed-request"},
		{name: "wrong content type", body: seedBody, headers: []string{"Content-Type", "text/plain"},
			status: 415, typ: "/problems/unsupported-media-type"},
		{name: "form content type", body: seedBody, headers: []string{"Content-Type", "application/x-www-form-urlencoded"},
			status: 415, typ: "/problems/unsupported-media-type"},
		{name: "unparsable content type", body: seedBody, headers: []string{"Content-Type", "application/json; charset"},
			status: 415, typ: "/problems/unsupported-media-type"},
		{name: "missing content type", body: seedBody,
			status: 415, typ: "/problems/unsupported-media-type"},
		{name: "body over 64 KiB", body: `{"customerId": "CUST001", "amount": 200, "currency": "USD", "pad": "` +
			strings.Repeat("x", 64<<10) + `"}`, headers: []string{"Content-Type", ctJSON},
			status: 413, typ: "/problems/body-too-large"},
		{name: "body one byte over 64 KiB", body: seedBody + strings.Repeat(" ", 64<<10+1-len(seedBody)),
			headers: []string{"Content-Type", ctJSON}, status: 413, typ: "/problems/body-too-large"},
		{name: "read-only field", body: `{"id": 7, "customerId": "CUST001", "amount": 200, "currency": "USD"}`,
			headers: []string{"Content-Type", ctJSON}, status: 422, typ: "/problems/validation", pointer: "/id"},
		{name: "read-only status", body: `{"customerId": "CUST001", "amount": 200, "currency": "USD", "status": "PAID"}`,
			headers: []string{"Content-Type", ctJSON}, status: 422, typ: "/problems/validation", pointer: "/status"},
		{name: "negative amount", body: `{"customerId": "CUST001", "amount": -1, "currency": "USD"}`,
			headers: []string{"Content-Type", ctJSON}, status: 422, typ: "/problems/validation", pointer: "/amount"},
		{name: "SQL in customerId", body: `{"customerId": "x'; DROP TABLE orders;--", "amount": 200, "currency": "USD"}`,
			headers: []string{"Content-Type", ctJSON}, status: 422, typ: "/problems/validation", pointer: "/customerId"},
		{name: "invalid body with a valid key", body: `{"customerId": "CUST001", "amount": 200, "currency": "usd"}`,
			headers: []string{"Content-Type", ctJSON, "Idempotency-Key", "k1"},
			status:  422, typ: "/problems/validation", pointer: "/currency"},
		// Go's client sends "Idempotency-Key: " for an empty value; the server sees the header with "".
		{name: "empty Idempotency-Key", body: seedBody, headers: []string{"Content-Type", ctJSON, "Idempotency-Key", ""},
			status: 400, typ: "/problems/malformed-request"},
		{name: "Idempotency-Key of 256 characters", body: seedBody,
			headers: []string{"Content-Type", ctJSON, "Idempotency-Key", strings.Repeat("k", 256)},
			status:  400, typ: "/problems/malformed-request"},
		{name: "non-ASCII Idempotency-Key", body: seedBody, headers: []string{"Content-Type", ctJSON, "Idempotency-Key", "ключ"},
			status: 400, typ: "/problems/malformed-request"},
		{name: "Idempotency-Key with a space", body: seedBody, headers: []string{"Content-Type", ctJSON, "Idempotency-Key", "a b"},
			status: 400, typ: "/problems/malformed-request"},
		{name: "Idempotency-Key with a tab", body: seedBody, headers: []string{"Content-Type", ctJSON, "Idempotency-Key", "a\tb"},
			status: 400, typ: "/problems/malformed-request"},
		{name: "Idempotency-Key sent twice", body: seedBody,
			headers: []string{"Content-Type", ctJSON, "Idempotency-Key", "k1", "Idempotency-Key", "k1"},
			status:  400, typ: "/problems/malformed-request"},
		// The key is checked before the body: a bad key is reported even with a bad body.
		{name: "bad key and bad body", body: `{`, headers: []string{"Content-Type", ctJSON, "Idempotency-Key", "a b"},
			status: 400, typ: "/problems/malformed-request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			r := f.do(t, http.MethodPost, "/orders", tc.body, tc.headers...)
			p := wantProblem(t, r, tc.status, tc.typ)
			if tc.pointer != "" {
				if len(p.Errors) == 0 || p.Errors[0].Pointer != tc.pointer {
					t.Errorf("errors = %+v, want errors[0].pointer %q", p.Errors, tc.pointer)
				} else if p.Errors[0].Detail == "" {
					t.Errorf("errors[0].detail is empty")
				}
			}
			f.wantRows(t, 0, 0, 0)
		})
	}
}

// TestRequestLimits checks the accepting side of the limits TestBadRequests probes.
func TestRequestLimits(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name    string
		body    string
		headers []string
	}{
		{"body of exactly 64 KiB", seedBody + strings.Repeat(" ", 64<<10-len(seedBody)),
			[]string{"Content-Type", "application/json"}},
		{"content type with charset", seedBody, []string{"Content-Type", "application/json; charset=utf-8"}},
		{"content type in capitals", seedBody, []string{"Content-Type", "Application/JSON"}},
		{"Idempotency-Key of 255 characters", seedBody,
			[]string{"Content-Type", "application/json", "Idempotency-Key", strings.Repeat("k", 255)}},
		{"Idempotency-Key of one character", seedBody,
			[]string{"Content-Type", "application/json", "Idempotency-Key", "k"}},
		{"Idempotency-Key of every printable character", seedBody,
			[]string{"Content-Type", "application/json", "Idempotency-Key", printableASCII()}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, http.MethodPost, "/orders", tc.body, tc.headers...)
			if r.status != http.StatusCreated {
				t.Fatalf("status = %d, want %d (body %s)", r.status, http.StatusCreated, r.body)
			}
			if got := f.count(t, "orders"); got != i+1 {
				t.Errorf("rows in orders = %d, want %d", got, i+1)
			}
		})
	}
}

func printableASCII() string {
	var b strings.Builder
	for c := byte(0x21); c <= 0x7e; c++ {
		b.WriteByte(c)
	}
	return b.String()
}

func TestFailedValidationStoresNoKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bad := f.post(t, `{"customerId": "CUST001", "amount": 0, "currency": "USD"}`, "fix-me")
	wantProblem(t, bad, http.StatusUnprocessableEntity, "/problems/validation")
	f.wantRows(t, 0, 0, 0)

	good := f.post(t, seedBody, "fix-me")
	if good.status != http.StatusCreated {
		t.Fatalf("corrected POST status = %d, want %d (body %s)", good.status, http.StatusCreated, good.body)
	}
	if got := good.header.Values("Idempotent-Replayed"); len(got) != 0 {
		t.Errorf("Idempotent-Replayed = %q, want absent", got)
	}
	f.wantRows(t, 1, 1, 1)
}

func TestConcurrentSameKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const (
		rounds  = 3
		clients = 20
	)
	ids := map[int64]bool{}
	for round := 1; round <= rounds; round++ {
		key := fmt.Sprintf("concurrent-%d", round)
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results = make([]response, clients)
			errs    = make([]error, clients)
		)
		for i := range clients {
			wg.Go(func() {
				<-start
				results[i], errs[i] = f.send(http.MethodPost, "/orders", seedBody,
					"Content-Type", "application/json", "Idempotency-Key", key)
			})
		}
		close(start)
		wg.Wait()

		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: client %d: %v", round, i, err)
			}
		}
		first := results[0]
		if first.status != http.StatusCreated {
			t.Errorf("round %d: status = %d, want %d (body %s)", round, first.status, http.StatusCreated, first.body)
		}
		replayed := 0
		for i, r := range results {
			if r.status != first.status || !bytes.Equal(r.body, first.body) {
				t.Errorf("round %d: client %d got %d %s, client 0 got %d %s",
					round, i, r.status, r.body, first.status, first.body)
			}
			if r.header.Get("Idempotent-Replayed") == "true" {
				replayed++
			}
		}
		if replayed != clients-1 {
			t.Errorf("round %d: %d responses replayed, want %d", round, replayed, clients-1)
		}
		// Ids are drawn ahead by concurrent requests, so the round's order need not get
		// the lowest one; it must be a new order, and the only one of the round.
		if o := decodeOrder(t, first); o.ID < 1 || ids[o.ID] {
			t.Errorf("round %d: order id = %d, want a new one (seen %v)", round, o.ID, ids)
		} else {
			ids[o.ID] = true
		}
		f.wantRows(t, round, round, round)
	}
}

func TestRouting(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if r := f.post(t, seedBody, ""); r.status != http.StatusCreated {
		t.Fatalf("POST status = %d, want %d", r.status, http.StatusCreated)
	}
	tests := []struct {
		name   string
		method string
		path   string
		status int
		typ    string
		allow  string
	}{
		{"DELETE an order", http.MethodDelete, "/orders/1", 405, "/problems/method-not-allowed", "GET, HEAD"},
		{"PUT an order", http.MethodPut, "/orders/1", 405, "/problems/method-not-allowed", "GET, HEAD"},
		{"DELETE the collection", http.MethodDelete, "/orders", 405, "/problems/method-not-allowed", "GET, HEAD, POST"},
		{"POST to healthz", http.MethodPost, "/healthz", 405, "/problems/method-not-allowed", "GET, HEAD"},
		{"unknown path", http.MethodGet, "/nope", 404, "/problems/not-found", ""},
		{"below an order", http.MethodGet, "/orders/1/items", 404, "/problems/not-found", ""},
		{"root", http.MethodGet, "/", 404, "/problems/not-found", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := f.do(t, tc.method, tc.path, "")
			wantProblem(t, r, tc.status, tc.typ)
			// RFC 9110 §15.5.6: a 405 must list the methods the resource supports.
			if got := strings.Join(r.header.Values("Allow"), ", "); got != tc.allow {
				t.Errorf("Allow = %q, want %q", got, tc.allow)
			}
		})
	}
	f.wantRows(t, 1, 1, 0)
}

func TestHealth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, tc := range []struct{ path, body string }{{"/healthz", "ok\n"}, {"/readyz", "ready\n"}} {
		t.Run(tc.path, func(t *testing.T) {
			r := f.do(t, http.MethodGet, tc.path, "")
			if r.status != http.StatusOK {
				t.Errorf("status = %d, want %d", r.status, http.StatusOK)
			}
			if string(r.body) != tc.body {
				t.Errorf("body = %q, want %q", r.body, tc.body)
			}
		})
	}
}

func TestNotReadyWithoutDatabase(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.db.Close()
	r := f.do(t, http.MethodGet, "/readyz", "")
	wantProblem(t, r, http.StatusServiceUnavailable, "/problems/service-unavailable")
	if r := f.do(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK {
		t.Errorf("/healthz status = %d, want %d: liveness does not depend on the database", r.status, http.StatusOK)
	}
}
