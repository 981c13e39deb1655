// Package relay forwards the transactional outbox to Kafka.
//
// It reads the outbox that watermill-sql's PostgreSQL schema defines (table
// watermill_outbox, rows in Watermill's forwarder envelope) and keeps its position in
// watermill-sql's offsets table, but it does not use watermill-sql's subscriber and
// forwarder: their query sorts the whole unforwarded backlog on every poll and they
// publish one message per Kafka round trip, which caps a relay at a few hundred rows per
// second and lets one that fell behind never catch up. Instead:
//
//   - Rows are read by an index range scan on the outbox's primary key
//     (transaction_id, offset), after the last forwarded row and below the oldest
//     running transaction (pg_snapshot_xmin). A row whose transaction commits late is
//     therefore read after it commits, never skipped: no gaps.
//   - A batch is sent with one SyncProducer.SendMessages call (acks=all, idempotent, one
//     request in flight per broker), which keeps each partition's order while batching.
//     The position moves past a row only once it, and every row before it, is on Kafka
//     or set aside as a dead letter: at-least-once. A record refused for a reason that
//     may pass (Kafka down, no leader) stops the position there; it and the rows after
//     it are read again, and those already acknowledged are not resent (deliver.go).
//     Records are built by watermill-kafka's marshaler, so consumers read them as any
//     Watermill Kafka message, keyed by order id.
//   - One relay per consumer group is active, elected by a Postgres advisory lock held on
//     the session that also reads and saves the position; others wait as hot standbys.
//     If the active one dies its session ends, the lock is released and a standby takes
//     over from the saved position. A session that goes silent (a black-holed network, a
//     frozen process) is ended by Postgres after SessionTimeout (boundSession), and the
//     relay's own calls on it time out after it, so a standby takes over then too.
//   - The position is saved only if it is still the one the relay read, so a position
//     re-anchored meanwhile (Reanchor) is never overwritten; the relay reloads it.
//   - A position (or outbox row) with a transaction id this cluster has not assigned
//     yet comes from another cluster's id space, after a logical dump and restore or
//     migration: the relay then forwards and prunes nothing, says so (log, gauge
//     relay_position_invalid), and resumes once the operator re-anchors the position
//     (orderctl relay reanchor). See position.go.
//   - An envelope that does not decode, and a record Kafka refuses for good (too large,
//     invalid, invalid topic name: see permanent), is set aside in outbox_dead_letters
//     with the reason and counted, instead of stalling the relay.
//   - Rows older than the retention that every consumer group has forwarded are deleted,
//     so the outbox stays bounded.
//   - Row metadata becomes record headers verbatim, W3C traceparent included; with
//     tracing on, a row written under a sampled trace is sent under a producer span of
//     its own, so one trace runs from the API request to the consumer (decodeRow).
package relay

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// Config tunes the relay.
type Config struct {
	// Brokers are the Kafka bootstrap servers.
	Brokers []string
	// PollInterval is how long the relay waits before reading an empty outbox again.
	// While there are rows it reads again at once. Default 10ms.
	PollInterval time.Duration
	// BatchSize is the most rows read and sent at once. Default 1000.
	BatchSize int
	// ConsumerGroup names the relay's position (table watermill_offsets_outbox) and its
	// leadership lock. Default "relay".
	ConsumerGroup string
	// StandbyInterval is how often a standby relay tries to become the active one, and
	// how often an active relay whose position is invalid checks it again. Default 1s.
	StandbyInterval time.Duration
	// Retention is how long forwarded rows are kept before they are deleted; a row is
	// deleted only once every group in watermill_offsets_outbox is past it. Default 1h.
	Retention time.Duration
	// PruneInterval is how often forwarded rows past the retention are deleted, and the
	// backlog gauge refreshed. Default 5s.
	PruneInterval time.Duration
	// MaxBackoff caps the wait between attempts while Kafka or Postgres fail. Default 5s.
	MaxBackoff time.Duration
	// SessionTimeout bounds how long the active relay's database session may go silent,
	// as on a black-holed network, before both ends give it up: the relay's own calls on
	// it time out after it, and Postgres ends the session after it (idle_session_timeout,
	// statement_timeout, tcp_user_timeout, keepalives), which frees the leader lock for a
	// standby. A relay frozen for longer (SIGSTOP) is replaced too. Default 30s; at least
	// 1s and more than PollInterval and MaxBackoff.
	SessionTimeout time.Duration
	// Registerer receives the relay's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// TracerProvider starts the producer span of each row written under a sampled trace
	// (see decodeRow); nil means tracing is off, and rows keep their writer's context.
	TracerProvider trace.TracerProvider
}

