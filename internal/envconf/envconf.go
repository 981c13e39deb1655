// Package envconf reads configuration from environment variables through an injected
// getenv, so binaries read os.Getenv and tests pass a map. Every parse error names the
// variable; all of them are reported at once.
package envconf

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"github.com/orderpipe/orderpipe/internal/tracing"
)

// Env reads variables and collects the errors.
type Env struct {
	getenv func(string) string
	errs   []error
}

// New returns an Env reading through getenv.
func New(getenv func(string) string) *Env { return &Env{getenv: getenv} }

// Map adapts a map to getenv, for tests.
func Map(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// String returns the variable, or def when it is unset or empty.
func (e *Env) String(name, def string) string {
	if v := e.getenv(name); v != "" {
		return v
	}
	return def
}

// Duration parses a Go duration ("250ms", "24h"); it must be positive.
func (e *Env) Duration(name string, def time.Duration) time.Duration {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: want a positive duration such as 500ms or 24h", name, v))
		return def
	}
	return d
}

// Int parses a whole number of at least min.
func (e *Env) Int(name string, def, min int) int {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: want a whole number >= %d", name, v, min))
		return def
	}
	return n
}

// Float parses a number in [min, max].
func (e *Env) Float(name string, def, min, max float64) float64 {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < min || f > max {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: want a number from %g to %g", name, v, min, max))
		return def
	}
	return f
}

// Err returns every error met so far, or nil.
func (e *Env) Err() error { return errors.Join(e.errs...) }

// Level parses a slog level name (debug, info, warn, error).
func (e *Env) Level(name string, def slog.Level) slog.Level {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(v)); err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: want debug, info, warn or error", name, v))
		return def
	}
	return l
}

// Redact hides the password of a URL for logging.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// Logger returns the JSON logger every binary uses. A line logged with a context that
// carries a trace (logger.InfoContext(ctx, ...)) gets its trace_id and span_id.
func Logger(w io.Writer, level slog.Level, service string) *slog.Logger {
	h := tracing.NewLogHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	return slog.New(h).With("service", service)
}
