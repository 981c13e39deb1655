// Package outbox is the transactional outbox: events are written as rows into the same
// Postgres transaction as the state change they describe, and the relay forwards them to
// Kafka after commit. This package owns the table's contract (watermill-sql's PostgreSQL
// schema for the forwarder topic "outbox", wrapped in Watermill's forwarder envelope that
// names the destination topic), so writers and the relay cannot disagree on it.
package outbox

import (
	"database/sql"
	"fmt"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Topic is the forwarder topic; its rows live in table watermill_outbox (schema/).
const Topic = "outbox"

// SchemaAdapter and OffsetsAdapter describe the outbox tables to watermill-sql.
var (
	SchemaAdapter  = wsql.DefaultPostgreSQLSchema{}
	OffsetsAdapter = wsql.DefaultPostgreSQLOffsetsAdapter{}
)

// Outbox writes messages into the outbox table of a running transaction.
type Outbox struct {
	topicPrefix string
}

// New returns an Outbox that prefixes every destination topic with topicPrefix
// (KAFKA_TOPIC_PREFIX; empty in production), so several environments can share a cluster.
func New(topicPrefix string) *Outbox {
	return &Outbox{topicPrefix: topicPrefix}
}

// Publish adds the messages to tx, each bound for Kafka topic (before the prefix). They
// become visible to the relay only if tx commits.
func (o *Outbox) Publish(tx *sql.Tx, topic string, msgs ...*message.Message) error {
	query, args, err := o.InsertQuery(topic, msgs...)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(query, args...); err != nil {
		return fmt.Errorf("outbox insert: %w", err)
	}
	return nil
}

// InsertQuery returns the statement that adds msgs, bound for Kafka topic (before the
// prefix), to the outbox: Watermill's forwarder envelope and watermill-sql's insert for
// the outbox table, for a caller that runs the statement itself (the api pipelines it).
func (o *Outbox) InsertQuery(topic string, msgs ...*message.Message) (string, []any, error) {
	var enveloped []*message.Message
	capture := capturePublisher(func(_ string, m ...*message.Message) error {
		enveloped = append(enveloped, m...)
		return nil
	})
	fwd := forwarder.NewPublisher(capture, forwarder.PublisherConfig{ForwarderTopic: Topic})
	if err := fwd.Publish(o.topicPrefix+topic, msgs...); err != nil {
		return "", nil, fmt.Errorf("outbox envelope for %s: %w", topic, err)
	}
	q, err := SchemaAdapter.InsertQuery(Topic, enveloped)
	if err != nil {
		return "", nil, fmt.Errorf("outbox insert for %s: %w", topic, err)
	}
	return q.Query, q.Args, nil
}

// capturePublisher hands what is published to a function instead of sending it.
type capturePublisher func(topic string, msgs ...*message.Message) error

func (f capturePublisher) Publish(topic string, msgs ...*message.Message) error {
	return f(topic, msgs...)
}
func (capturePublisher) Close() error { return nil }