func (c *Config) setDefaults() {
	if c.PollInterval == 0 {
		c.PollInterval = 10 * time.Millisecond
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.ConsumerGroup == "" {
		c.ConsumerGroup = "relay"
	}
	if c.StandbyInterval == 0 {
		c.StandbyInterval = time.Second
	}
	if c.Retention == 0 {
		c.Retention = time.Hour
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = 5 * time.Second
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = 30 * time.Second
	}
}

// Validate reports a configuration the relay cannot run with.
func (c Config) Validate() error {
	if len(c.Brokers) == 0 {
		return errors.New("no Kafka brokers")
	}
	if c.BatchSize < 1 {
		return errors.New("batch size must be at least 1")
	}
	// The active relay's session must not idle out while it merely polls or backs off.
	if c.SessionTimeout < time.Second || c.SessionTimeout <= c.PollInterval || c.SessionTimeout <= c.MaxBackoff {
		return fmt.Errorf("session timeout %s must be at least 1s and more than the poll interval %s and the maximum backoff %s",
			c.SessionTimeout, c.PollInterval, c.MaxBackoff)
	}
	return nil
}

// Relay forwards outbox rows to Kafka.
type Relay struct {
	db      *sql.DB
	cfg     Config
	logger  *slog.Logger
	metrics *metrics
	tracer  trace.Tracer // nil when tracing is off
	lockKey int64
	// maxMessageBytes is the producer's record size limit: a larger record is a dead
	// letter before it is sent.
	maxMessageBytes int

	// invalid is set while the saved position is from another transaction-id space
	// (checkPosition): forwarding and pruning stop until it is fixed.
	invalid atomic.Bool
	// moved is set when the saved position is not the one the forwarder last saved:
	// re-anchored while the relay ran. The forwarder then reloads it.
	moved    atomic.Bool
	mu       sync.Mutex
	saved    position  // the position the forwarder last loaded or saved
	loggedAt time.Time // when the invalid position was last logged
}

// New returns a relay reading the outbox in db.
func New(db *sql.DB, cfg Config, logger *slog.Logger) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	h := fnv.New64a()
	h.Write([]byte("orderpipe.relay." + cfg.ConsumerGroup))
	r := &Relay{db: db, cfg: cfg, logger: logger, metrics: m, lockKey: int64(h.Sum64()),
		maxMessageBytes: producerConfig().Producer.MaxMessageBytes}
	if tracing.Enabled(cfg.TracerProvider) {
		r.tracer = tracing.Tracer(cfg.TracerProvider)
	}
	return r, nil
}

// Run forwards until ctx is done. Losing the database or Kafka is not fatal: the relay
// backs off and tries again, resuming from the last saved position.
func (r *Relay) Run(ctx context.Context) error {
	backoff := newBackoff(r.cfg.MaxBackoff)
	for {
		err := r.lead(ctx)
		if ctx.Err() != nil {
			return nil
		}
		r.logger.Warn("relay session ended; retrying", "err", err)
		if !backoff.wait(ctx) {
			return nil
		}
	}
}

