package relay

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/orderpipe/orderpipe/kafkaconf"
)

// position is a place in the outbox: rows are ordered by (transaction id, offset).
// The transaction id is an xid8, carried as its decimal text.
type position struct {
	txID   string
	offset int64
}

type row struct {
	pos       position
	uuid      string
	payload   []byte
	createdAt time.Time
}

func loadPosition(ctx context.Context, conn *sql.Conn, group string) (position, error) {
	p := position{txID: "0"}
	err := conn.QueryRowContext(ctx, `SELECT last_processed_transaction_id::text, offset_acked
		FROM watermill_offsets_outbox WHERE consumer_group = $1`, group).Scan(&p.txID, &p.offset)
	if errors.Is(err, sql.ErrNoRows) {
		return position{txID: "0"}, nil
	}
	if err != nil {
		return position{}, fmt.Errorf("load position: %w", err)
	}
	return p, nil
}

// readBatch reads up to limit rows after pos whose transactions have all ended: rows of
// a transaction that is still running, or that began after the oldest running one, wait
// for the next read. The primary key serves the range scan, so a read costs the same
// however long the backlog.
func readBatch(ctx context.Context, conn *sql.Conn, pos position, limit int) ([]row, error) {
	rs, err := conn.QueryContext(ctx, `SELECT transaction_id::text, "offset", uuid, payload::text, created_at
		FROM watermill_outbox
		WHERE (transaction_id, "offset") > ($1::xid8, $2)
		  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY transaction_id, "offset"
		LIMIT $3`, pos.txID, pos.offset, limit)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []row
	for rs.Next() {
		var r row
		var payload sql.NullString
		if err := rs.Scan(&r.pos.txID, &r.pos.offset, &r.uuid, &payload, &r.createdAt); err != nil {
			return nil, err
		}
		r.payload = []byte(payload.String)
		out = append(out, r)
	}
	return out, rs.Err()
}

// envelope is Watermill's forwarder envelope (components/forwarder), as outbox.Publish
// writes it.
type envelope struct {
	DestinationTopic string            `json:"destination_topic"`
	UUID             string            `json:"uuid"`
	Payload          []byte            `json:"payload"`
	Metadata         map[string]string `json:"metadata"`
}

type deadLetter struct {
	row    row
	reason string
}

// decodeBatch unwraps each row into a Kafka record; rows that do not decode are
// returned as dead letters instead.
func decodeBatch(rows []row) ([]*sarama.ProducerMessage, []deadLetter) {
	msgs := make([]*sarama.ProducerMessage, 0, len(rows))
	var dead []deadLetter
	for _, r := range rows {
		pm, err := decodeRow(r)
		if err != nil {
			dead = append(dead, deadLetter{row: r, reason: err.Error()})
			continue
		}
		msgs = append(msgs, pm)
	}
	return msgs, dead
}

func decodeRow(r row) (*sarama.ProducerMessage, error) {
	var e envelope
	if err := json.Unmarshal(r.payload, &e); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if e.DestinationTopic == "" || e.UUID == "" {
		return nil, errors.New("envelope without destination topic or message uuid")
	}
	msg := message.NewMessage(e.UUID, e.Payload)
	msg.Metadata = e.Metadata
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	pm, err := kafkaconf.Marshaler.Marshal(e.DestinationTopic, msg)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	return pm, nil
}

// savePosition records the dead letters of a batch and moves the position past it, in
// one transaction on the leader's session.
func savePosition(ctx context.Context, conn *sql.Conn, group string, pos position, dead []deadLetter) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, d := range dead {
		if _, err := tx.ExecContext(ctx, `INSERT INTO outbox_dead_letters (transaction_id, "offset", uuid, payload, reason)
			VALUES ($1::xid8, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
			d.row.pos.txID, d.row.pos.offset, d.row.uuid, string(d.row.payload), d.reason); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO watermill_offsets_outbox
		(consumer_group, offset_acked, last_processed_transaction_id) VALUES ($1, $2, $3::xid8)
		ON CONFLICT (consumer_group) DO UPDATE SET offset_acked = excluded.offset_acked,
		last_processed_transaction_id = excluded.last_processed_transaction_id`,
		group, pos.offset, pos.txID); err != nil {
		return err
	}
	return tx.Commit()
}

// maintain deletes forwarded rows past the retention and refreshes the backlog gauge,
// every PruneInterval, while this relay is active.
func (r *Relay) maintain(ctx context.Context) error {
	t := time.NewTicker(r.cfg.PruneInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := r.prune(ctx); err != nil && ctx.Err() == nil {
			r.logger.Warn("prune outbox", "err", err)
		}
	}
}

func (r *Relay) prune(ctx context.Context) error {
	for {
		res, err := r.db.ExecContext(ctx, `DELETE FROM watermill_outbox WHERE ctid = ANY (ARRAY(
			SELECT o.ctid FROM watermill_outbox o, watermill_offsets_outbox p
			WHERE p.consumer_group = $1
			  AND (o.transaction_id, o."offset") <= (p.last_processed_transaction_id, p.offset_acked)
			  AND o.created_at < now() - make_interval(secs => $2)
			ORDER BY o.transaction_id, o."offset" LIMIT 10000))`,
			r.cfg.ConsumerGroup, r.cfg.Retention.Seconds())
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		r.metrics.pruned.Add(float64(n))
		if n < 10000 {
			break
		}
	}
	var backlog int64
	err := r.db.QueryRowContext(ctx, `SELECT count(*) FROM watermill_outbox o
		WHERE (o.transaction_id, o."offset") > COALESCE((SELECT (p.last_processed_transaction_id, p.offset_acked)
			FROM watermill_offsets_outbox p WHERE p.consumer_group = $1), ('0'::xid8, 0::bigint))`,
		r.cfg.ConsumerGroup).Scan(&backlog)
	if err != nil {
		return err
	}
	r.metrics.backlog.Set(float64(backlog))
	return nil
}
