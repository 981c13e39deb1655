package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"golang.org/x/term"

	"github.com/orderpipe/orderpipe/events"
	"github.com/orderpipe/orderpipe/internal/envconf"
	"github.com/orderpipe/orderpipe/kafkaconf"
	"github.com/orderpipe/orderpipe/worker"
)

// poisonUsage is the help of `orderctl poison`; POISON.md is the operator's guide.
const poisonUsage = `usage: orderctl poison <command> [flags] [PARTITION:OFFSET ...]

Reads the poison topic (KAFKA_TOPIC_PREFIX + "orders.poison") on KAFKA_BROKERS directly,
from the oldest record to the end as it was when the command started, without a consumer
group: it never commits offsets.

commands:
  list    one row per poisoned message          [selection] [--json]
  show    one message whole: headers, payload   PARTITION:OFFSET [--json]
  stats   counts by reason, type and topic      [selection] [--json]
  replay  republish to the original topic       selection [--dry-run] [--yes]
                                                [--max-replays N] [--journal PATH]

selection (all given filters must match; PARTITION:OFFSET arguments pick messages):
  --reason SUBSTR   reason_poisoned contains SUBSTR (case-insensitive)
  --order ID        the record key or ce_subject is ID (repeatable)
  --type T          ce_type is T
  --since DURATION  poisoned at most DURATION ago (e.g. 90m, 48h)
  --limit N         only the first N matches, by partition and offset (0: all)
  --all             replay only: select every message (replay needs a filter or --all)

replay:
  --dry-run         print what would be replayed; publish and write nothing
  --yes             do not ask for confirmation (required when stdin is not a terminal)
  --max-replays N   skip messages already replayed N times (POISON_MAX_REPLAYS, default 3)
  --journal PATH    the replay journal: what is recorded there as replayed is never
                    replayed again (default $XDG_STATE_HOME/orderctl/replay.journal)
`

// Headers replay adds to a republished message. They stay on it, so a message that fails
// again reaches the poison topic with its replay count.
const (
	// metaReplayCount counts how often the message was replayed from the poison topic.
	metaReplayCount = "replay_count"
	// metaReplayedAt is when it was last replayed (RFC 3339).
	metaReplayedAt = "replayed_at"
	// metaReplayedFrom names the poison record it was replayed from, "topic/partition:offset";
	// a resumed replay looks for it to tell whether an interrupted publish went through.
	metaReplayedFrom = "replayed_from"
)

// deliveryHeaders describe one delivery of a message or its poisoning; replay drops them
// so that the replayed message is tried afresh (attempts from 1) and poisoned afresh.
var deliveryHeaders = map[string]bool{
	middleware.ReasonForPoisonedKey:  true,
	middleware.PoisonedTopicKey:      true,
	middleware.PoisonedHandlerKey:    true,
	middleware.PoisonedSubscriberKey: true,
	worker.MetaAttempts:              true,
	worker.MetaFirstFailedAt:         true,
	metaReplayCount:                  true,
	metaReplayedAt:                   true,
	metaReplayedFrom:                 true,
}

// poisonConfig is the environment of `orderctl poison`.
type poisonConfig struct {
	// brokers are the Kafka bootstrap servers (KAFKA_BROKERS).
	brokers []string
	// prefix is KAFKA_TOPIC_PREFIX; the poison topic is prefix + events.TopicOrdersPoison.
	prefix string
	// maxReplays is the default of replay's --max-replays (POISON_MAX_REPLAYS).
	maxReplays int
	// journal is the default of replay's --journal.
	journal string
}

func (c poisonConfig) topic() string { return c.prefix + events.TopicOrdersPoison }

func loadPoisonConfig(getenv func(string) string) (poisonConfig, error) {
	env := envconf.New(getenv)
	c := poisonConfig{
		brokers:    kafkaconf.Brokers(env.String("KAFKA_BROKERS", "localhost:9092")),
		prefix:     env.String("KAFKA_TOPIC_PREFIX", ""),
		maxReplays: env.Int("POISON_MAX_REPLAYS", 3, 1),
		journal:    poisonDefaultJournal(getenv),
	}
	if err := env.Err(); err != nil {
		return poisonConfig{}, fmt.Errorf("config: %w", err)
	}
	if len(c.brokers) == 0 {
		return poisonConfig{}, errors.New("config: KAFKA_BROKERS names no broker")
	}
	return c, nil
}