// lead waits to become the active relay and then forwards until an error or ctx ends.
func (r *Relay) lead(ctx context.Context) error {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// The leader lock belongs to this session. Returning the connection to the pool
	// would keep the session, and the lock with it, so it is closed instead: reporting it
	// bad makes database/sql discard it.
	defer func() {
		conn.Raw(func(any) error { return driver.ErrBadConn })
		conn.Close()
	}()
	for {
		var acquired bool
		lockCtx, cancel := context.WithTimeout(ctx, r.cfg.SessionTimeout)
		err := conn.QueryRowContext(lockCtx, `SELECT pg_try_advisory_lock($1)`, r.lockKey).Scan(&acquired)
		cancel()
		if err != nil {
			return fmt.Errorf("leader lock: %w", err)
		}
		if acquired {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.cfg.StandbyInterval):
		}
	}
	if err := r.boundSession(ctx, conn); err != nil {
		return err
	}
	r.metrics.leader.Set(1)
	defer r.metrics.leader.Set(0)
	defer r.metrics.positionInvalid.Set(0) // a standby does not check
	r.logger.Info("active relay", "group", r.cfg.ConsumerGroup)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.maintain(ctx) })
	g.Go(func() error { return r.forward(ctx, conn) })
	return g.Wait()
}

// boundSession makes Postgres end the leader's session, and so release the leader lock,
// once it has been silent for SessionTimeout: idle between queries
// (idle_session_timeout), idle inside a transaction such as a position save
// (idle_in_transaction_session_timeout), in one query (statement_timeout), with data unacknowledged
// (tcp_user_timeout), or with the peer gone quiet (keepalives). Without them a relay cut
// off by a black-holed network kept the lock, and the standbys waited, for as long as
// the server's TCP took to notice: hours.
func (r *Relay) boundSession(ctx context.Context, conn *sql.Conn) error {
	ms := strconv.FormatInt(r.cfg.SessionTimeout.Milliseconds(), 10)
	probe := strconv.FormatInt(max(1, int64(r.cfg.SessionTimeout/time.Second)/4), 10) // seconds
	ctx, cancel := context.WithTimeout(ctx, r.cfg.SessionTimeout)
	defer cancel()
	_, err := conn.ExecContext(ctx, `SELECT set_config('idle_session_timeout', $1, false),
		set_config('idle_in_transaction_session_timeout', $1, false),
		set_config('statement_timeout', $1, false), set_config('tcp_user_timeout', $1, false),
		set_config('tcp_keepalives_idle', $2, false), set_config('tcp_keepalives_interval', $2, false),
		set_config('tcp_keepalives_count', '2', false)`, ms, probe)
	if err != nil {
		return fmt.Errorf("bound leader session: %w", err)
	}
	return nil
}

// keepSessionAlive pings the leader's session every third of SessionTimeout until the
// returned function is called, so that a slow Kafka send does not let Postgres end the
// session as idle (boundSession) and hand the lock to a standby needlessly. A failed
// ping is left for the next query on the session to report.
func (r *Relay) keepSessionAlive(ctx context.Context, conn *sql.Conn) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.cfg.SessionTimeout / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			pingCtx, cancelPing := context.WithTimeout(ctx, r.cfg.SessionTimeout)
			conn.PingContext(pingCtx)
			cancelPing()
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// awaitValidPosition loads the saved position and returns it once it is one this
// cluster can have written (checkPosition), checking again every StandbyInterval: the
// operator fixes it with orderctl relay reanchor while the relay runs.
func (r *Relay) awaitValidPosition(ctx context.Context, conn *sql.Conn) (position, error) {
	for {
		checkCtx, cancel := context.WithTimeout(ctx, r.cfg.SessionTimeout)
		c, err := r.checkPosition(checkCtx, conn)
		cancel()
		if err != nil {
			return position{}, err
		}
		if c.valid() {
			r.mu.Lock()
			r.saved = c.pos
			r.mu.Unlock()
			r.moved.Store(false)
			return c.pos, nil
		}
		select {
		case <-ctx.Done():
			return position{}, ctx.Err()
		case <-time.After(r.cfg.StandbyInterval):
		}
	}
}

