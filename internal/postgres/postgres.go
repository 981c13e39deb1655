// Package postgres opens the database handle every binary uses: the pgx/v5 driver
// behind database/sql, because watermill-sql v3 publishes into a *sql.Tx and an order
// and its outbox row must share that transaction.
package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// TCPUserTimeout is how long data sent on a connection may go unacknowledged before
// the connection fails (TCP_USER_TIMEOUT, Linux).
const TCPUserTimeout = 20 * time.Second

// Open returns a handle on url holding at most maxConns connections, after checking
// that the server answers.
func Open(ctx context.Context, url string, maxConns int) (*sql.DB, error) {
	db, err := New(url, maxConns)
	if err != nil {
		return nil, err
	}
	cfg, _ := pgx.ParseConfig(url)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres at %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	return db, nil
}

// New returns a handle on url without connecting yet.
func New(url string, maxConns int) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		// A dead server must fail requests fast, not hang them on TCP timeouts.
		cfg.ConnectTimeout = 3 * time.Second
	}
	// A peer that vanishes without closing (a black-holed network, a host gone) must
	// break the connection in seconds, not the kernel's hours (keepalive) or ~15 minutes
	// (retransmission): keepalives from 10 s of silence, 3 probes 5 s apart, and
	// TCP_USER_TIMEOUT for data sent and not acknowledged. A query stuck on a live but
	// silent socket is for the caller's context to bound.
	d := &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control:         setUserTimeout(TCPUserTimeout),
	}
	cfg.DialFunc = d.DialContext
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

// IsUnavailable reports errors that mean the database cannot be reached right now, as
// opposed to a bug or a bad request: timeouts, refused or broken connections, a server
// shutting down or starting up.
func IsUnavailable(err error) bool {
	var (
		netErr  net.Error
		connErr *pgconn.ConnectError
		pgErr   *pgconn.PgError
	)
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr), errors.As(err, &connErr),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, sql.ErrConnDone),
		errors.Is(err, driver.ErrBadConn), pgconn.SafeToRetry(err):
		return true
	case errors.As(err, &pgErr):
		// Class 57: operator intervention (admin shutdown, cannot connect now);
		// 08: connection exception.
		return strings.HasPrefix(pgErr.Code, "57") || strings.HasPrefix(pgErr.Code, "08")
	}
	return false
}
