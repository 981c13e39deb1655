package api_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/go-chi/chi/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/orderpipe/orderpipe/api"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/money"
	"github.com/orderpipe/orderpipe/orders"
	"github.com/orderpipe/orderpipe/outbox"
)

// The helpers here are prefixed "spec" so that they cannot collide with the other
// api_test files.

const specSeed = `{"customerId": "CUST001", "amount": 200, "currency": "USD"}`

// specLoad loads openapi.yaml and validates it as an OpenAPI document. kin-openapi reads
// the "openapi: 3.1.0" field and validates schemas as JSON Schema 2020-12 from it, both
// here and in openapi3filter; no option is needed.
func specLoad(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("openapi.yaml")
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	return doc
}

// specUnreachableDB returns a handle on a Postgres address where nothing listens. It
// connects only when used, so the API can be built on it without a database.
func specUnreachableDB(t *testing.T) *sql.DB {
	t.Helper()
	cfg, err := pgx.ParseConfig("postgres://orderuser:secret@" + testenv.FreeAddr(t) + "/orderdb?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { db.Close() })
	return db
}

// specNewHandler is the real API on db.
func specNewHandler(t *testing.T, db *sql.DB, cfg api.Config) http.Handler {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	return api.New(orders.NewStore(db, outbox.New("")), db, logger, cfg)
}

// specClient talks to the API over real HTTP and checks every exchange against the
// document.
type specClient struct {
	doc    *openapi3.T
	router routers.Router
	srv    *httptest.Server
}

func newSpecClient(t *testing.T, db *sql.DB, cfg api.Config) *specClient {
	t.Helper()
	doc := specLoad(t)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatalf("router for openapi.yaml: %v", err)
	}
	srv := httptest.NewServer(specNewHandler(t, db, cfg))
	t.Cleanup(srv.Close)
	return &specClient{doc: doc, router: router, srv: srv}
}

// specResponse is an HTTP answer read in full.
type specResponse struct {
	status int
	header http.Header
	body   []byte
}

// send makes the request to the server; headers are name, value pairs.
func (c *specClient) send(t *testing.T, method, path, body string, headers []string) specResponse {
	t.Helper()
	req, err := http.NewRequest(method, c.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := c.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return specResponse{status: resp.StatusCode, header: resp.Header, body: b}
}

// specInput is the request as openapi3filter sees it. It is a copy of what is sent,
// because validation reads the body.
func specInput(t *testing.T, method, path, body string, headers []string) *http.Request {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	return req
}

// exchange sends a request to an operation of the document and checks that the response
// has status want and is one the operation describes. It also checks that the document
// accepts the request if specAccepts, and rejects it otherwise: the document must not
// promise what the server refuses, nor forbid what it accepts.
func (c *specClient) exchange(t *testing.T, method, path, body string, headers []string, want int, specAccepts bool) specResponse {
	t.Helper()
	req := specInput(t, method, path, body, headers)
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		t.Fatalf("%s %s: no operation in openapi.yaml: %v", method, path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route}
	err = openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case specAccepts && err != nil:
		t.Errorf("%s %s: openapi.yaml rejects the request: %v", method, path, err)
	case !specAccepts && err == nil:
		t.Errorf("%s %s: openapi.yaml accepts the request, want it rejected as the server rejects it", method, path)
	}

	resp := c.send(t, method, path, body, headers)
	if resp.status != want {
		t.Errorf("%s %s: status = %d, want %d (body %s)", method, path, resp.status, want, resp.body)
	}
	c.validateResponse(t, in, resp)
	return resp
}

// validateResponse checks resp against the operation of in, failing on a status the
// operation does not list.
func (c *specClient) validateResponse(t *testing.T, in *openapi3filter.RequestValidationInput, resp specResponse) {
	t.Helper()
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 resp.status,
		Header:                 resp.header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	out.SetBodyBytes(resp.body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s %s: %d response does not match openapi.yaml: %v\nheader: %v\nbody: %s",
			in.Request.Method, in.Request.URL, resp.status, err, resp.header, resp.body)
	}
}