// checkPosition checks the group's saved position, keeps the invalid flag and gauge, and
// logs an invalid position loudly: when first seen, then once a minute.
func (r *Relay) checkPosition(ctx context.Context, q queryer) (positionCheck, error) {
	c, err := checkPosition(ctx, q, r.cfg.ConsumerGroup)
	if err != nil {
		return c, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.pos != r.saved {
		r.moved.Store(true)
	}
	was := r.invalid.Load()
	r.invalid.Store(!c.valid())
	if c.valid() {
		r.metrics.positionInvalid.Set(0)
		if was {
			r.logger.Info("relay position valid again; forwarding resumes", "group", r.cfg.ConsumerGroup,
				"saved_position", c.pos.String(), "next_transaction_id", c.next)
		}
		return c, nil
	}
	r.metrics.positionInvalid.Set(1)
	if !was || time.Since(r.loggedAt) >= time.Minute {
		r.loggedAt = time.Now()
		reason := "the saved position is at or above this cluster's next transaction id"
		if !c.ahead {
			reason = "outbox rows have transaction ids at or above this cluster's next transaction id"
		}
		r.logger.Error("relay position from another transaction-id space (database restored or migrated logically?): "+
			"forwarding and pruning stopped; run the command to resend the outbox from its oldest row",
			"group", r.cfg.ConsumerGroup, "reason", reason, "saved_position", c.pos.String(), "next_transaction_id", c.next,
			"command", "orderctl relay reanchor --group "+r.cfg.ConsumerGroup)
	}
	return c, nil
}

// forward is the active relay's loop: read a batch, send it, save the position.
func (r *Relay) forward(ctx context.Context, conn *sql.Conn) error {
	var producer sarama.SyncProducer // nil until Kafka answers
	defer func() {
		if producer != nil {
			producer.Close()
		}
	}()
	pos, err := r.awaitValidPosition(ctx, conn)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	backoff := newBackoff(r.cfg.MaxBackoff)
	// acked holds the rows after pos that Kafka acknowledged while an earlier row failed
	// transiently: the position cannot pass them yet, but they are not sent again.
	acked := map[position]bool{}
	for ctx.Err() == nil {
		if r.invalid.Load() || r.moved.Load() {
			clear(acked)
			// maintain found the position invalid, or changed by someone else: stop
			// until it is valid, then go on from the saved position.
			if pos, err = r.awaitValidPosition(ctx, conn); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if producer == nil {
			p, err := r.newProducer()
			if err != nil {
				r.metrics.publishErrors.Inc()
				r.logger.Warn("kafka unavailable", "err", err)
				// Keep the session from idling out (boundSession) while Kafka is away,
				// and notice if Postgres went too.
				pingCtx, cancel := context.WithTimeout(ctx, r.cfg.SessionTimeout)
				err := conn.PingContext(pingCtx)
				cancel()
				if err != nil && ctx.Err() == nil {
					return fmt.Errorf("ping: %w", err)
				}
				if !backoff.wait(ctx) {
					return nil
				}
				continue
			}
			producer = p
		}
		readCtx, cancel := context.WithTimeout(ctx, r.cfg.SessionTimeout)
		rows, err := readBatch(readCtx, conn, pos, r.cfg.BatchSize)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read outbox: %w", err)
		}
		if len(rows) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(r.cfg.PollInterval):
			}
			continue
		}
		// Rows acknowledged in an earlier attempt at this batch are not sent again.
		var pending []row
		for _, rw := range rows {
			if !acked[rw.pos] {
				pending = append(pending, rw)
			}
		}
		out, dead := decodeBatch(pending, r.tracer, r.maxMessageBytes)
		stopPinging := r.keepSessionAlive(ctx, conn)
		errs, err := deliver(ctx, producer, out)
		stopPinging()
		if errors.Is(err, errAbandoned) {
			// Shutting down with Kafka not answering: the position was not saved, so
			// the next active relay sends this batch again. Closing the producer would
			// wait for the stuck request, so it is left to the exiting process.
			producer = nil
			r.logger.Warn("shutdown: batch abandoned unacknowledged; it will be resent", "rows", len(rows))
			return nil
		}
		if len(out) > 0 {
			r.metrics.batch.Observe(float64(len(out)))
		}
		now := time.Now()
		var (
			failed   int
			firstErr error
		)
		for i, o := range out {
			switch e := errs[i]; {
			case e == nil:
				acked[o.row.pos] = true
				r.metrics.acked(o, now)
			case permanent(e):
				dead = append(dead, deadLetter{row: o.row, reason: rejectReason(o.msg.Topic, e)})
			default:
				failed++
				if firstErr == nil {
					firstErr = e
				}
			}
		}
		cut := settled(rows, acked, dead)
		if cut > 0 {
			last := rows[cut-1].pos
			var saved []deadLetter // dead letters before the cut; those after it wait
			for _, d := range dead {
				if !d.row.pos.after(last) {
					saved = append(saved, d)
				}
			}
			if r.logger.Enabled(ctx, slog.LevelDebug) {
				// Which rows went out in which batch: what shows a row skipped or sent twice.
				r.logger.Debug("batch sent", "first", rows[0].pos.String(), "last", last.String(),
					"rows", cut, "messages", len(out), "dead_letters", len(saved), "failed", failed)
			}
			// These rows are on Kafka: save the position even if shutdown began meanwhile.
			saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err = savePosition(saveCtx, conn, r.cfg.ConsumerGroup, pos, last, saved)
			cancel()
			if errors.Is(err, errPositionMoved) {
				// Re-anchored meanwhile: the rows are on Kafka but the new position wins,
				// and the rows after it are sent (again).
				r.logger.Warn("saved position changed by another writer; reloading it", "group", r.cfg.ConsumerGroup)
				if pos, err = r.awaitValidPosition(ctx, conn); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				clear(acked)
				continue
			}
			if err != nil {
				return fmt.Errorf("save position: %w", err)
			}
			pos = last
			r.mu.Lock()
			r.saved = pos
			r.mu.Unlock()
			for _, rw := range rows[:cut] {
				delete(acked, rw.pos)
			}
			r.metrics.deadLetters.Add(float64(len(saved)))
			for _, d := range saved {
				r.logger.Error("outbox row set aside as dead letter", "message_id", d.row.uuid, "err", d.reason)
			}
		}
		if failed == 0 {
			backoff.reset()
			continue
		}
		// The rows from the first failure on are read again; Kafka keeps each
		// partition's order. A fresh producer starts a fresh idempotence session.
		r.metrics.publishErrors.Inc()
		r.logger.Warn("kafka publish failed; will resend the records not acknowledged", "rows", len(rows)-cut,
			"failed", failed, "err", firstErr)
		producer.Close()
		producer = nil
		if !backoff.wait(ctx) {
			return nil
		}
	}
	return nil
}

