package api

import (
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/events"
)

// correlate gives each request a correlation id: the client's X-Correlation-ID when it
// sends a usable one (1-128 printable ASCII characters), else the request id. It is
// echoed in the response, logged, and carried by every event the request causes.
func (s *Server) correlate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Correlation-ID")
		if !printable(id, 128) {
			id = middleware.GetReqID(r.Context())
		}
		w.Header().Set("X-Correlation-ID", id)
		// Findable in the tracing backend by the id a client or support quotes.
		trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("orderpipe.correlation_id", id))
		next.ServeHTTP(w, r.WithContext(events.WithCorrelationID(r.Context(), id)))
	})
}

// printable reports whether s is 1 to max printable ASCII characters without spaces.
func printable(s string, max int) bool {
	if len(s) < 1 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// accessLog writes one structured line per request, with the order it concerns (the
// one a POST created, or the one a GET named) and, through the context, its trace_id.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", ww.Status(), "bytes", ww.BytesWritten(),
			"duration_ms", float64(time.Since(start).Microseconds()) / 1000,
			"request_id", middleware.GetReqID(r.Context()), "correlation_id", ww.Header().Get("X-Correlation-ID")}
		if id := orderID(r, ww.Header()); id != "" {
			attrs = append(attrs, "order_id", id)
		}
		s.logger.InfoContext(r.Context(), "request", attrs...)
	})
}

// orderID is the order a request concerned: the one its answer's Location names (a
// create or its replay), else the {id} of its route. Called after the handler ran.
func orderID(r *http.Request, answer http.Header) string {
	if loc := answer.Get("Location"); strings.HasPrefix(loc, "/orders/") {
		return strings.TrimPrefix(loc, "/orders/")
	}
	if rc := chi.RouteContext(r.Context()); rc != nil {
		return rc.URLParam("id")
	}
	return ""
}

// recoverer turns a panic into a logged 500 with a problem body.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.logger.ErrorContext(r.Context(), "panic", "panic", p, "request_id", middleware.GetReqID(r.Context()))
				writeProblem(w, problem{Type: typeInternal, Title: "Internal error", Status: http.StatusInternalServerError,
					Detail: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}