// allowed returns the methods the document gives path, as an Allow header lists them.
func (c *specClient) allowed(t *testing.T, path string) string {
	t.Helper()
	var methods []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		if _, _, err := c.router.FindRoute(httptest.NewRequest(m, path, nil)); err == nil {
			methods = append(methods, m)
		}
		// The document's info says every GET also answers HEAD (RFC 9110).
		if m == http.MethodGet && len(methods) > 0 && methods[len(methods)-1] == http.MethodGet {
			methods = append(methods, http.MethodHead)
		}
	}
	return strings.Join(methods, ", ")
}

func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	doc := specLoad(t)
	if doc.OpenAPI != "3.1.0" || !doc.IsOpenAPI31OrLater() {
		t.Errorf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	// Guards against a loader that silently falls back to OpenAPI 3.0 rules, under which
	// a numeric exclusiveMinimum does not exist.
	amount := doc.Components.Schemas["CreateOrder"].Value.Properties["amount"].Value
	if amount.ExclusiveMin.Value == nil || *amount.ExclusiveMin.Value != 0 {
		t.Errorf("CreateOrder.amount exclusiveMinimum = %+v, want the number 0", amount.ExclusiveMin)
	}
	for _, tc := range []struct {
		name  string
		value any
		valid bool
	}{
		{"valid", map[string]any{"customerId": "C1", "amount": 19.99, "currency": "USD"}, true},
		{"zero amount", map[string]any{"customerId": "C1", "amount": 0, "currency": "USD"}, false},
		{"unknown member", map[string]any{"customerId": "C1", "amount": 1, "currency": "USD", "id": 1}, false},
		{"lowercase currency", map[string]any{"customerId": "C1", "amount": 1, "currency": "usd"}, false},
	} {
		err := doc.Components.Schemas["CreateOrder"].Value.VisitJSON(tc.value, openapi3.EnableJSONSchema2020())
		if (err == nil) != tc.valid {
			t.Errorf("CreateOrder %s: VisitJSON error = %v, want valid %t", tc.name, err, tc.valid)
		}
	}
}

// TestOpenAPICurrencies keeps the currency list in the document's Money section equal to
// the allowlist the server enforces.
func TestOpenAPICurrencies(t *testing.T) {
	t.Parallel()
	doc := specLoad(t)
	documented := map[string]int{}
	for _, m := range regexp.MustCompile(`\b([A-Z]{3}) \(([0-9])\)`).FindAllStringSubmatch(doc.Info.Description, -1) {
		documented[m[1]], _ = strconv.Atoi(m[2])
	}
	enforced := map[string]int{}
	for a := 'A'; a <= 'Z'; a++ {
		for b := 'A'; b <= 'Z'; b++ {
			for c := 'A'; c <= 'Z'; c++ {
				code := string([]rune{a, b, c})
				if digits, ok := money.MinorDigits(code); ok {
					enforced[code] = digits
				}
			}
		}
	}
	if diff := cmp.Diff(enforced, documented); diff != "" {
		t.Errorf("currencies in openapi.yaml differ from money's allowlist (-money +openapi.yaml):\n%s", diff)
	}
}

// specRouteDiff compares the routes of the router with the operations of the document,
// as "METHOD /path" lists: the routes the document lacks, and the operations not served.
func specRouteDiff(t *testing.T, doc *openapi3.T, r chi.Routes) (undocumented, unserved []string) {
	t.Helper()
	// chi writes a constrained parameter as {id:[0-9]+}; OpenAPI writes {id}.
	constraint := regexp.MustCompile(`\{([^}:]+):[^}]*\}`)
	served := map[string]bool{}
	err := chi.Walk(r, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		served[method+" "+constraint.ReplaceAllString(route, "{$1}")] = true
		return nil
	})
	if err != nil {
		t.Fatalf("walk routes: %v", err)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	for route := range served {
		if !documented[route] {
			undocumented = append(undocumented, route)
		}
	}
	for op := range documented {
		if !served[op] {
			unserved = append(unserved, op)
		}
	}
	slices.Sort(undocumented)
	slices.Sort(unserved)
	return undocumented, unserved
}

