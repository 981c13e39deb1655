package relay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// A saved position is a transaction id (xid8) of the cluster that wrote the outbox rows.
// A logical dump and restore, or a migration by logical replication, copies the
// position and the rows' ids as data into a cluster whose own ids start far lower: the
// relay would then wait for ids it will not see for a long time, never read the new
// rows, report no backlog and prune them. So before forwarding, and every prune
// interval, the relay checks its position against this cluster's next transaction id
// (pg_snapshot_xmax of the current snapshot, which assigns no id): no position, and no
// outbox row, can be at or above it in a sane cluster. pg_upgrade keeps the ids, so the
// check does not fire after it (the system identifier changes, and is not used).
//
// The check stops seeing a restore once this cluster's ids pass the old ones; a relay
// that found its position invalid stays stopped until the saved position changes
// (Reanchor), but one started after that point cannot tell. Reanchor's Force is for the
// operator who knows a restore happened.

// positionCheck is what the relay learns about its saved position.
type positionCheck struct {
	pos  position
	next string // this cluster's next transaction id
	// ahead: the saved position is at or above next.
	ahead bool
	// foreign: the outbox has rows at or above next, which the relay would not read
	// until this cluster's ids pass them.
	foreign bool
}

func (c positionCheck) valid() bool { return !c.ahead && !c.foreign }

// checkPosition loads group's saved position and checks it against this cluster's
// transaction ids.
func checkPosition(ctx context.Context, q queryer, group string) (positionCheck, error) {
	var c positionCheck
	err := q.QueryRowContext(ctx, `SELECT COALESCE(p.last_processed_transaction_id::text, '0'), COALESCE(p.offset_acked, 0),
			s.next::text, COALESCE(p.last_processed_transaction_id >= s.next, false),
			EXISTS (SELECT 1 FROM watermill_outbox o WHERE o.transaction_id >= s.next)
		FROM (SELECT pg_snapshot_xmax(pg_current_snapshot()) AS next) s
		LEFT JOIN watermill_offsets_outbox p ON p.consumer_group = $1`, group).
		Scan(&c.pos.txID, &c.pos.offset, &c.next, &c.ahead, &c.foreign)
	if err != nil {
		return positionCheck{}, fmt.Errorf("check position: %w", err)
	}
	return c, nil
}

// queryer is what *sql.DB, *sql.Conn and *sql.Tx share.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// errPositionMoved is returned by savePosition when the saved position is no longer the
// one the relay forwarded from: someone else (Reanchor, or a second leader) wrote it.
var errPositionMoved = errors.New("saved position changed by another writer")

// ErrPositionSane is returned by Reanchor when the group's position is one this cluster
// can have written and no outbox row is from another transaction-id space.
var ErrPositionSane = errors.New("position is valid for this cluster")

// ReanchorOptions tune Reanchor.
type ReanchorOptions struct {
	// DryRun computes and reports the change without making it.
	DryRun bool
	// Force re-anchors a position that looks valid: for a restore that the check cannot
	// see any more, because this cluster's transaction ids have passed the old ones.
	Force bool
}

// ReanchorResult is what Reanchor found and did.
type ReanchorResult struct {
	Group string
	// Old and New are the positions before and after, as transaction id/offset.
	Old, New string
	// Next is this cluster's next transaction id.
	Next string
	// Rows is how many outbox rows the group will (re)send.
	Rows int64
	// Renumbered is how many outbox rows had transaction ids from another id space and
	// were given id 2 (below every id this cluster assigns), keeping their offsets, so
	// that the relay reads them at once, first, in offset order.
	Renumbered int64
	// OtherGroups are the other groups re-anchored because rows were renumbered: no
	// group had read those rows.
	OtherGroups []string
	// Applied is false for a dry run or a refusal.
	Applied bool
}

