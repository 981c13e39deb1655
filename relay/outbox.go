package relay

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/tracing"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// position is a place in the outbox: rows are ordered by (transaction id, offset).
// The transaction id is an xid8, carried as its decimal text.
type position struct {
	txID   string
	offset int64
}

// after reports whether p comes after q in the outbox. Transaction ids compare as
// numbers: decimal text without leading zeros, so the longer is the larger.
func (p position) after(q position) bool {
	if len(p.txID) != len(q.txID) {
		return len(p.txID) > len(q.txID)
	}
	if p.txID != q.txID {
		return p.txID > q.txID
	}
	return p.offset > q.offset
}

// String is the position as transaction id/offset.
func (p position) String() string { return p.txID + "/" + strconv.FormatInt(p.offset, 10) }

type row struct {
	pos       position
	uuid      string
	payload   []byte
	createdAt time.Time
}

// readBatch reads up to limit rows after pos whose transactions have all ended: rows of
// a transaction that is still running, or that began after the oldest running one, wait
// for the next read. The primary key serves the range scan, so a read costs the same
// however long the backlog.
//
// The transaction id travels as text, so the output column has its own name and ORDER BY
// names the table's column: a bare "ORDER BY transaction_id" would bind to an output
// column of that name and sort the ids as text ("10" before "9"). It did once; a batch
// then began past rows never sent whenever the cluster's ids crossed a power of ten.
func readBatch(ctx context.Context, conn *sql.Conn, pos position, limit int) ([]row, error) {
	rs, err := conn.QueryContext(ctx, `SELECT o.transaction_id::text AS tx_id, o."offset", o.uuid, o.payload::text AS payload_text, o.created_at
		FROM watermill_outbox o
		WHERE (o.transaction_id, o."offset") > ($1::xid8, $2)
		  AND o.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY o.transaction_id, o."offset"
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

// decodeBatch unwraps each row into a Kafka record; rows that do not decode, or whose
// record is larger than maxBytes (the producer's Producer.MaxMessageBytes, which Sarama
// would refuse without sending), are returned as dead letters instead. The records'
// producer spans (see decodeRow) are to be ended once Kafka has answered.
func decodeBatch(rows []row, tracer trace.Tracer, maxBytes int) ([]outgoing, []deadLetter) {
	out := make([]outgoing, 0, len(rows))
	var dead []deadLetter
	for _, r := range rows {
		pm, span, err := decodeRow(r, tracer)
		if err != nil {
			dead = append(dead, deadLetter{row: r, reason: err.Error()})
			continue
		}
		// Record format v2: the version Sarama uses from Kafka 0.11 on.
		if n := pm.ByteSize(2); n > maxBytes {
			err := fmt.Errorf("record of %d bytes is larger than the producer's limit of %d bytes", n, maxBytes)
			if span != nil {
				endSpans([]trace.Span{span}, err)
			}
			dead = append(dead, deadLetter{row: r, reason: rejectReason(pm.Topic, err)})
			continue
		}
		out = append(out, outgoing{row: r, msg: pm, span: span})
	}
	return out, dead
}

// decodeRow unwraps a row into a Kafka record whose headers are the row's metadata.
//
// A row written under a sampled trace carries its traceparent: the relay then starts a
// producer span as that context's child and sends the span's context instead, so the
// consumer's span hangs below the relay's, all in the writer's trace. Other rows are sent
// as they are, at no cost, and so is every row when tracer is nil (tracing off: the
// writer's context goes on unchanged). The span is returned, to be ended when Kafka
// answers.
func decodeRow(r row, tracer trace.Tracer) (*sarama.ProducerMessage, trace.Span, error) {
	var e envelope
	if err := json.Unmarshal(r.payload, &e); err != nil {
		return nil, nil, fmt.Errorf("envelope: %w", err)
	}
	if e.DestinationTopic == "" || e.UUID == "" {
		return nil, nil, errors.New("envelope without destination topic or message uuid")
	}
	msg := message.NewMessage(e.UUID, e.Payload)
	msg.Metadata = e.Metadata
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	var span trace.Span
	if tracer != nil {
		if ctx := tracing.Extract(context.Background(), msg.Metadata); trace.SpanContextFromContext(ctx).IsSampled() {
			ctx, span = tracer.Start(ctx, "send "+e.DestinationTopic, trace.WithSpanKind(trace.SpanKindProducer),
				trace.WithAttributes(semconv.MessagingSystemKafka, semconv.MessagingOperationTypeSend,
					semconv.MessagingDestinationName(e.DestinationTopic), semconv.MessagingMessageID(e.UUID),
					semconv.MessagingKafkaMessageKey(msg.Metadata.Get(events.MetaSubject))))
			tracing.Inject(ctx, msg.Metadata)
		}
	}
	pm, err := kafkaconf.Marshaler.Marshal(e.DestinationTopic, msg)
	if err != nil {
		if span != nil {
			span.End()
		}
		return nil, nil, fmt.Errorf("marshal: %w", err)
	}
	return pm, span, nil
}

// endSpans ends producer spans, marking them failed if err is not nil (a record failed
// transiently is then sent again, under a new span).
func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		if err != nil {
			s.RecordError(err)
			s.SetStatus(codes.Error, "kafka did not acknowledge the batch")
		}
		s.End()
	}
}

// savePosition records the dead letters of a batch and moves the position from prev past
// it, in one transaction on the leader's session. It returns errPositionMoved, saving
// nothing, when the saved position is no longer prev: a position written meanwhile by
// Reanchor (or by a second leader) is never overwritten.
func savePosition(ctx context.Context, conn *sql.Conn, group string, prev, pos position, dead []deadLetter) error {
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
	res, err := tx.ExecContext(ctx, `UPDATE watermill_offsets_outbox SET offset_acked = $2, last_processed_transaction_id = $3::xid8
		WHERE consumer_group = $1 AND last_processed_transaction_id = $4::xid8 AND COALESCE(offset_acked, 0) = $5`,
		group, pos.offset, pos.txID, prev.txID, prev.offset)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 && prev == (position{txID: "0"}) {
		// The group's first save.
		res, err = tx.ExecContext(ctx, `INSERT INTO watermill_offsets_outbox
			(consumer_group, offset_acked, last_processed_transaction_id) VALUES ($1, $2, $3::xid8)
			ON CONFLICT (consumer_group) DO NOTHING`, group, pos.offset, pos.txID)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
	}
	if n == 0 {
		return errPositionMoved
	}
	return tx.Commit()
}

// maintain deletes rows past the retention that every group has forwarded, checks this
// group's position, and refreshes its gauges, every PruneInterval, while this relay is
// active.
func (r *Relay) maintain(ctx context.Context) error {
	t := time.NewTicker(r.cfg.PruneInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := r.checkPosition(ctx, r.db); err != nil && ctx.Err() == nil {
			r.logger.Warn("check position", "err", err)
		}
		if err := r.prune(ctx); err != nil && ctx.Err() == nil {
			r.logger.Warn("prune outbox", "err", err)
		}
	}
}

func (r *Relay) prune(ctx context.Context) error {
	for {
		// The floor is the lowest position of all groups, not this group's: a row is
		// deleted only once every group has forwarded it. Nothing is deleted before this
		// group has saved a position of its own, nor while any position or row has a
		// transaction id this cluster has not assigned yet (checkPosition): after a
		// logical restore every row may be one that no group has forwarded.
		res, err := r.db.ExecContext(ctx, `WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot()) AS next)
			DELETE FROM watermill_outbox WHERE ctid = ANY (ARRAY(
			SELECT o.ctid FROM watermill_outbox o,
				(SELECT p.last_processed_transaction_id AS tx, p.offset_acked AS off FROM watermill_offsets_outbox p
				 ORDER BY p.last_processed_transaction_id, p.offset_acked LIMIT 1) f
			WHERE EXISTS (SELECT 1 FROM watermill_offsets_outbox WHERE consumer_group = $1)
			  AND NOT EXISTS (SELECT 1 FROM watermill_offsets_outbox, s WHERE last_processed_transaction_id >= s.next)
			  AND NOT EXISTS (SELECT 1 FROM watermill_outbox, s WHERE transaction_id >= s.next)
			  AND (o.transaction_id, o."offset") <= (f.tx, f.off)
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
	// A position from another transaction-id space says nothing about what was
	// forwarded: the whole outbox is then backlog.
	var (
		backlog int64
		age     float64
	)
	err := r.db.QueryRowContext(ctx, `SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(o.created_at)), 0)::float8
		FROM watermill_outbox o
		WHERE (o.transaction_id, o."offset") > COALESCE((SELECT (p.last_processed_transaction_id, p.offset_acked)
			FROM watermill_offsets_outbox p WHERE p.consumer_group = $1
			  AND p.last_processed_transaction_id < pg_snapshot_xmax(pg_current_snapshot())), ('0'::xid8, 0::bigint))`,
		r.cfg.ConsumerGroup).Scan(&backlog, &age)
	if err != nil {
		return err
	}
	r.metrics.backlog.Set(float64(backlog))
	r.metrics.backlogAge.Set(max(age, 0))
	return nil
}
