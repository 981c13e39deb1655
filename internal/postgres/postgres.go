// Package postgres opens the database handle every binary uses: the pgx/v5 driver
// behind database/sql, because watermill-sql v3 publishes into a *sql.Tx and an order
// and its outbox row must share that transaction.
package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Open returns a handle on url holding at most maxConns connections, after checking
// that the server answers.
func Open(ctx context.Context, url string, maxConns int) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		// A dead server must fail requests fast, not hang them on TCP timeouts.
		cfg.ConnectTimeout = 3 * time.Second
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to postgres at %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	return db, nil
}
