package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/worker"
)

// poisonReplayOptions are replay's own flags.
type poisonReplayOptions struct {
	// dryRun prints what would be replayed and publishes and writes nothing.
	dryRun bool
	// yes skips the confirmation question.
	yes bool
	// maxReplays skips messages whose replay count has reached it: the loop guard.
	maxReplays int
	// journal is the path of the replay journal.
	journal string
}

func (o *poisonReplayOptions) register(fs *flag.FlagSet, cfg poisonConfig) {
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be replayed; publish nothing")
	fs.BoolVar(&o.yes, "yes", false, "do not ask for confirmation")
	fs.IntVar(&o.maxReplays, "max-replays", cfg.maxReplays, "skip messages replayed this often already")
	fs.StringVar(&o.journal, "journal", cfg.journal, "the replay journal")
}

func (o poisonReplayOptions) validate() error {
	if o.maxReplays < 1 {
		return usageError(fmt.Sprintf("poison replay: --max-replays %d: want at least 1", o.maxReplays))
	}
	if o.journal == "" {
		return usageError("poison replay: --journal must name a file")
	}
	return nil
}

// replayStep is what replay does with one selected message.
type replayStep struct {
	rec    poisonRecord
	source string // poison topic/partition:offset
	target string // the original topic
	// done is the journal's record of an earlier replay; set, the message is not
	// published again.
	done *replayJournalEntry
	// skip says why the message is not replayed; empty when it is.
	skip string
}

// replaySource names a poison record in the journal and in the replayed_from header.
func replaySource(topic string, pos poisonPos) string { return topic + "/" + pos.String() }

func (c *poisonCmd) replay(ctx context.Context, cfg poisonConfig, sel poisonSelection, o poisonReplayOptions) error {
	if !o.dryRun && !o.yes && !c.interactive {
		// Decided before anything is read or written: nobody could answer the question.
		return errors.New("replay needs confirmation and stdin is not a terminal: pass --yes, or --dry-run to see what would be replayed (nothing was published)")
	}
	client, err := c.connect(cfg)
	if err != nil {
		return err
	}
	defer client.Close()
	recs, err := readPoison(ctx, client, cfg.topic())
	if err != nil {
		return err
	}
	selected := sel.apply(recs, c.now())
	if len(selected) == 0 {
		fmt.Fprintf(c.stdout, "nothing to replay: none of the %d poisoned messages is selected\n", len(recs))
		return nil
	}
	j, err := openReplayJournal(o.journal, !o.dryRun)
	if err != nil {
		return err
	}
	defer j.close()

	steps, marks, err := c.plan(ctx, client, cfg, j, selected, o)
	if err != nil {
		return err
	}
	var todo, done, skipped int
	for _, s := range steps {
		switch {
		case s.skip != "":
			skipped++
		case s.done != nil:
			done++
		default:
			todo++
		}
	}

	if o.dryRun {
		for _, s := range steps {
			switch {
			case s.skip != "":
				fmt.Fprintf(c.stdout, "would skip %s: %s\n", replayDescribe(s), s.skip)
			case s.done != nil:
				fmt.Fprintf(c.stdout, "already replayed %s: %s\n", replayDescribe(s), s.done.how())
			default:
				fmt.Fprintf(c.stdout, "would replay %s -> %s replay_count=%d\n", replayDescribe(s), s.target, s.rec.replayCount()+1)
			}
		}
		fmt.Fprintf(c.stdout, "dry run: would replay %d, already replayed %d, would skip %d of %d selected; nothing published\n",
			todo, done, skipped, len(steps))
		return nil
	}

	if todo > 0 && !o.yes {
		if err := c.confirm(todo, steps); err != nil {
			return err
		}
	}
	for _, s := range steps {
		switch {
		case s.skip != "":
			fmt.Fprintf(c.stdout, "skipped %s: %s\n", replayDescribe(s), s.skip)
			if err := j.record(c.entry("skipped", s, func(e *replayJournalEntry) { e.Reason = s.skip })); err != nil {
				return err
			}
		case s.done != nil && s.done.Event == "pending":
			// An interrupted run published it but did not get to record that; plan found it
			// on the target topic.
			fmt.Fprintf(c.stdout, "already replayed %s: %s\n", replayDescribe(s), s.done.how())
			if err := j.record(c.entry("replayed", s, func(e *replayJournalEntry) {
				e.Landed, e.Reason = s.done.Landed, "found on the target after an interrupted replay"
			})); err != nil {
				return err
			}
		case s.done != nil:
			fmt.Fprintf(c.stdout, "already replayed %s: %s\n", replayDescribe(s), s.done.how())
		}
	}

	replayed := 0
	if todo > 0 {
		producer, err := sarama.NewSyncProducerFromClient(client.Client)
		if err != nil {
			return fmt.Errorf("kafka producer: %w", err)
		}
		defer producer.Close()
		bar := newReplayProgress(c.stderr, todo, c.progress && todo >= replayProgressMin)
		bar.set(0)
		for _, s := range steps {
			if s.skip != "" || s.done != nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				bar.clear()
				return fmt.Errorf("interrupted after replaying %d of %d; run the same command again to replay the rest: %w", replayed, todo, err)
			}
			landed, err := c.publish(producer, j, s, marks[s.target])
			if err != nil {
				bar.clear()
				return fmt.Errorf("replay %s after replaying %d of %d (run the same command again to resume): %w", s.rec.pos, replayed, todo, err)
			}
			replayed++
			bar.clear()
			fmt.Fprintf(c.stdout, "replayed %s -> %s at %s replay_count=%d\n", replayDescribe(s), s.target, landed, s.rec.replayCount()+1)
			bar.set(replayed)
		}
		bar.clear()
	}
	fmt.Fprintf(c.stdout, "replayed %d, already replayed %d, skipped %d of %d selected (journal %s)\n",
		replayed, done, skipped, len(steps), o.journal)
	if skipped > 0 {
		return fmt.Errorf("%d of the %d selected messages were skipped and not replayed (see above)", skipped, len(steps))
	}
	return nil
}

