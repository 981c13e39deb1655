package worker

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/kafkaconf"
)

// fakePublisher records what is published; refuse, when set, decides which messages the
// "broker" refuses.
type fakePublisher struct {
	published []*message.Message
	refuse    func(*message.Message) error
}

func (f *fakePublisher) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if f.refuse != nil {
			if err := f.refuse(m); err != nil {
				return err
			}
		}
		f.published = append(f.published, m)
	}
	return nil
}

func (f *fakePublisher) Close() error { return nil }

func TestSizeBoundPublisher(t *testing.T) {
	const limit = 8 << 10
	bigHeader := strings.Repeat("h", 2*truncatedHeaderBytes)
	for _, tt := range []struct {
		name        string
		payload     int
		refuse      func(*message.Message) error
		wantLost    string // MetaTruncated of what is published; "" for the whole message
		wantPayload int
	}{
		{"small goes whole", 100, nil, "", 100},
		{"larger than the limit: payload and long headers cut", limit + 1, nil, "payload,headers", 0},
		{"refused by the broker as too large", 1000, func(m *message.Message) error {
			if m.Metadata.Get(MetaTruncated) == "" {
				return fmt.Errorf("cannot produce message u1: %w", sarama.ErrMessageSizeTooLarge) // as watermill-kafka wraps it
			}
			return nil
		}, "headers", 1000},
		{"another publish error is returned, not truncated", 100, func(*message.Message) error { return sarama.ErrOutOfBrokers }, "", -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakePublisher{refuse: tt.refuse}
			p := sizeBoundPublisher{Publisher: fake, marshaler: kafkaconf.RecordKeyMarshaler, maxBytes: limit}
			msg := message.NewMessage("u1", bytes.Repeat([]byte("x"), tt.payload))
			msg.Metadata.Set(middleware.ReasonForPoisonedKey, "malformed")
			msg.Metadata.Set(events.MetaSubject, "7")
			msg.Metadata.Set(kafkaconf.MetaRecordKey, "k-7")
			msg.Metadata.Set("x-big", bigHeader)
			err := p.Publish("poison", msg)
			if tt.wantPayload < 0 {
				if !errors.Is(err, sarama.ErrOutOfBrokers) || len(fake.published) != 0 {
					t.Errorf("Publish = %v, published %d; want the error and nothing", err, len(fake.published))
				}
				return
			}
			if err != nil || len(fake.published) != 1 {
				t.Fatalf("Publish = %v, published %d; want one message", err, len(fake.published))
			}
			got := fake.published[0]
			if lost := got.Metadata.Get(MetaTruncated); lost != tt.wantLost {
				t.Errorf("%s = %q, want %q", MetaTruncated, lost, tt.wantLost)
			}
			if tt.wantLost == "" {
				if got != msg {
					t.Error("a message that fits was not published as it is")
				}
				return
			}
			if tt.wantPayload > 0 && len(got.Payload) != tt.wantPayload {
				t.Errorf("payload %d bytes, want %d", len(got.Payload), tt.wantPayload)
			}
			for k, want := range map[string]string{middleware.ReasonForPoisonedKey: "malformed", events.MetaSubject: "7", kafkaconf.MetaRecordKey: "k-7"} {
				if v := got.Metadata.Get(k); v != want {
					t.Errorf("truncated copy %s = %q, want %q", k, v, want)
				}
			}
			if got.Metadata.Get(MetaOriginalBytes) == "" || len(got.Metadata.Get("x-big")) > truncatedHeaderBytes {
				t.Errorf("truncated copy: %s = %q, x-big %d bytes", MetaOriginalBytes, got.Metadata.Get(MetaOriginalBytes), len(got.Metadata.Get("x-big")))
			}
			if n, err := p.size("poison", got); err != nil || n > limit {
				t.Errorf("truncated copy is %d bytes (%v), over the limit %d", n, err, limit)
			}
		})
	}
}