// poisonDefaultJournal follows the XDG base directory spec for state: $XDG_STATE_HOME, else
// ~/.local/state; without either, the current directory.
func poisonDefaultJournal(getenv func(string) string) string {
	if d := getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "orderctl", "replay.journal")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "state", "orderctl", "replay.journal")
	}
	return "orderctl-replay.journal"
}

// poisonCmd runs one `orderctl poison` command. Its fields beyond the writers are seams
// for tests.
type poisonCmd struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	// stdin answers replay's confirmation question when interactive is set.
	stdin       io.Reader
	interactive bool
	// progress allows a progress bar on stderr (stderr is a terminal).
	progress bool
	now      func() time.Time
	// afterAck, when set, runs after Kafka acknowledged a replayed message and before the
	// journal records it; an error stops the replay there, as a crash would.
	afterAck func(source string) error
	// wrapPartition, when set, wraps every partition consumer a read opens (poisonKafka.wrap).
	wrapPartition func(sarama.PartitionConsumer) sarama.PartitionConsumer
	// stallTimeout overrides poisonStallTimeout.
	stallTimeout time.Duration
}

// runPoison is `orderctl poison`; args follow the word "poison".
func runPoison(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := &poisonCmd{
		getenv: getenv, stdout: stdout, stderr: stderr,
		stdin: os.Stdin, interactive: poisonIsTerminal(os.Stdin), progress: poisonIsTerminal(stderr),
		now: time.Now,
	}
	return c.run(ctx, args)
}

// poisonIsTerminal reports whether v is a terminal (not a pipe, a file, /dev/null or a
// buffer).
func poisonIsTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (c *poisonCmd) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageError("poison: no command given (list, show, stats, replay; orderctl poison help)")
	}
	name, args := args[0], args[1:]
	switch name {
	case "list", "show", "stats", "replay":
	case "help", "-h", "--help":
		fmt.Fprint(c.stdout, poisonUsage)
		return nil
	default:
		return usageError(fmt.Sprintf("poison: unknown command %q (list, show, stats, replay)", name))
	}
	// The command line is checked whole before anything connects to Kafka.
	cfg, err := loadPoisonConfig(c.getenv)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("poison "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	asJSON := fs.Bool("json", false, "print JSON")
	var sel poisonSelection
	if name != "show" {
		sel.register(fs)
	}
	var ro poisonReplayOptions
	if name == "replay" {
		ro.register(fs, cfg)
	}
	positional, err := poisonParseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(c.stdout, poisonUsage)
		return nil
	}
	if err != nil {
		return usageError(fmt.Sprintf("poison %s: %v", name, err))
	}

	if name == "show" {
		if len(positional) != 1 {
			return usageError("poison show: want exactly one PARTITION:OFFSET")
		}
		pos, err := parsePoisonPos(positional[0])
		if err != nil {
			return usageError("poison show: " + err.Error())
		}
		return c.show(ctx, cfg, pos, *asJSON)
	}
	for _, a := range positional {
		pos, err := parsePoisonPos(a)
		if err != nil {
			return usageError(fmt.Sprintf("poison %s: %v", name, err))
		}
		sel.positions = append(sel.positions, pos)
	}
	switch name {
	case "list":
		if sel.all {
			return usageError("poison list: --all is a replay flag (list shows everything by default)")
		}
		return c.list(ctx, cfg, sel, *asJSON)
	case "stats":
		if sel.all {
			return usageError("poison stats: --all is a replay flag (stats counts everything by default)")
		}
		return c.stats(ctx, cfg, sel, *asJSON)
	default:
		if *asJSON {
			return usageError("poison replay: --json is not a replay flag (its audit lines are text)")
		}
		if err := sel.validateForReplay(); err != nil {
			return err
		}
		if err := ro.validate(); err != nil {
			return err
		}
		return c.replay(ctx, cfg, sel, ro)
	}
}