// Reanchor moves group's saved position just below the oldest row in the outbox, after
// a logical restore or migration made the position meaningless (see checkPosition):
// every row still in the outbox is then (re)sent, which is safe because consumers
// deduplicate by message id. Rows whose transaction ids come from the other cluster are
// renumbered below this cluster's ids so that the relay reads them now rather than when
// this cluster's ids pass theirs; as no group could read them, every group is then
// re-anchored. Without opts.Force, a position that is valid for this cluster is left
// alone and ErrPositionSane returned.
//
// It runs in one transaction that locks the group's position row, and a relay saves its
// position only if it is still the one it read (savePosition), so the running relay
// cannot overwrite the new position: its next save fails, and it reloads.
func Reanchor(ctx context.Context, db *sql.DB, group string, opts ReanchorOptions) (ReanchorResult, error) {
	res := ReanchorResult{Group: group}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return res, err
	}
	defer tx.Rollback()
	var locked string
	err = tx.QueryRowContext(ctx, `SELECT consumer_group FROM watermill_offsets_outbox WHERE consumer_group = $1 FOR UPDATE`,
		group).Scan(&locked)
	if errors.Is(err, sql.ErrNoRows) {
		// A group without a position starts at the beginning of the outbox, which is
		// fine unless rows carry another cluster's ids (the offsets table was not
		// restored, the rows were): then it needs a position below them like any other.
		// Otherwise no position is created: a mistyped group would hold back pruning.
		c, err := checkPosition(ctx, tx, group)
		if err != nil {
			return res, err
		}
		if !c.foreign {
			return res, fmt.Errorf("group %q has no saved position: its relay starts at the beginning of the outbox", group)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO watermill_offsets_outbox (consumer_group, offset_acked, last_processed_transaction_id)
			VALUES ($1, 0, '0') ON CONFLICT (consumer_group) DO NOTHING`, group); err != nil {
			return res, fmt.Errorf("create position: %w", err)
		}
		if err := tx.QueryRowContext(ctx, `SELECT consumer_group FROM watermill_offsets_outbox WHERE consumer_group = $1 FOR UPDATE`,
			group).Scan(&locked); err != nil {
			return res, fmt.Errorf("lock position: %w", err)
		}
	} else if err != nil {
		return res, fmt.Errorf("lock position: %w", err)
	}
	c, err := checkPosition(ctx, tx, group)
	if err != nil {
		return res, err
	}
	res.Old, res.Next = c.pos.String(), c.next
	if c.valid() && !opts.Force {
		return res, fmt.Errorf("group %q at %s, next transaction id %s: %w (--force re-sends the whole outbox anyway)",
			group, res.Old, res.Next, ErrPositionSane)
	}
	if c.foreign {
		r, err := tx.ExecContext(ctx, `UPDATE watermill_outbox SET transaction_id = '2'::xid8 WHERE transaction_id >= $1::xid8`, c.next)
		if err != nil {
			return res, fmt.Errorf("renumber rows: %w", err)
		}
		res.Renumbered, _ = r.RowsAffected()
	}
	anchor := position{txID: "0"}
	var first sql.NullString
	var firstOffset sql.NullInt64
	// The text column gets its own name: ORDER BY transaction_id would bind to it and
	// sort the ids as text ("1093443" before "2"), as readBatch explains.
	if err := tx.QueryRowContext(ctx, `SELECT o.transaction_id::text AS tx_id, o."offset" FROM watermill_outbox o
		ORDER BY o.transaction_id, o."offset" LIMIT 1`).Scan(&first, &firstOffset); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return res, fmt.Errorf("oldest row: %w", err)
	}
	if first.Valid {
		anchor = position{txID: first.String, offset: firstOffset.Int64 - 1}
	}
	res.New = anchor.String()
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM watermill_outbox`).Scan(&res.Rows); err != nil {
		return res, fmt.Errorf("count rows: %w", err)
	}
	groups := []string{group}
	if res.Renumbered > 0 {
		rs, err := tx.QueryContext(ctx, `SELECT consumer_group FROM watermill_offsets_outbox WHERE consumer_group <> $1
			ORDER BY consumer_group FOR UPDATE`, group)
		if err != nil {
			return res, fmt.Errorf("other groups: %w", err)
		}
		for rs.Next() {
			var g string
			if err := rs.Scan(&g); err != nil {
				rs.Close()
				return res, err
			}
			res.OtherGroups = append(res.OtherGroups, g)
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return res, err
		}
		groups = append(groups, res.OtherGroups...)
	}
	if opts.DryRun {
		return res, nil
	}
	for _, g := range groups {
		if _, err := tx.ExecContext(ctx, `UPDATE watermill_offsets_outbox SET last_processed_transaction_id = $2::xid8,
			offset_acked = $3 WHERE consumer_group = $1`, g, anchor.txID, anchor.offset); err != nil {
			return res, fmt.Errorf("save position of %q: %w", g, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return res, err
	}
	res.Applied = true
	return res, nil
}
