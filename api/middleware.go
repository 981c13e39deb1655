package api

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5/middleware"

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

// accessLog writes one structured line per request.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		s.logger.InfoContext(r.Context(), "request",
			"method", r.Method, "path", r.URL.Path, "status", ww.Status(), "bytes", ww.BytesWritten(),
			"duration_ms", float64(time.Since(start).Microseconds())/1000,
			"request_id", middleware.GetReqID(r.Context()), "correlation_id", ww.Header().Get("X-Correlation-ID"))
	})
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