// poisonParseArgs parses flags before and after positional arguments, so that both
// `show 3:17 --json` and `show --json 3:17` work; everything after "--" is positional.
func poisonParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// poisonPos identifies a record of the poison topic.
type poisonPos struct {
	partition int32
	offset    int64
}

func (p poisonPos) String() string { return fmt.Sprintf("%d:%d", p.partition, p.offset) }

func parsePoisonPos(s string) (poisonPos, error) {
	ps, offs, ok := strings.Cut(s, ":")
	part, err1 := strconv.ParseInt(ps, 10, 32)
	off, err2 := strconv.ParseInt(offs, 10, 64)
	if !ok || err1 != nil || err2 != nil || part < 0 || off < 0 {
		return poisonPos{}, fmt.Errorf("%q is not PARTITION:OFFSET (two whole numbers, e.g. 3:17)", s)
	}
	return poisonPos{int32(part), off}, nil
}

// poisonSelection picks poisoned messages; every filter given must match.
type poisonSelection struct {
	reason    string
	orders    []string
	typ       string
	since     time.Duration
	limit     int
	all       bool
	positions []poisonPos
}

func (s *poisonSelection) register(fs *flag.FlagSet) {
	fs.StringVar(&s.reason, "reason", "", "reason_poisoned contains this (case-insensitive)")
	fs.Func("order", "the key or ce_subject is this order id (repeatable)", func(v string) error {
		if v == "" {
			return errors.New("empty order id")
		}
		s.orders = append(s.orders, v)
		return nil
	})
	fs.StringVar(&s.typ, "type", "", "ce_type is this")
	fs.Func("since", "poisoned at most this long ago", func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("%q is not a positive duration such as 90m or 48h", v)
		}
		s.since = d
		return nil
	})
	fs.Func("limit", "only the first N matches (0: all)", func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a whole number >= 0", v)
		}
		s.limit = n
		return nil
	})
	fs.BoolVar(&s.all, "all", false, "replay: select every message")
}

func (s poisonSelection) filtered() bool {
	return s.reason != "" || len(s.orders) > 0 || s.typ != "" || s.since > 0 || len(s.positions) > 0
}

// validateForReplay insists on an explicit selection: a bare `replay` would republish the
// whole poison topic.
func (s poisonSelection) validateForReplay() error {
	switch {
	case s.all && s.filtered():
		return usageError("poison replay: --all selects every message; it cannot be combined with filters")
	case !s.all && !s.filtered():
		return usageError("poison replay: give a selection (--reason, --order, --type, --since, PARTITION:OFFSET) or --all")
	}
	return nil
}

// apply returns the records s selects, in partition and offset order.
func (s poisonSelection) apply(recs []poisonRecord, now time.Time) []poisonRecord {
	var out []poisonRecord
	for _, r := range recs {
		if s.limit > 0 && len(out) == s.limit {
			break
		}
		if s.match(r, now) {
			out = append(out, r)
		}
	}
	return out
}

func (s poisonSelection) match(r poisonRecord, now time.Time) bool {
	if s.reason != "" && !strings.Contains(strings.ToLower(r.header(middleware.ReasonForPoisonedKey)), strings.ToLower(s.reason)) {
		return false
	}
	if s.typ != "" && r.header(events.MetaType) != s.typ {
		return false
	}
	if s.since > 0 && r.time.Before(now.Add(-s.since)) {
		return false
	}
	if len(s.orders) > 0 && !poisonMatchAny(s.orders, string(r.key), r.header(events.MetaSubject)) {
		return false
	}
	if len(s.positions) > 0 {
		found := false
		for _, p := range s.positions {
			found = found || p == r.pos
		}
		if !found {
			return false
		}
	}
	return true
}

func poisonMatchAny(ids []string, key, subject string) bool {
	for _, id := range ids {
		if id == key || id == subject {
			return true
		}
	}
	return false
}

// readAllPoison connects, reads the poison topic and disconnects.
func (c *poisonCmd) readAllPoison(ctx context.Context, cfg poisonConfig) ([]poisonRecord, error) {
	client, err := c.connect(cfg)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	return readPoison(ctx, client, cfg.topic())
}

