package admin

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/orderpipe/orderpipe/kafkaconf"
)

// ReadinessHeader is the response header of every daemon's /readyz that lists its
// checks: "postgres=ok, kafka=ok, redis=down".
const ReadinessHeader = "Readiness"

// probeTimeout bounds one /readyz: a dependency that does not answer within it is down.
const probeTimeout = 2 * time.Second

// Check is one dependency of a daemon, probed by /readyz.
type Check struct {
	// Name is how the check is reported: postgres, kafka, redis, payments, ...
	Name string
	// Optional checks are reported but do not make the daemon unready: the daemon
	// keeps working (degraded, or by waiting) while the dependency is down.
	Optional bool
	// Probe returns nil when the dependency answers. It must return when ctx ends.
	Probe func(ctx context.Context) error
}

// Result is the outcome of one check.
type Result struct {
	Name     string
	Optional bool
	Err      error
}

// Readiness is the outcome of probing a daemon's checks, in the checks' order.
type Readiness []Result

// Probe runs every check at once and waits for all of them, at most probeTimeout.
func Probe(ctx context.Context, checks []Check) Readiness {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	out := make(Readiness, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		out[i] = Result{Name: c.Name, Optional: c.Optional}
		wg.Go(func() { out[i].Err = c.Probe(ctx) })
	}
	wg.Wait()
	return out
}

// Ready reports whether every required check passed.
func (rd Readiness) Ready() bool {
	for _, r := range rd {
		if r.Err != nil && !r.Optional {
			return false
		}
	}
	return true
}

// String lists the checks as "name=ok" or "name=down", for the Readiness header.
func (rd Readiness) String() string {
	parts := make([]string, len(rd))
	for i, r := range rd {
		state := "ok"
		if r.Err != nil {
			state = "down"
		}
		parts[i] = r.Name + "=" + state
	}
	return strings.Join(parts, ", ")
}

// Log writes a failed required check as a warning and a failed optional one at debug
// level: an orchestrator probes every few seconds.
func (rd Readiness) Log(ctx context.Context, logger *slog.Logger) {
	for _, r := range rd {
		switch {
		case r.Err == nil:
		case r.Optional:
			logger.DebugContext(ctx, "optional dependency down", "check", r.Name, "err", r.Err)
		default:
			logger.WarnContext(ctx, "not ready", "check", r.Name, "err", r.Err)
		}
	}
}

// Postgres checks that the database answers a ping.
func Postgres(db *sql.DB) Check {
	return Check{Name: "postgres", Probe: db.PingContext}
}

// Kafka checks that a broker answers an ApiVersions request on a fresh connection: the
// cluster is reachable and speaks Kafka. Any one of brokers answering is enough.
func Kafka(brokers []string) Check {
	return Check{Name: "kafka", Probe: func(ctx context.Context) error {
		conf := kafkaconf.Consumer("orderpipe-readyz")
		conf.Net.DialTimeout = probeTimeout
		conf.Net.ReadTimeout = probeTimeout
		conf.Net.WriteTimeout = probeTimeout
		var errs []error
		for _, addr := range brokers {
			err := withContext(ctx, func() error {
				b := sarama.NewBroker(addr)
				if err := b.Open(conf); err != nil {
					return err
				}
				defer b.Close()
				_, err := b.ApiVersions(&sarama.ApiVersionsRequest{})
				return err
			})
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		}
		if len(errs) == 0 {
			return errors.New("no brokers configured")
		}
		return errors.Join(errs...)
	}}
}

// HTTP checks that GET url answers 200.
func HTTP(name, url string, optional bool) Check {
	return Check{Name: name, Optional: optional, Probe: func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}}
}

// withContext runs f, which cannot be cancelled, and returns its error or ctx's,
// whichever comes first; f finishes in the background (its own timeouts bound it).
func withContext(ctx context.Context, f func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
