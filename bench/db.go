package bench

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/schema"
)

// FreshDB creates a migrated database named prefix_<now> beside the one adminURL names
// and returns its URL and a func that drops it.
func FreshDB(ctx context.Context, adminURL, prefix string) (string, func(), error) {
	admin, err := postgres.Open(ctx, adminURL, 1)
	if err != nil {
		return "", nil, err
	}
	name := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		return "", nil, err
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		admin.Close()
		return "", nil, err
	}
	u.Path = "/" + name
	drop := func() {
		admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		admin.Close()
	}
	db, err := postgres.Open(ctx, u.String(), 1)
	if err == nil {
		_, err = schema.Migrate(ctx, db, nil)
		db.Close()
	}
	if err != nil {
		drop()
		return "", nil, err
	}
	return u.String(), drop, nil
}
