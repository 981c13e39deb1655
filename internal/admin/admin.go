// Package admin serves a daemon's operational endpoints: /healthz (the process is
// alive), /readyz (its dependencies answer) and /metrics (Prometheus), and holds the
// readiness checks the daemons share.
package admin

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a metrics registry holding the Go runtime, process and database
// pool collectors every daemon exposes.
func NewRegistry(db *sql.DB) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewDBStatsCollector(db, "orderdb"))
	return reg
}

// Serve listens on addr until ctx is done. /readyz probes checks (see ReadyHandler).
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, checks []Check, logger *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /readyz", ReadyHandler(checks, logger))
	return serve(ctx, "admin", addr, mux, logger)
}

// ServeDebug serves pprof on addr until ctx is done (DEBUG_ADDR): a listener of its
// own, off unless asked for, never the public or admin port, since a profile costs CPU
// and shows the program's insides.
func ServeDebug(ctx context.Context, addr string, logger *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serve(ctx, "debug", addr, mux, logger)
}

func serve(ctx context.Context, name, addr string, h http.Handler, logger *slog.Logger) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s server: %w", name, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn(name+" shutdown", "err", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// ReadyHandler serves /readyz: it probes every check at once, within 2 seconds, and
// answers 200 when every required check passed, else 503. The Readiness header lists
// each check ("postgres=ok, redis=down"); the JSON body gives the failures' causes:
//
//	{"ready":false,"checks":{"postgres":"ok","kafka":"kafka metadata: ..."}}
func ReadyHandler(checks []Check, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rd := Probe(r.Context(), checks)
		rd.Log(r.Context(), logger)
		body := struct {
			Ready  bool              `json:"ready"`
			Checks map[string]string `json:"checks"`
		}{Ready: rd.Ready(), Checks: map[string]string{}}
		for _, res := range rd {
			body.Checks[res.Name] = "ok"
			if res.Err != nil {
				body.Checks[res.Name] = res.Err.Error()
			}
		}
		data, _ := json.Marshal(body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(ReadinessHeader, rd.String())
		if !body.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		w.Write(append(data, '\n'))
	})
}