// poisonSummary is a poisoned message as list --json prints it.
type poisonSummary struct {
	Position      string    `json:"position"`
	Partition     int32     `json:"partition"`
	Offset        int64     `json:"offset"`
	PoisonedAt    time.Time `json:"poisonedAt"`
	Topic         string    `json:"topic"` // the original topic
	Key           string    `json:"key"`
	OrderID       string    `json:"orderId"`
	Type          string    `json:"type"`
	EventID       string    `json:"eventId"`
	Reason        string    `json:"reason"`
	Handler       string    `json:"handler"`
	Attempts      int       `json:"attempts"`
	FirstFailedAt string    `json:"firstFailedAt,omitempty"`
	ReplayCount   int       `json:"replayCount"`
	ReplayedAt    string    `json:"replayedAt,omitempty"`
}

func summarizePoison(r poisonRecord) poisonSummary {
	attempts, _ := strconv.Atoi(r.header(worker.MetaAttempts))
	return poisonSummary{
		Position:      r.pos.String(),
		Partition:     r.pos.partition,
		Offset:        r.pos.offset,
		PoisonedAt:    r.time.UTC(),
		Topic:         r.header(middleware.PoisonedTopicKey),
		Key:           string(r.key),
		OrderID:       r.orderID(),
		Type:          r.header(events.MetaType),
		EventID:       r.header(events.MetaID),
		Reason:        r.header(middleware.ReasonForPoisonedKey),
		Handler:       r.header(middleware.PoisonedHandlerKey),
		Attempts:      attempts,
		FirstFailedAt: r.header(worker.MetaFirstFailedAt),
		ReplayCount:   r.replayCount(),
		ReplayedAt:    r.header(metaReplayedAt),
	}
}