func TestOpenAPIRoutes(t *testing.T) {
	t.Parallel()
	doc := specLoad(t)
	h := specNewHandler(t, specUnreachableDB(t), api.Config{RateLimit: 10})
	routes, ok := h.(chi.Routes)
	if !ok {
		t.Fatalf("api.New returned %T, want a chi.Routes to walk", h)
	}
	undocumented, unserved := specRouteDiff(t, doc, routes)
	if len(undocumented) > 0 {
		t.Errorf("routes served but not in openapi.yaml: %q", undocumented)
	}
	if len(unserved) > 0 {
		t.Errorf("operations in openapi.yaml but not served: %q", unserved)
	}

	// The comparison must notice a difference either way.
	t.Run("undocumented route", func(t *testing.T) {
		partial := specLoad(t)
		partial.Paths.Delete("/metrics")
		undocumented, unserved := specRouteDiff(t, partial, routes)
		if want := []string{"GET /metrics"}; !slices.Equal(undocumented, want) || len(unserved) > 0 {
			t.Errorf("without /metrics in the document: undocumented %q, unserved %q; want %q, none", undocumented, unserved, want)
		}
	})
	t.Run("route not served", func(t *testing.T) {
		other := chi.NewRouter()
		other.Route("/orders", func(r chi.Router) {
			r.Post("/", http.NotFound)
			r.Get("/", http.NotFound)
			r.Get("/{id:[0-9]+}", http.NotFound)
		})
		other.Get("/metrics", http.NotFound)
		other.Get("/openapi.yaml", http.NotFound)
		other.Get("/readyz", http.NotFound)
		undocumented, unserved := specRouteDiff(t, doc, other)
		// chi.Route mounts a subrouter: its "/" is served as /orders/.
		wantUndocumented := []string{"GET /orders/", "POST /orders/"}
		wantUnserved := []string{"GET /healthz", "GET /orders", "POST /orders"}
		if !slices.Equal(undocumented, wantUndocumented) || !slices.Equal(unserved, wantUnserved) {
			t.Errorf("undocumented %q, unserved %q; want %q, %q", undocumented, unserved, wantUndocumented, wantUnserved)
		}
	})
}

