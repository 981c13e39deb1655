package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/orderpipe/orderpipe/internal/admin"
	"github.com/orderpipe/orderpipe/internal/testenv"
)

func check(name string, optional bool, err error) admin.Check {
	return admin.Check{Name: name, Optional: optional, Probe: func(context.Context) error { return err }}
}

func TestReadyHandler(t *testing.T) {
	down := errors.New("connection refused")
	tests := []struct {
		name       string
		checks     []admin.Check
		wantCode   int
		wantHeader string
		wantChecks map[string]string
	}{
		{"all up", []admin.Check{check("postgres", false, nil), check("kafka", false, nil)},
			200, "postgres=ok, kafka=ok", map[string]string{"postgres": "ok", "kafka": "ok"}},
		{"optional down", []admin.Check{check("postgres", false, nil), check("redis", true, down)},
			200, "postgres=ok, redis=down", map[string]string{"postgres": "ok", "redis": "connection refused"}},
		{"required down", []admin.Check{check("postgres", false, nil), check("kafka", false, down)},
			503, "postgres=ok, kafka=down", map[string]string{"postgres": "ok", "kafka": "connection refused"}},
		{"hanging probe times out", []admin.Check{{Name: "kafka", Probe: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}}}, 503, "kafka=down", map[string]string{"kafka": "context deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			admin.ReadyHandler(tt.checks, slog.New(slog.DiscardHandler)).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != tt.wantCode {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantCode)
			}
			if got := rec.Header().Get(admin.ReadinessHeader); got != tt.wantHeader {
				t.Errorf("%s = %q, want %q", admin.ReadinessHeader, got, tt.wantHeader)
			}
			var body struct {
				Ready  bool
				Checks map[string]string
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %s: %v", rec.Body, err)
			}
			if body.Ready != (tt.wantCode == 200) {
				t.Errorf("ready = %v with status %d", body.Ready, rec.Code)
			}
			if diff := cmp.Diff(tt.wantChecks, body.Checks); diff != "" {
				t.Errorf("checks (-want +got):\n%s", diff)
			}
		})
	}
}

// TestChecks probes the real dependencies of the local stack, and the same kinds of
// dependency at an address where nothing listens.
func TestChecks(t *testing.T) {
	testenv.Integration(t)
	dead := testenv.FreeAddr(t) // nothing listens there any more
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	defer health.Close()
	db := testenv.DB(t)
	closed := testenv.DB(t)
	closed.Close()

	tests := []struct {
		name   string
		check  admin.Check
		wantUp bool
	}{
		{"postgres up", admin.Postgres(db), true},
		{"postgres closed", admin.Postgres(closed), false},
		{"kafka up", admin.Kafka(testenv.Brokers()), true},
		{"kafka one broker of two up", admin.Kafka(append([]string{dead}, testenv.Brokers()...)), true},
		{"kafka down", admin.Kafka([]string{dead}), false},
		{"http up", admin.HTTP("payments", health.URL+"/healthz", true), true},
		{"http 404", admin.HTTP("payments", health.URL+"/nope", true), false},
		{"http down", admin.HTTP("payments", "http://"+dead+"/healthz", true), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd := admin.Probe(context.Background(), []admin.Check{tt.check})
			if up := rd[0].Err == nil; up != tt.wantUp {
				t.Errorf("up = %v (err %v), want %v", up, rd[0].Err, tt.wantUp)
			}
		})
	}
}
