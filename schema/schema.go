// Package schema holds the database migrations, embedded in every binary that applies
// them (cmd/api at start, orderctl migrate), and applies them under a Postgres advisory
// lock so that several processes starting at once migrate exactly once.
package schema

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Migrations are the SQL migration files, in order of their version prefix.
//
//go:embed migrations/*.sql
var Migrations embed.FS

// Migrate applies every pending migration and returns the schema version it leaves.
func Migrate(ctx context.Context, db *sql.DB, logger *slog.Logger) (int64, error) {
	p, err := provider(db, logger)
	if err != nil {
		return 0, err
	}
	if _, err := p.Up(ctx); err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func provider(db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	fsys, err := fs.Sub(Migrations, "migrations")
	if err != nil {
		return nil, err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, err
	}
	opts := []goose.ProviderOption{goose.WithSessionLocker(locker)}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger))
	}
	return goose.NewProvider(goose.DialectPostgres, db, fsys, opts...)
}
