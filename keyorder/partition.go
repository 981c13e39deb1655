package keyorder

import (
	"context"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// partition consumes one claimed partition. Its run loop alone owns the window; the
// deliveries report back on finished.
type partition struct {
	s        *Subscriber
	sess     sarama.ConsumerGroupSession
	claim    sarama.ConsumerGroupClaim
	out      chan<- *message.Message
	fields   watermill.LogFields
	window   *window
	gauges   partitionGauges
	finished chan delivery // capacity MaxInFlight: a delivery never waits to report

	inHandler   int             // deliveries started and not reported
	waiting     *record         // read but not admitted: the byte budget was spent
	budgetFreed <-chan struct{} // closed when bytes are given back, while waiting
	pausedAt    time.Time       // zero while reading
	pauseLogged bool
}

// delivery is how a record's delivery ended: acked, or given up because the partition
// is being let go.
type delivery struct {
	r     *record
	acked bool
}

func (p *partition) run() {
	ctx, cancel := context.WithCancel(p.sess.Context())
	defer cancel()
	defer p.gauges.delete()
	records := p.claim.Messages()
	slowPause := time.NewTicker(p.s.cfg.SlowPauseLog)
	defer slowPause.Stop()
	for {
		if ctx.Err() != nil { // revoked: read no more, though Sarama may still have records buffered
			p.release(ctx, cancel)
			return
		}
		in := records
		if p.waiting != nil || p.window.len() >= p.s.cfg.MaxInFlight {
			in = nil
		}
		p.setPaused(in == nil)
		select {
		case m, ok := <-in:
			if !ok { // revoked, or the partition consumer failed: Sarama closes the claim's channel
				p.release(ctx, cancel)
				return
			}
			p.admit(ctx, m)
		case <-p.budgetFreed:
			m := p.waiting.msg
			p.waiting, p.budgetFreed = nil, nil
			p.admit(ctx, m)
		case d := <-p.finished:
			p.finish(ctx, d)
		case <-slowPause.C:
			p.logSlowPause()
		case <-ctx.Done():
			p.release(ctx, cancel)
			return
		}
	}
}

// admit takes m into the window if the byte budget allows, and hands it to the handler
// if no older record of its key is unfinished.
func (p *partition) admit(ctx context.Context, m *sarama.ConsumerMessage) {
	r := &record{msg: m, offset: m.Offset, key: string(m.Key), size: int64(len(m.Key) + len(m.Value))}
	for _, h := range m.Headers {
		r.size += int64(len(h.Key) + len(h.Value))
	}
	if wait := p.s.budget.take(r.size); wait != nil {
		p.waiting, p.budgetFreed = r, wait
		return
	}
	if p.window.add(r) {
		p.start(ctx, r)
	}
	p.gauges.window.Set(float64(p.window.len()))
}

// start hands r to the handler in a goroutine of its own, which reports on finished.
func (p *partition) start(ctx context.Context, r *record) {
	r.started = true
	p.inHandler++
	p.gauges.inHandler.Set(float64(p.inHandler))
	go func() {
		p.finished <- delivery{r: r, acked: p.deliver(ctx, r)}
	}()
}

// finish books a delivery's end: an acked record is finished, its key's next record
// goes to the handler, and the offset is marked up to the first unfinished record.
func (p *partition) finish(ctx context.Context, d delivery) {
	p.inHandler--
	p.gauges.inHandler.Set(float64(p.inHandler))
	p.s.budget.give(d.r.size)
	if !d.acked {
		return // given up as the partition is let go: not committed, redelivered
	}
	next, commit := p.window.finish(d.r)
	if commit >= 0 {
		p.sess.MarkOffset(p.claim.Topic(), p.claim.Partition(), commit, "")
	}
	p.gauges.behind.Set(float64(p.window.finished))
	p.gauges.window.Set(float64(p.window.len()))
	if next != nil && ctx.Err() == nil {
		p.start(ctx, next)
	}
}

// release lets the partition go: the handlers' contexts are cancelled (cancel ends
// ctx), their deliveries waited for (each bounded by ReleaseTimeout), and what finished
// is marked, so that Sarama commits it as the session ends.
func (p *partition) release(ctx context.Context, cancel context.CancelFunc) {
	start := time.Now()
	abandoned := p.inHandler
	cancel()
	for p.inHandler > 0 {
		p.finish(ctx, <-p.finished)
	}
	for _, r := range p.window.recs {
		if !r.started { // waited behind its key: its bytes were taken, never given back
			p.s.budget.give(r.size)
		}
	}
	took := time.Since(start)
	p.s.metrics.release.WithLabelValues(p.claim.Topic()).Observe(took.Seconds())
	p.s.cfg.Logger.Info("partition released", p.fields.Add(watermill.LogFields{
		"took_ms": took.Milliseconds(), "in_flight": abandoned, "uncommitted": p.window.len()}))
}

func (p *partition) setPaused(paused bool) {
	switch {
	case paused && p.pausedAt.IsZero():
		p.pausedAt = time.Now()
		reason := pauseWindowFull
		if p.waiting != nil {
			reason = pauseBytes
		}
		p.s.metrics.pauses.WithLabelValues(p.claim.Topic(), reason).Inc()
		p.gauges.paused.Set(1)
	case !paused && !p.pausedAt.IsZero():
		if p.pauseLogged {
			p.s.cfg.Logger.Info("partition resumed", p.fields.Add(watermill.LogFields{
				"paused_ms": time.Since(p.pausedAt).Milliseconds()}))
		}
		p.pausedAt, p.pauseLogged = time.Time{}, false
		p.gauges.paused.Set(0)
	}
}

// logSlowPause names, once per pause, the record that holds a partition paused for
// longer than SlowPauseLog: usually one key whose handler keeps failing.
func (p *partition) logSlowPause() {
	if p.pausedAt.IsZero() || p.pauseLogged || time.Since(p.pausedAt) < p.s.cfg.SlowPauseLog {
		return
	}
	p.pauseLogged = true
	f := watermill.LogFields{"window": p.window.len(), "in_flight": p.inHandler,
		"buffered_bytes": p.s.budget.inUse()}
	if o := p.window.oldest(); o != nil {
		f["oldest_offset"], f["oldest_key"] = o.offset, o.key
	}
	msg := "partition paused: the oldest unfinished record holds the window"
	if p.waiting != nil {
		msg = "partition paused: the byte budget is spent"
	}
	p.s.cfg.Logger.Info(msg, p.fields.Add(f))
}

// deliver sends r to the handler until it is acked (true) or the partition is let go
// (false). A nack sends it again after NackResendSleep.
func (p *partition) deliver(ctx context.Context, r *record) bool {
	for delivery := 1; ; delivery++ {
		msg, err := p.s.cfg.Unmarshaler.Unmarshal(r.msg)
		if err != nil {
			// The record cannot become a message; it holds its key, and the log says why.
			p.s.cfg.Logger.Error("unmarshal record", err, p.fields.Add(watermill.LogFields{"offset": r.offset}))
		} else {
			switch p.send(ctx, msg, r.msg, delivery) {
			case acked:
				return true
			case gone:
				return false
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(p.s.cfg.NackResendSleep):
		}
	}
}

type sendResult int

const (
	acked sendResult = iota
	nacked
	gone // the partition is being let go
)

// send hands msg to the handler and waits for its ack or nack. The message's context
// ends with the ack, or with the partition: then the handler has ReleaseTimeout to say
// how it ended, so that a record it finished is still committed.
func (p *partition) send(ctx context.Context, msg *message.Message, m *sarama.ConsumerMessage, delivery int) sendResult {
	msgCtx, cancel := context.WithCancel(withRecord(ctx, m, delivery))
	defer cancel()
	msg.SetContext(msgCtx)
	select {
	case p.out <- msg:
	case <-ctx.Done():
		return gone
	}
	select {
	case <-msg.Acked():
		return acked
	case <-msg.Nacked():
		return nacked
	case <-ctx.Done():
	}
	t := time.NewTimer(p.s.cfg.ReleaseTimeout)
	defer t.Stop()
	select {
	case <-msg.Acked():
		return acked
	case <-msg.Nacked():
	case <-t.C:
	}
	return gone
}