// TestOpenAPIExchanges checks real requests and responses of each operation against the
// document, on a real database.
func TestOpenAPIExchanges(t *testing.T) {
	t.Parallel()
	c := newSpecClient(t, testenv.DB(t), api.Config{})
	ct := []string{"Content-Type", "application/json"}
	withKey := func(key string) []string { return []string{"Content-Type", "application/json", "Idempotency-Key", key} }
	doc, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		method  string
		path    string
		body    string
		headers []string
		status  int
		// specAccepts is false when the schema alone rejects the request, true when the
		// rule the server enforces is only in a description.
		specAccepts bool
		// header, when set, must be in the response with the value value.
		header, value string
	}{
		{name: "create", method: "POST", path: "/orders", body: specSeed, headers: withKey("spec-1"),
			status: 201, specAccepts: true, header: "Location", value: "/orders/1"},
		{name: "replay", method: "POST", path: "/orders", body: specSeed, headers: withKey("spec-1"),
			status: 201, specAccepts: true, header: "Idempotent-Replayed", value: "true"},
		{name: "key reused", method: "POST", path: "/orders", headers: withKey("spec-1"),
			body:   `{"customerId": "CUST001", "amount": 201, "currency": "USD"}`,
			status: 422, specAccepts: true},
		{name: "create without key", method: "POST", path: "/orders", headers: ct,
			body:   `{"customerId": "CUST002", "amount": 1.234, "currency": "BHD"}`,
			status: 201, specAccepts: true, header: "Location", value: "/orders/2"},
		{name: "zero amount", method: "POST", path: "/orders", headers: ct,
			body:   `{"customerId": "CUST001", "amount": 0, "currency": "USD"}`,
			status: 422, specAccepts: false},
		{name: "read-only member", method: "POST", path: "/orders", headers: ct,
			body:   `{"id": 7, "customerId": "CUST001", "amount": 200, "currency": "USD"}`,
			status: 422, specAccepts: false},
		{name: "amount as string", method: "POST", path: "/orders", headers: ct,
			body:   `{"customerId": "CUST001", "amount": "200", "currency": "USD"}`,
			status: 422, specAccepts: false},
		// The allowlist and the currency's decimal places are in the Money section only.
		{name: "currency not on the list", method: "POST", path: "/orders", headers: ct,
			body:   `{"customerId": "CUST001", "amount": 200, "currency": "XXX"}`,
			status: 422, specAccepts: true},
		{name: "too many decimals", method: "POST", path: "/orders", headers: ct,
			body:   `{"customerId": "CUST001", "amount": 19.999, "currency": "USD"}`,
			status: 422, specAccepts: true},
		{name: "malformed JSON", method: "POST", path: "/orders", body: `{"customerId": `, headers: ct,
			status: 400, specAccepts: false},
		{name: "bad Idempotency-Key", method: "POST", path: "/orders", body: specSeed, headers: withKey("a b"),
			status: 400, specAccepts: false},
		{name: "text/plain body", method: "POST", path: "/orders", body: specSeed,
			headers: []string{"Content-Type", "text/plain"}, status: 415, specAccepts: false},
		// The size limit is in the description only: this body is a valid order padded with spaces.
		{name: "body over 64 KiB", method: "POST", path: "/orders", headers: ct,
			body: specSeed + strings.Repeat(" ", 64<<10), status: 413, specAccepts: true},
		{name: "get", method: "GET", path: "/orders/1", status: 200, specAccepts: true},
		{name: "get missing", method: "GET", path: "/orders/999", status: 404, specAccepts: true},
		{name: "get non-numeric id", method: "GET", path: "/orders/abc", status: 400, specAccepts: false},
		{name: "get id 0", method: "GET", path: "/orders/0", status: 400, specAccepts: false},
		{name: "list", method: "GET", path: "/orders", status: 200, specAccepts: true},
		{name: "list filtered", method: "GET", path: "/orders?customerId=CUST001&status=PENDING&limit=5",
			status: 200, specAccepts: true},
		{name: "list limit over 100", method: "GET", path: "/orders?limit=101", status: 400, specAccepts: false},
		{name: "list unknown status", method: "GET", path: "/orders?status=SHIPPED", status: 400, specAccepts: false},
		{name: "list forged cursor", method: "GET", path: "/orders?cursor=nope", status: 400, specAccepts: true},
		{name: "healthz", method: "GET", path: "/healthz", status: 200, specAccepts: true},
		{name: "readyz", method: "GET", path: "/readyz", status: 200, specAccepts: true},
		{name: "metrics", method: "GET", path: "/metrics", status: 200, specAccepts: true},
		{name: "openapi.yaml", method: "GET", path: "/openapi.yaml", status: 200, specAccepts: true,
			header: "Content-Type", value: "application/yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.exchange(t, tc.method, tc.path, tc.body, tc.headers, tc.status, tc.specAccepts)
			if tc.header != "" && r.header.Get(tc.header) != tc.value {
				t.Errorf("%s = %q, want %q", tc.header, r.header.Get(tc.header), tc.value)
			}
			if tc.path == "/openapi.yaml" && !bytes.Equal(r.body, doc) {
				t.Errorf("GET /openapi.yaml served %d bytes that differ from the %d of api/openapi.yaml", len(r.body), len(doc))
			}
		})
	}

	t.Run("pages", func(t *testing.T) {
		type page struct {
			Items      []struct{ ID int64 }
			NextCursor *string
		}
		read := func(r specResponse) page {
			t.Helper()
			var p page
			if err := json.Unmarshal(r.body, &p); err != nil {
				t.Fatalf("decode list %s: %v", r.body, err)
			}
			return p
		}
		first := read(c.exchange(t, "GET", "/orders?limit=1", "", nil, 200, true))
		if len(first.Items) != 1 || first.Items[0].ID != 2 || first.NextCursor == nil {
			t.Fatalf("first page = %+v, want order 2 and a cursor", first)
		}
		second := read(c.exchange(t, "GET", "/orders?limit=1&cursor="+url.QueryEscape(*first.NextCursor), "", nil, 200, true))
		if len(second.Items) != 1 || second.Items[0].ID != 1 || second.NextCursor != nil {
			t.Errorf("second page = %+v, want order 1 and no cursor", second)
		}
	})

	// Paths and methods the document does not have are answered with the problems its
	// components describe, and a 405 lists the methods the document gives the path.
	for _, tc := range []struct {
		method, path string
		status       int
		response     string
	}{
		{"GET", "/nope", 404, "NotFound"},
		{"GET", "/orders/1/items", 404, "NotFound"},
		{"DELETE", "/orders", 405, "MethodNotAllowed"},
		{"PUT", "/orders/1", 405, "MethodNotAllowed"},
		{"POST", "/healthz", 405, "MethodNotAllowed"},
	} {
		t.Run(fmt.Sprintf("%s %s", tc.method, tc.path), func(t *testing.T) {
			allowed := c.allowed(t, tc.path)
			switch {
			case tc.status == 404 && allowed != "":
				t.Errorf("openapi.yaml has %s %s, want no operation on the path", allowed, tc.path)
			case tc.status == 405 && (allowed == "" || strings.Contains(allowed, tc.method)):
				t.Errorf("openapi.yaml has %q on %s, want the path without %s", allowed, tc.path, tc.method)
			}
			req := specInput(t, tc.method, tc.path, "", nil)
			ref := c.doc.Components.Responses[tc.response]
			if ref == nil {
				t.Fatalf("openapi.yaml has no components.responses.%s", tc.response)
			}
			op := openapi3.NewOperation()
			op.Responses = openapi3.NewResponses(openapi3.WithStatus(tc.status, ref))
			in := &openapi3filter.RequestValidationInput{Request: req,
				Route: &routers.Route{Spec: c.doc, Path: tc.path, Method: tc.method, Operation: op}}

			r := c.send(t, tc.method, tc.path, "", nil)
			if r.status != tc.status {
				t.Errorf("status = %d, want %d (body %s)", r.status, tc.status, r.body)
			}
			c.validateResponse(t, in, r)
			if tc.status == 405 {
				if got := r.header.Get("Allow"); got != allowed {
					t.Errorf("Allow = %q, want %q, the methods openapi.yaml gives %s", got, allowed, tc.path)
				}
			}
		})
	}
}

