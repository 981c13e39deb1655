package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/trace"
)

// outgoing is an outbox row decoded into a Kafka record.
type outgoing struct {
	row  row
	msg  *sarama.ProducerMessage
	span trace.Span // nil unless the row is traced (decodeRow)
}

// permanent reports a Kafka error that sending the same record again cannot cure: the
// record itself is too large, invalid, or bound for a topic whose name Kafka refuses.
//
// Not permanent: UNKNOWN_TOPIC_OR_PARTITION (topics may be created late), and
// TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED: a missing ACL is an
// operator's mistake that rejects every record of a topic, and dead-lettering them all
// would drop that topic silently; the relay stalls instead, loudly (publish errors,
// backlog), until the ACL is fixed. The broker rejects MESSAGE_TOO_LARGE,
// RECORD_LIST_TOO_LARGE and INVALID_RECORD for a whole partition batch, so a record that
// got one is sent again alone before it is blamed (deliver).
func permanent(err error) bool {
	return errors.Is(err, sarama.ErrMessageSizeTooLarge) || errors.Is(err, sarama.ErrMessageSetSizeTooLarge) ||
		errors.Is(err, sarama.ErrInvalidTopic) || errors.Is(err, sarama.ErrInvalidRecord)
}

// deliver sends out as one batch and returns each record's error, nil for those Kafka
// acknowledged. A record that failed permanently is sent once more on its own, and only
// an error it then gets is kept. The producer spans end with their record's outcome. The
// error is errAbandoned if shutdown abandoned the batch.
func deliver(ctx context.Context, producer sarama.SyncProducer, out []outgoing) ([]error, error) {
	msgs := make([]*sarama.ProducerMessage, len(out))
	for i, o := range out {
		msgs[i] = o.msg
	}
	errs := make([]error, len(out))
	err := send(ctx, producer, msgs)
	var perrs sarama.ProducerErrors
	switch {
	case err == nil:
	case errors.Is(err, errAbandoned):
		for _, o := range out {
			endSpans(spanOf(o), err)
		}
		return nil, err
	case errors.As(err, &perrs):
		byMsg := make(map[*sarama.ProducerMessage]error, len(perrs))
		for _, pe := range perrs {
			byMsg[pe.Msg] = pe.Err
		}
		for i, o := range out {
			errs[i] = byMsg[o.msg]
		}
	default:
		for i := range errs {
			errs[i] = err
		}
	}
	for i, o := range out {
		if errs[i] != nil && permanent(errs[i]) {
			// A fresh record: Sarama keeps retry and sequence state in the old one.
			alone := &sarama.ProducerMessage{Topic: o.msg.Topic, Key: o.msg.Key, Value: o.msg.Value,
				Headers: o.msg.Headers, Timestamp: o.msg.Timestamp}
			err := send(ctx, producer, []*sarama.ProducerMessage{alone})
			if errors.Is(err, errAbandoned) {
				for _, o := range out[i:] {
					endSpans(spanOf(o), err)
				}
				return nil, err
			}
			if errors.As(err, &perrs) && len(perrs) == 1 {
				err = perrs[0].Err
			}
			errs[i] = err
		}
		endSpans(spanOf(o), errs[i])
	}
	return errs, nil
}

func spanOf(o outgoing) []trace.Span {
	if o.span == nil {
		return nil
	}
	return []trace.Span{o.span}
}

// rejectReason is a dead letter's reason for a record Kafka refused for good.
func rejectReason(topic string, err error) string {
	return fmt.Sprintf("kafka rejected the record for topic %q: %v", topic, err)
}

// settled is how many rows, from the first, the position may move past: those on Kafka
// (acked) or set aside as dead letters, up to the first that failed for a reason that
// may pass. That row and all after it are read again; those after it already
// acknowledged are not sent again.
func settled(rows []row, acked map[position]bool, dead []deadLetter) int {
	isDead := make(map[position]bool, len(dead))
	for _, d := range dead {
		isDead[d.row.pos] = true
	}
	n := 0
	for n < len(rows) && (acked[rows[n].pos] || isDead[rows[n].pos]) {
		n++
	}
	return n
}