func (c *poisonCmd) list(ctx context.Context, cfg poisonConfig, sel poisonSelection, asJSON bool) error {
	recs, err := c.readAllPoison(ctx, cfg)
	if err != nil {
		return err
	}
	total := len(recs)
	recs = sel.apply(recs, c.now())
	if asJSON {
		out := make([]poisonSummary, 0, len(recs))
		for _, r := range recs {
			out = append(out, summarizePoison(r))
		}
		return poisonWriteJSON(c.stdout, out)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POSITION\tPOISONED AT\tTOPIC\tORDER\tTYPE\tATTEMPTS\tREPLAYS\tREASON")
	for _, r := range recs {
		s := summarizePoison(r)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.Position, s.PoisonedAt.Format(time.RFC3339),
			poisonCell(s.Topic), poisonCell(s.OrderID), poisonCell(s.Type), s.Attempts, s.ReplayCount, poisonCell(s.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "%d of %d poisoned messages in %s\n", len(recs), total, cfg.topic())
	return nil
}

// poisonShown is a message as show --json prints it.
type poisonShown struct {
	Topic      string          `json:"topic"` // the poison topic
	Position   string          `json:"position"`
	Partition  int32           `json:"partition"`
	Offset     int64           `json:"offset"`
	PoisonedAt time.Time       `json:"poisonedAt"`
	Key        *string         `json:"key"` // null for a record without a key
	Headers    []poisonHeader  `json:"headers"`
	Payload    json.RawMessage `json:"payload"` // the JSON itself, or a string when it is not JSON
}

func (c *poisonCmd) show(ctx context.Context, cfg poisonConfig, pos poisonPos, asJSON bool) error {
	client, err := c.connect(cfg)
	if err != nil {
		return err
	}
	defer client.Close()
	r, err := readPoisonAt(ctx, client, cfg.topic(), pos)
	if err != nil {
		return err
	}
	headers := append([]poisonHeader(nil), r.headers...)
	sort.SliceStable(headers, func(i, j int) bool { return headers[i].Key < headers[j].Key })
	if asJSON {
		s := poisonShown{Topic: cfg.topic(), Position: pos.String(), Partition: pos.partition, Offset: pos.offset,
			PoisonedAt: r.time.UTC(), Headers: headers, Payload: r.value}
		if r.key != nil {
			k := string(r.key)
			s.Key = &k
		}
		if !json.Valid(r.value) {
			s.Payload, _ = json.Marshal(string(r.value))
		}
		return poisonWriteJSON(c.stdout, s)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "message\t%s of %s\n", pos, cfg.topic())
	fmt.Fprintf(tw, "poisoned at\t%s\n", r.time.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "original topic\t%s\n", poisonPrintable(r.header(middleware.PoisonedTopicKey)))
	if r.key == nil {
		fmt.Fprintf(tw, "key\t(none)\n")
	} else {
		fmt.Fprintf(tw, "key\t%s\n", poisonPrintable(string(r.key)))
	}
	fmt.Fprintf(tw, "reason\t%s\n", poisonPrintable(r.header(middleware.ReasonForPoisonedKey)))
	fmt.Fprintf(tw, "\nheaders (%d):\n", len(headers))
	for _, h := range headers {
		fmt.Fprintf(tw, "  %s\t%s\n", poisonPrintable(h.Key), poisonPrintable(h.Value))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "\npayload (%d bytes):\n%s\n", len(r.value), poisonPayload(r.value))
	return nil
}

// poisonPayload indents JSON; anything else is shown as text, quoted when it is not
// printable.
func poisonPayload(v []byte) string {
	if len(v) == 0 {
		return "(empty)"
	}
	var buf bytes.Buffer
	if json.Indent(&buf, v, "", "  ") == nil {
		return buf.String()
	}
	return "(not JSON) " + poisonPrintable(string(v))
}

// poisonPrintable returns s unchanged when every character is printable, else quoted, so that
// a header of a foreign producer cannot drive the operator's terminal.
func poisonPrintable(s string) string {
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// poisonCell is poisonPrintable for a table cell: whitespace runs (newlines, tabs) become one space.
func poisonCell(s string) string {
	if s == "" {
		return "-"
	}
	return poisonPrintable(strings.Join(strings.Fields(s), " "))
}

// poisonCount is one row of stats.
type poisonCount struct {
	Value string `json:"value"`
	Count int    `json:"count"`
}

// poisonStatistics is what stats --json prints.
type poisonStatistics struct {
	Topic    string        `json:"topic"`
	Total    int           `json:"total"`
	ByReason []poisonCount `json:"byReason"`
	ByType   []poisonCount `json:"byType"`
	ByTopic  []poisonCount `json:"byTopic"`
}

func (c *poisonCmd) stats(ctx context.Context, cfg poisonConfig, sel poisonSelection, asJSON bool) error {
	recs, err := c.readAllPoison(ctx, cfg)
	if err != nil {
		return err
	}
	recs = sel.apply(recs, c.now())
	st := poisonStatistics{
		Topic:    cfg.topic(),
		Total:    len(recs),
		ByReason: poisonCountBy(recs, middleware.ReasonForPoisonedKey),
		ByType:   poisonCountBy(recs, events.MetaType),
		ByTopic:  poisonCountBy(recs, middleware.PoisonedTopicKey),
	}
	if asJSON {
		return poisonWriteJSON(c.stdout, st)
	}
	fmt.Fprintf(c.stdout, "%d poisoned messages in %s\n", st.Total, st.Topic)
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	for _, g := range []struct {
		title  string
		counts []poisonCount
	}{{"REASON", st.ByReason}, {"TYPE", st.ByType}, {"ORIGINAL TOPIC", st.ByTopic}} {
		fmt.Fprintf(tw, "\nCOUNT\t%s\n", g.title)
		for _, n := range g.counts {
			fmt.Fprintf(tw, "%d\t%s\n", n.Count, poisonCell(n.Value))
		}
	}
	return tw.Flush()
}

// poisonCountBy counts records by a header's value, most frequent first.
func poisonCountBy(recs []poisonRecord, key string) []poisonCount {
	n := map[string]int{}
	for _, r := range recs {
		n[r.header(key)]++
	}
	out := make([]poisonCount, 0, len(n))
	for v, k := range n {
		out = append(out, poisonCount{v, k})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Value < out[j].Value
	})
	return out
}

func poisonWriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
