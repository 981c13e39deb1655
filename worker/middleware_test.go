package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

// TestMiddlewareChain runs the worker's real middleware chain on Watermill's in-memory
// pub/sub and checks what each kind of failure leads to.
func TestMiddlewareChain(t *testing.T) {
	tests := []struct {
		name       string
		handler    func(calls int32) error
		wantCalls  int32
		wantPoison bool
		wantReason string
	}{
		{"success", func(int32) error { return nil }, 1, false, ""},
		{"permanent error skips retries", func(int32) error { return permanent(errors.New("no such order")) }, 1, true, "no such order"},
		{"transient error is retried then poisoned", func(int32) error { return errors.New("payment 503") }, 4, true, "payment 503"},
		{"transient error that heals", func(c int32) error {
			if c < 3 {
				return errors.New("payment 503")
			}
			return nil
		}, 3, false, ""},
		{"panic is recovered, retried and poisoned", func(int32) error { panic("bug") }, 4, true, "bug"},
		// wantCalls 0: more than one delivery's worth of attempts (4), i.e. redelivered.
		{"unavailable dependency is retried, then nacked and redelivered, never poisoned", func(int32) error {
			return unavailable(errors.New("connection refused"))
		}, 0, false, ""},
		{"cancelled by shutdown or rebalance: redelivered, never poisoned", func(int32) error {
			return fmt.Errorf("load order: %w", context.Canceled)
		}, 0, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
			defer pubsub.Close()
			poisoned, err := pubsub.Subscribe(context.Background(), "poison")
			if err != nil {
				t.Fatal(err)
			}
			m, err := newMetrics(nil)
			if err != nil {
				t.Fatal(err)
			}
			poison, err := middleware.PoisonQueueWithFilter(countingPublisher{pubsub, m}, "poison", shouldPoison)
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{MaxRetries: 3, RetryInterval: time.Millisecond, RetryMaxInterval: 2 * time.Millisecond, HandlerTimeout: time.Second}
			router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			router.AddMiddleware(middlewares(cfg, poison, m, slog.New(slog.DiscardHandler))...)
			var calls atomic.Int32
			router.AddConsumerHandler("h", "in", pubsub, func(msg *message.Message) error {
				return tt.handler(calls.Add(1))
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go router.Run(ctx)
			<-router.Running()

			msg := message.NewMessage(watermill.NewUUID(), []byte("{}"))
			msg.Metadata.Set("ce_subject", "7")
			if err := pubsub.Publish("in", msg); err != nil {
				t.Fatal(err)
			}
			select {
			case p := <-poisoned:
				p.Ack()
				if !tt.wantPoison {
					t.Fatalf("message poisoned (%s), want not", p.Metadata.Get(middleware.ReasonForPoisonedKey))
				}
				if got := p.Metadata.Get(middleware.ReasonForPoisonedKey); !strings.Contains(got, tt.wantReason) {
					t.Errorf("poison reason = %q, want it to contain %q", got, tt.wantReason)
				}
				if p.UUID != msg.UUID || string(p.Payload) != "{}" || p.Metadata.Get("ce_subject") != "7" {
					t.Errorf("poisoned message lost its id, payload or metadata: %s %s %v", p.UUID, p.Payload, p.Metadata)
				}
				if got := p.Metadata.Get(MetaAttempts); got != strconv.Itoa(int(tt.wantCalls)) {
					t.Errorf("poisoned %s = %q, want %d", MetaAttempts, got, tt.wantCalls)
				}
				if _, err := time.Parse(time.RFC3339Nano, p.Metadata.Get(MetaFirstFailedAt)); err != nil {
					t.Errorf("poisoned %s = %q, want a time", MetaFirstFailedAt, p.Metadata.Get(MetaFirstFailedAt))
				}
			case <-time.After(time.Second):
				if tt.wantPoison {
					t.Fatal("message not poisoned within 1s")
				}
			}
			switch got := calls.Load(); {
			case tt.wantCalls == 0 && got <= 4:
				t.Errorf("handler called %d times, want more than 4: the nacked message was not redelivered", got)
			case tt.wantCalls > 0 && got != tt.wantCalls:
				t.Errorf("handler called %d times, want %d", got, tt.wantCalls)
			}
		})
	}
}

// TestTimeoutBoundsEachAttempt: a handler that would wait forever is cut off by the
// per-attempt timeout, so the message is retried instead of holding its partition.
func TestTimeoutBoundsEachAttempt(t *testing.T) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, watermill.NopLogger{})
	defer pubsub.Close()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	poison, err := middleware.PoisonQueueWithFilter(pubsub, "poison", shouldPoison)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{MaxRetries: 2, RetryInterval: time.Millisecond, RetryMaxInterval: time.Millisecond, HandlerTimeout: 50 * time.Millisecond}
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(middlewares(cfg, poison, m, slog.New(slog.DiscardHandler))...)
	ended := make(chan error, 16)
	router.AddConsumerHandler("h", "in", pubsub, func(msg *message.Message) error {
		<-msg.Context().Done() // hangs until the timeout cancels the attempt
		ended <- msg.Context().Err()
		return msg.Context().Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go router.Run(ctx)
	<-router.Running()
	if err := pubsub.Publish("in", message.NewMessage(watermill.NewUUID(), []byte("{}"))); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // the first attempt and both retries end
		select {
		case err := <-ended:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("attempt %d ended with %v, want the deadline", i+1, err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("attempt %d still running after 2s: no timeout", i+1)
		}
	}
}

// publishedTo records what is published through it.
type publishedTo struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (p *publishedTo) Publish(_ string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, msgs...)
	return nil
}

func (p *publishedTo) Close() error { return nil }

// TestCancelledDeliveryIsNeverPoisoned: the delivery's context ends (its partition moved
// to another worker, or the worker stops) while Retry waits between attempts. Retry then
// returns the context's cause (Sarama ends a session with "a rebalance is in progress"),
// not the handler's error: the message must be nacked for its next owner, not poisoned.
func TestCancelledDeliveryIsNeverPoisoned(t *testing.T) {
	poisonQueue := &publishedTo{}
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	poison, err := middleware.PoisonQueueWithFilter(countingPublisher{poisonQueue, m}, "poison", shouldPoison)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{MaxRetries: 5, RetryInterval: time.Second, RetryMaxInterval: time.Second, HandlerTimeout: time.Second}
	ctx, cancel := context.WithCancelCause(context.Background())
	h := func(*message.Message) ([]*message.Message, error) {
		// The first attempt fails (transient: Retry waits a second), then the partition moves.
		cancel(errors.New("kafka server: a rebalance for the group is in progress"))
		return nil, errors.New("payment provider answered 500")
	}
	var logs bytes.Buffer
	chain := middlewares(cfg, poison, m, slog.New(slog.NewJSONHandler(&logs, nil)))
	for i := len(chain) - 1; i >= 0; i-- {
		h = chain[i](h)
	}
	msg := message.NewMessage(watermill.NewUUID(), []byte("{}"))
	msg.SetContext(ctx)
	if _, err := h(msg); err == nil {
		t.Error("chain returned no error for a cancelled delivery; want a nack")
	}
	if len(poisonQueue.msgs) > 0 {
		t.Errorf("cancelled delivery poisoned with reason %q; want it nacked for redelivery",
			poisonQueue.msgs[0].Metadata.Get(middleware.ReasonForPoisonedKey))
	}
	if got := logs.String(); !strings.Contains(got, `"msg":"message nacked; will be redelivered"`) || strings.Contains(got, "poisoned") {
		t.Errorf("log = %s; want the delivery logged as nacked, never as poisoned", got)
	}
}