// plan decides each message's step. It also returns the high-water marks of the topics
// it will publish to, taken before anything is published: a journal's pending entry
// carries them so that a resumed run can look for an interrupted publish above them.
func (c *poisonCmd) plan(ctx context.Context, client poisonKafka, cfg poisonConfig, j *replayJournal,
	selected []poisonRecord, o poisonReplayOptions) ([]replayStep, map[string]map[int32]int64, error) {
	marks := map[string]map[int32]int64{}
	missing := map[string]bool{}
	steps := make([]replayStep, 0, len(selected))
	for _, r := range selected {
		s := replayStep{rec: r, source: replaySource(cfg.topic(), r.pos), target: r.header(middleware.PoisonedTopicKey)}
		done, pending := j.state(s.source, r.time)
		switch {
		case done != nil:
			s.done = done
		case s.target == "":
			s.skip = "no " + middleware.PoisonedTopicKey + " header: the original topic is unknown"
		case s.target == cfg.topic():
			s.skip = "its original topic is the poison topic itself"
		case r.header(worker.MetaTruncated) != "":
			where := r.header(worker.MetaOriginalRecord)
			if where == "" {
				where = "unknown"
			}
			s.skip = fmt.Sprintf("a truncated copy (it lost its %s: the whole message, %s bytes, was too large for the poison topic); the original is at %s",
				r.header(worker.MetaTruncated), r.header(worker.MetaOriginalBytes), where)
		case r.replayCount() >= o.maxReplays:
			s.skip = fmt.Sprintf("replayed %d times already, the maximum (--max-replays %d)", r.replayCount(), o.maxReplays)
		}
		if s.skip == "" && s.done == nil && !missing[s.target] && marks[s.target] == nil {
			parts, err := poisonPartitions(client, s.target)
			switch {
			case errors.Is(err, errPoisonNoTopic):
				missing[s.target] = true
			case err != nil:
				return nil, nil, err
			default:
				if marks[s.target], err = poisonOffsets(client, s.target, parts, sarama.OffsetNewest); err != nil {
					return nil, nil, err
				}
			}
		}
		if s.skip == "" && s.done == nil && missing[s.target] {
			s.skip = fmt.Sprintf("the original topic %s does not exist", s.target)
		}
		if s.skip == "" && s.done == nil && pending != nil {
			landed, err := findReplayedCopy(ctx, client, s.target, s.source, pending.Marks)
			if err != nil {
				return nil, nil, fmt.Errorf("check whether the interrupted replay of %s reached %s: %w", r.pos, s.target, err)
			}
			if landed != "" {
				p := *pending
				p.Landed = landed
				s.done = &p
			}
		}
		steps = append(steps, s)
	}
	return steps, marks, nil
}

// findReplayedCopy looks on target above marks for the copy of source that an interrupted
// run may have published, and returns where it is ("partition:offset") or "".
func findReplayedCopy(ctx context.Context, client poisonKafka, target, source string, marks map[int32]int64) (string, error) {
	parts, err := poisonPartitions(client, target)
	if err != nil {
		return "", err
	}
	from, err := poisonOffsets(client, target, parts, sarama.OffsetOldest)
	if err != nil {
		return "", err
	}
	for p, m := range marks {
		if m > from[p] {
			from[p] = m
		}
	}
	to, err := poisonOffsets(client, target, parts, sarama.OffsetNewest)
	if err != nil {
		return "", err
	}
	landed := ""
	err = poisonScan(ctx, client, target, from, to, func(m *sarama.ConsumerMessage) bool {
		for _, h := range m.Headers {
			if h != nil && string(h.Key) == metaReplayedFrom && string(h.Value) == source {
				landed = poisonPos{m.Partition, m.Offset}.String()
				return false
			}
		}
		return true
	})
	return landed, err
}

