package keyorder_test

import (
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/orderpipe/orderpipe/internal/testenv"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/keyorder"
)

// Watermill's universal Pub/Sub suite, with the features the subscriber has:
//   - consumer groups, persistent: yes;
//   - guaranteed order: no, only per key (the suite publishes without keys, and keyless
//     records are ordered per partition, not per topic);
//   - exactly-once delivery: no (at least once, like every Kafka subscriber);
//   - a new subscriber receiving old messages: no, that feature describes subscribers
//     without a consumer group, which this one refuses.
//
// make test runs the suite short (its 5,000-message tests with 50); make chaos in full.
func TestUniversalPubSub(t *testing.T) {
	testenv.Integration(t)
	testenv.TopicPrefix(t) // fails early, with a hint, when Kafka is not up
	features := tests.Features{
		ConsumerGroups: true,
		Persistent:     true,
		ForceShort:     os.Getenv("CHAOS") != "full",
	}
	tests.TestPubSub(t, features,
		func(t *testing.T) (message.Publisher, message.Subscriber) {
			return pubSub(t, groupOf(t))
		},
		pubSub)
}

// groupOf names the consumer group of one test of the suite, shared by the subscribers
// it creates (one of them continues where another stopped).
func groupOf(t *testing.T) string {
	return "keyorder_" + regexp.MustCompile(`[^a-zA-Z0-9_-]+`).ReplaceAllString(t.Name(), "_")
}

func pubSub(t *testing.T, group string) (message.Publisher, message.Subscriber) {
	logger := watermill.NewSlogLogger(nil)
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers: testenv.Brokers(), Marshaler: kafka.DefaultMarshaler{},
		OverwriteSaramaConfig: kafkaconf.Producer("keyorder-suite"),
	}, logger)
	if err != nil {
		t.Fatal(err)
	}
	c := kafkaconf.Consumer("keyorder-suite")
	c.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
	c.Consumer.Group.Rebalance.Timeout = 3 * time.Second
	sub, err := keyorder.NewSubscriber(keyorder.Config{
		Brokers: testenv.Brokers(), ConsumerGroup: group, Sarama: c,
		NackResendSleep: 10 * time.Millisecond, ReleaseTimeout: time.Second, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}