// shutdownGrace is how long a batch in flight at shutdown may take to be acknowledged.
const shutdownGrace = 3 * time.Second

var errAbandoned = errors.New("batch abandoned at shutdown")

// send sends a batch and waits for Kafka's acknowledgement; once ctx is done it waits at
// most shutdownGrace more, so that SIGTERM during a Kafka outage still exits promptly.
func send(ctx context.Context, producer sarama.SyncProducer, msgs []*sarama.ProducerMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- producer.SendMessages(msgs) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-errc:
		return err
	case <-time.After(shutdownGrace):
		return errAbandoned
	}
}

func producerConfig() *sarama.Config {
	c := kafkaconf.Producer("orderpipe-relay")
	// The relay resends failed records itself; fewer internal retries keep a shutdown
	// during a Kafka outage inside its deadline.
	c.Producer.Retry.Max = 3
	c.Net.DialTimeout = 2 * time.Second
	c.Metadata.Retry.Max = 2
	return c
}

func (r *Relay) newProducer() (sarama.SyncProducer, error) {
	p, err := sarama.NewSyncProducer(r.cfg.Brokers, producerConfig())
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return p, nil
}

// backoff doubles a wait from 100ms up to a maximum.
type backoff struct {
	next, max time.Duration
}

func newBackoff(max time.Duration) *backoff { return &backoff{next: 100 * time.Millisecond, max: max} }

func (b *backoff) reset() { b.next = 100 * time.Millisecond }

// wait sleeps for the current interval and reports false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
