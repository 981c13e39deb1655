package relay

import (
	"errors"
	"fmt"
	"testing"

	"github.com/IBM/sarama"
)

func TestSettled(t *testing.T) {
	rows := make([]row, 5)
	for i := range rows {
		rows[i].pos = position{txID: "100", offset: int64(i + 1)}
	}
	set := func(offsets ...int) map[position]bool {
		m := map[position]bool{}
		for _, o := range offsets {
			m[rows[o-1].pos] = true
		}
		return m
	}
	deads := func(offsets ...int) []deadLetter {
		var d []deadLetter
		for _, o := range offsets {
			d = append(d, deadLetter{row: rows[o-1]})
		}
		return d
	}
	for _, tt := range []struct {
		name  string
		acked map[position]bool
		dead  []deadLetter
		want  int
	}{
		{"all acknowledged", set(1, 2, 3, 4, 5), nil, 5},
		{"third failed, later ones acknowledged", set(1, 2, 4, 5), nil, 2},
		{"third a dead letter", set(1, 2, 4, 5), deads(3), 5},
		{"first failed", set(2, 3, 4, 5), nil, 0},
		{"dead letters and a failure after them", set(1), deads(2, 3, 5), 3},
		{"nothing sent", nil, nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := settled(rows, tt.acked, tt.dead); got != tt.want {
				t.Errorf("settled = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestPermanent(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{sarama.ErrMessageSizeTooLarge, true},
		{sarama.ErrMessageSetSizeTooLarge, true},
		{sarama.ErrInvalidTopic, true},
		{sarama.ErrInvalidRecord, true},
		{fmt.Errorf("topic x: %w", sarama.ErrInvalidTopic), true},
		{sarama.ErrUnknownTopicOrPartition, false},
		{sarama.ErrTopicAuthorizationFailed, false},
		{sarama.ErrNotEnoughReplicas, false},
		{sarama.ErrOutOfBrokers, false},
		{errors.New("kafka: Failed to deliver 3 messages."), false},
	} {
		if got := permanent(tt.err); got != tt.want {
			t.Errorf("permanent(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestPositionAfter(t *testing.T) {
	for _, tt := range []struct {
		p, q position
		want bool
	}{
		{position{"10", 1}, position{"9", 5}, true}, // numbers, not text
		{position{"9", 5}, position{"10", 1}, false},
		{position{"10", 2}, position{"10", 1}, true},
		{position{"10", 1}, position{"10", 1}, false},
		{position{"11", 0}, position{"10", 9}, true},
	} {
		if got := tt.p.after(tt.q); got != tt.want {
			t.Errorf("%s.after(%s) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
	}
}
