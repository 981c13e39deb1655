package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/internal/postgres"
	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/relay"
)

// TestRelayReanchor runs orderctl relay reanchor on a database "restored" from another
// cluster: the dry run reports and changes nothing, the real run moves the position
// below the outbox's oldest row, and a second run refuses the now valid position.
func TestRelayReanchor(t *testing.T) {
	url := testenv.DatabaseURL(t)
	db, err := postgres.Open(context.Background(), url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := 0; i < 3; i++ {
		if _, err := db.Exec(`INSERT INTO watermill_outbox (uuid, payload, metadata, transaction_id)
			VALUES ('m', '{}', '{}', pg_current_xact_id())`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`INSERT INTO watermill_offsets_outbox (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ('g', 7, (pg_current_xact_id()::text::bigint + 1000000)::text::xid8)`); err != nil {
		t.Fatal(err)
	}
	saved := func() string {
		var p string
		if err := db.QueryRow(`SELECT last_processed_transaction_id::text || '/' || offset_acked FROM watermill_offsets_outbox
			WHERE consumer_group = 'g'`).Scan(&p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old := saved()
	reanchor := func(args ...string) (string, error) {
		var out testenv.Buffer
		err := run(context.Background(), append([]string{"relay", "reanchor"}, args...),
			envconf.Map(map[string]string{"DATABASE_URL": url, "RELAY_GROUP": "g"}), &out, &out)
		return out.String(), err
	}

	out, err := reanchor("--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	for _, want := range []string{"old position  " + old, "rows to (re)send  3", "dry run: nothing changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run printed %q, want it to contain %q", out, want)
		}
	}
	if got := saved(); got != old {
		t.Errorf("position after a dry run %s, want %s unchanged", got, old)
	}

	out, err = reanchor()
	if err != nil {
		t.Fatalf("reanchor: %v\n%s", err, out)
	}
	t.Logf("orderctl relay reanchor:\n%s", out)
	var first string
	db.QueryRow(`SELECT transaction_id::text || '/' || ("offset" - 1) FROM watermill_outbox ORDER BY transaction_id, "offset" LIMIT 1`).Scan(&first)
	if got := saved(); got != first || !strings.Contains(out, "new position  "+first) || !strings.Contains(out, "re-anchored") {
		t.Errorf("position %s after reanchor, output %q; want %s, just below the oldest row", got, out, first)
	}

	out, err = reanchor("--group", "g")
	if !errors.Is(err, relay.ErrPositionSane) {
		t.Errorf("reanchor of a valid position = %v, %q; want a refusal (ErrPositionSane)", err, out)
	}
	if _, err := reanchor("--force", "--dry-run"); err != nil {
		t.Errorf("reanchor --force --dry-run of a valid position: %v", err)
	}

	for _, args := range [][]string{{"relay"}, {"relay", "frob"}, {"relay", "reanchor", "extra"}, {"relay", "reanchor", "--bogus"}} {
		err := run(context.Background(), args, envconf.Map(map[string]string{"DATABASE_URL": url}), &testenv.Buffer{}, &testenv.Buffer{})
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("run(%q) = %v, want a usage error", args, err)
		}
	}
}
