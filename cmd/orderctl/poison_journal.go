package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// replayJournalEntry is one line of the replay journal (JSON lines). For each message replay
// writes "pending" before it publishes and "replayed" once Kafka has acknowledged the
// copy, each synced to disk; "skipped" records a message it would not replay. A message
// (source plus poisonedAt) with a "replayed" line is never replayed again with this
// journal. One with only "pending" was being published when a run stopped: the next run
// looks for the copy on the target above the pending line's marks and publishes it only
// if it is not there.
type replayJournalEntry struct {
	// Event is pending, replayed or skipped.
	Event string `json:"event"`
	// Source is the poison record, "topic/partition:offset".
	Source string `json:"source"`
	// PoisonedAt is the poison record's timestamp. With Source it identifies the record
	// even if the poison topic is deleted and its offsets start again.
	PoisonedAt time.Time `json:"poisonedAt"`
	// Target is the topic the message is replayed to.
	Target  string `json:"target,omitempty"`
	Key     string `json:"key,omitempty"`
	EventID string `json:"eventId,omitempty"`
	// ReplayCount is the replay_count the copy carries.
	ReplayCount int `json:"replayCount,omitempty"`
	// Marks (pending) are the target's high-water marks before the run published.
	Marks map[int32]int64 `json:"marks,omitempty"`
	// Landed (replayed) is where the copy is on the target, "partition:offset".
	Landed string `json:"landed,omitempty"`
	// Reason says why a message was skipped, or how a replay was confirmed.
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// how describes an earlier replay for an audit line.
func (e *replayJournalEntry) how() string {
	if e.Event == "pending" {
		return fmt.Sprintf("an interrupted replay reached %s at %s", e.Target, e.Landed)
	}
	return fmt.Sprintf("to %s at %s on %s (journal)", e.Target, e.Landed, e.At.Format(time.RFC3339))
}

// replayJournal is the replay journal, locked for one replay at a time.
type replayJournal struct {
	path    string
	f       *os.File // nil when read only (dry run)
	replays map[string]*replayJournalEntry
	pending map[string]*replayJournalEntry
}

func replayJournalKey(source string, poisonedAt time.Time) string {
	return source + "@" + strconv.FormatInt(poisonedAt.UnixMilli(), 10)
}

// syncDir makes the entries of directory dir durable (syncDirectory); a var so that a test
// sees the calls.
var syncDir = syncDirectory

// missingDirs returns dir and those of its ancestors that do not exist, innermost first.
func missingDirs(dir string) []string {
	var out []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			return out
		}
		out = append(out, d)
		if filepath.Dir(d) == d {
			return out
		}
	}
}

// parents returns the parent directory of each of dirs: where their entries are.
func parents(dirs []string) []string {
	out := make([]string, 0, len(dirs))
	for _, d := range dirs {
		out = append(out, filepath.Dir(d))
	}
	return out
}

// openReplayJournal reads the journal at path; with write it creates it (and its directory),
// syncs the directories that hold the new names, locks it against a concurrent replay and
// keeps it open for record. A torn last line,
// from a run killed while writing it, is dropped: its message is then decided again from
// the line before (or as new), which is safe. Any other unreadable line is an error.
func openReplayJournal(path string, write bool) (*replayJournal, error) {
	j := &replayJournal{path: path, replays: map[string]*replayJournalEntry{}, pending: map[string]*replayJournalEntry{}}
	var data []byte
	if write {
		dir := filepath.Dir(path)
		made := missingDirs(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		if err := lockReplayJournal(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("journal %s: %w", path, err)
		}
		j.f = f
		// The file may be new: make its name durable, and the names of the directories
		// made for it, before anything is published on the journal's word. Syncing an
		// existing journal's directory again costs one fsync per run.
		for _, d := range append([]string{dir}, parents(made)...) {
			if err := syncDir(d); err != nil {
				j.close()
				return nil, fmt.Errorf("journal %s: sync directory %s: %w", path, d, err)
			}
		}
		if data, err = io.ReadAll(f); err != nil {
			j.close()
			return nil, fmt.Errorf("read journal %s: %w", path, err)
		}
	} else {
		var err error
		data, err = os.ReadFile(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read journal %s: %w", path, err)
		}
	}
	whole := len(data)
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		whole = i + 1 // a torn last line
		if write {
			if err := j.f.Truncate(int64(whole)); err != nil {
				j.close()
				return nil, fmt.Errorf("journal %s: drop torn last line: %w", path, err)
			}
		}
	}
	for n, line := range bytes.Split(data[:whole], []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e replayJournalEntry
		if err := json.Unmarshal(line, &e); err != nil || e.Source == "" {
			j.close()
			return nil, fmt.Errorf("journal %s line %d is not a journal entry (edited, or not a replay journal): %.80s", path, n+1, line)
		}
		k := replayJournalKey(e.Source, e.PoisonedAt)
		switch e.Event {
		case "pending":
			j.pending[k] = &e
		case "replayed":
			j.replays[k] = &e
		}
	}
	return j, nil
}

// state returns the entry recording that the message was replayed, else the entry of a
// publish that an interrupted run began.
func (j *replayJournal) state(source string, poisonedAt time.Time) (replayed, pending *replayJournalEntry) {
	k := replayJournalKey(source, poisonedAt)
	if e := j.replays[k]; e != nil {
		return e, nil
	}
	return nil, j.pending[k]
}

// record appends e and syncs it to disk.
func (j *replayJournal) record(e replayJournalEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write journal %s: %w", j.path, err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("sync journal %s: %w", j.path, err)
	}
	return nil
}

func (j *replayJournal) close() error {
	if j.f == nil {
		return nil
	}
	return j.f.Close()
}
