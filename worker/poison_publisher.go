package worker

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/keyorder"
)

// Headers of a poison copy that had to be truncated because the whole message was too
// large for the poison topic. The original stays on its topic (until retention), at
// MetaOriginalRecord; `orderctl poison replay` refuses to replay a truncated copy.
const (
	// MetaTruncated says what the copy lost, a list of "payload", "key" and "headers",
	// e.g. "payload" or "payload,headers". Absent on a whole copy.
	MetaTruncated = "poison_truncated"
	// MetaOriginalBytes is the size of the whole copy as the producer counts it (key,
	// payload, headers and record overhead).
	MetaOriginalBytes = "poison_original_bytes"
	// MetaOriginalRecord is where the original is: "topic/partition:offset".
	MetaOriginalRecord = "poison_original_record"
)

// How much of a too-large message a truncated copy keeps: the start of the payload and
// of each header value; should that still be too large, only the headers that say what
// the message was and why it was poisoned, without payload.
const (
	truncatedPayloadBytes = 64 << 10
	truncatedHeaderBytes  = 1 << 10
)

// truncatedKeep are the headers the smallest copy keeps.
var truncatedKeep = []string{
	middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey,
	middleware.PoisonedSubscriberKey, MetaAttempts, MetaFirstFailedAt,
	events.MetaID, events.MetaType, events.MetaSubject, events.MetaSource, events.MetaTime,
	kafkaconf.MetaRecordKey, MetaTruncated, MetaOriginalBytes, MetaOriginalRecord,
}

// sizeBoundPublisher publishes to the poison topic. A message too large for it (larger
// than maxBytes, or refused by the broker as too large) goes as a truncated copy instead:
// publishing the whole message could never succeed, and the failure would nack it for
// redelivery forever, holding its key and, once the window fills, its partition.
type sizeBoundPublisher struct {
	message.Publisher
	// marshaler is the publisher's, to measure a message as the producer will.
	marshaler kafka.Marshaler
	// maxBytes is the producer's Producer.MaxMessageBytes.
	maxBytes int
}

func (p sizeBoundPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if err := p.publish(topic, msg); err != nil {
			return err
		}
	}
	return nil
}

func (p sizeBoundPublisher) publish(topic string, msg *message.Message) error {
	size, err := p.size(topic, msg)
	if err != nil {
		return err
	}
	if size <= p.maxBytes {
		err := p.Publisher.Publish(topic, msg)
		if !errors.Is(err, sarama.ErrMessageSizeTooLarge) {
			return err
		}
	}
	for _, minimal := range []bool{false, true} {
		cp := truncatedCopy(msg, size, minimal)
		n, err := p.size(topic, cp)
		if err != nil {
			return err
		}
		if n > p.maxBytes {
			continue
		}
		if err := p.Publisher.Publish(topic, cp); !errors.Is(err, sarama.ErrMessageSizeTooLarge) {
			return err
		}
	}
	return fmt.Errorf("poison copy of %s: too large for %s even truncated (%d bytes whole)", originalRecord(msg), topic, size)
}

// size is the message's size as the producer counts it against Producer.MaxMessageBytes.
func (p sizeBoundPublisher) size(topic string, msg *message.Message) (int, error) {
	pm, err := p.marshaler.Marshal(topic, msg)
	if err != nil {
		return 0, fmt.Errorf("measure poison copy: %w", err)
	}
	return pm.ByteSize(2), nil
}

// truncatedCopy is msg cut down, with the headers that say so. minimal keeps no payload
// and only the truncatedKeep headers.
func truncatedCopy(msg *message.Message, size int, minimal bool) *message.Message {
	payload := msg.Payload[:min(len(msg.Payload), truncatedPayloadBytes)]
	if minimal {
		payload = nil
	}
	cp := message.NewMessage(msg.UUID, payload)
	cp.SetContext(msg.Context())
	var lost []string
	if len(payload) < len(msg.Payload) {
		lost = append(lost, "payload")
	}
	keys := make([]string, 0, len(msg.Metadata))
	for k := range msg.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	headersCut := false
	for _, k := range keys {
		v := msg.Metadata[k]
		if minimal && !slices.Contains(truncatedKeep, k) {
			headersCut = true
			continue
		}
		if minimal && k == kafkaconf.MetaRecordKey && len(v) > truncatedHeaderBytes {
			lost = append(lost, "key") // a key this large is not kept even as the key
			continue
		}
		if len(v) > truncatedHeaderBytes && k != kafkaconf.MetaRecordKey { // the key is the key, not a header
			v, headersCut = v[:truncatedHeaderBytes], true
		}
		cp.Metadata.Set(k, v)
	}
	if headersCut {
		lost = append(lost, "headers")
	}
	cp.Metadata.Set(MetaTruncated, strings.Join(lost, ","))
	cp.Metadata.Set(MetaOriginalBytes, strconv.Itoa(size))
	if ref := originalRecord(msg); ref != "" {
		cp.Metadata.Set(MetaOriginalRecord, ref)
	}
	return cp
}

// originalRecord is "topic/partition:offset" of the record msg was read from, or "" when
// msg did not come from the keyorder subscriber.
func originalRecord(msg *message.Message) string {
	r, ok := keyorder.RecordFromContext(msg.Context())
	if !ok {
		return ""
	}
	return fmt.Sprintf("%s/%d:%d", r.Topic, r.Partition, r.Offset)
}