// TestOpenAPIUnavailable checks the 503 answers, with a database that is down.
func TestOpenAPIUnavailable(t *testing.T) {
	t.Parallel()
	c := newSpecClient(t, specUnreachableDB(t), api.Config{})
	ct := []string{"Content-Type", "application/json", "Idempotency-Key", "k"}
	c.exchange(t, "POST", "/orders", specSeed, ct, 503, true)
	c.exchange(t, "GET", "/orders", "", nil, 503, true)
	c.exchange(t, "GET", "/orders/1", "", nil, 503, true)
	c.exchange(t, "GET", "/readyz", "", nil, 503, true)
	c.exchange(t, "GET", "/healthz", "", nil, 200, true)
}

// TestOpenAPIRateLimited checks the 429 answer. The database is down: the requests that
// pass the limit are answered 503, which must match the document too.
func TestOpenAPIRateLimited(t *testing.T) {
	t.Parallel()
	c := newSpecClient(t, specUnreachableDB(t), api.Config{RateLimit: 1})
	for range 10 {
		req := specInput(t, "GET", "/orders/1", "", nil)
		route, params, err := c.router.FindRoute(req)
		if err != nil {
			t.Fatal(err)
		}
		r := c.send(t, "GET", "/orders/1", "", nil)
		c.validateResponse(t, &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route}, r)
		if r.status == http.StatusTooManyRequests {
			return
		}
	}
	t.Errorf("10 requests in a row at a limit of 1 per second: none answered 429")
}