// publish republishes one message and records it in the journal: first as pending (with
// the target's marks), then, once Kafka has acknowledged it, as replayed.
func (c *poisonCmd) publish(producer sarama.SyncProducer, j *replayJournal, s replayStep, marks map[int32]int64) (string, error) {
	if err := j.record(c.entry("pending", s, func(e *replayJournalEntry) { e.Marks = marks })); err != nil {
		return "", err
	}
	p, off, err := producer.SendMessage(poisonReplayMessage(s, c.now()))
	if err != nil {
		return "", fmt.Errorf("publish to %s: %w", s.target, err)
	}
	if c.afterAck != nil {
		if err := c.afterAck(s.source); err != nil {
			return "", err
		}
	}
	landed := poisonPos{p, off}.String()
	err = j.record(c.entry("replayed", s, func(e *replayJournalEntry) { e.Landed = landed }))
	return landed, err
}

// poisonReplayMessage is the record to publish: the original key, payload and headers, less
// those of the failed delivery, plus the replay count and time.
func poisonReplayMessage(s replayStep, now time.Time) *sarama.ProducerMessage {
	var headers []sarama.RecordHeader
	for _, h := range s.rec.headers {
		if !deliveryHeaders[h.Key] {
			headers = append(headers, sarama.RecordHeader{Key: []byte(h.Key), Value: []byte(h.Value)})
		}
	}
	headers = append(headers,
		sarama.RecordHeader{Key: []byte(metaReplayCount), Value: []byte(strconv.Itoa(s.rec.replayCount() + 1))},
		sarama.RecordHeader{Key: []byte(metaReplayedAt), Value: []byte(now.UTC().Format(time.RFC3339))},
		sarama.RecordHeader{Key: []byte(metaReplayedFrom), Value: []byte(s.source)},
	)
	msg := &sarama.ProducerMessage{Topic: s.target, Value: sarama.ByteEncoder(s.rec.value), Headers: headers}
	if s.rec.key != nil {
		msg.Key = sarama.ByteEncoder(s.rec.key)
	}
	return msg
}

func (c *poisonCmd) entry(event string, s replayStep, set func(*replayJournalEntry)) replayJournalEntry {
	e := replayJournalEntry{
		Event: event, Source: s.source, PoisonedAt: s.rec.time.UTC(), Target: s.target,
		Key: string(s.rec.key), EventID: s.rec.header(events.MetaID), ReplayCount: s.rec.replayCount() + 1,
		At: c.now().UTC(),
	}
	set(&e)
	return e
}

// replayDescribe is a message in an audit line.
func replayDescribe(s replayStep) string {
	return fmt.Sprintf("%s order=%s type=%s", s.rec.pos, poisonCell(s.rec.orderID()), poisonCell(s.rec.header(events.MetaType)))
}

// confirm asks the operator on stdin, a terminal (replay refused at once otherwise).
func (c *poisonCmd) confirm(n int, steps []replayStep) error {
	topics := map[string]bool{}
	for _, s := range steps {
		if s.skip == "" && s.done == nil {
			topics[s.target] = true
		}
	}
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	sort.Strings(names)
	fmt.Fprintf(c.stderr, "replay %d messages to %s? [y/N] ", n, strings.Join(names, ", "))
	answer, err := bufio.NewReader(c.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	default:
		return errors.New("not confirmed: nothing was published")
	}
}

// replayProgressMin is the number of messages from which replay draws a progress bar.
const replayProgressMin = 20

// replayProgress draws a bar on a terminal: "[=====     ] 42/100". Audit lines go to stdout,
// which is often the same terminal, so the bar is cleared before each.
type replayProgress struct {
	w     io.Writer
	total int
	on    bool
}

func newReplayProgress(w io.Writer, total int, on bool) *replayProgress {
	return &replayProgress{w: w, total: total, on: on}
}

const replayProgressWidth = 40

func (p *replayProgress) set(done int) {
	if !p.on {
		return
	}
	filled := replayProgressWidth * done / p.total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("=", filled), strings.Repeat(" ", replayProgressWidth-filled), done, p.total)
}

func (p *replayProgress) clear() {
	if p.on {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
