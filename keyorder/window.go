package keyorder

import "github.com/IBM/sarama"

// record is one Kafka record of a partition from the moment it is admitted until its
// offset is committed.
type record struct {
	// msg is the record as read; it is dropped once the handler finished, so that
	// finished records waiting behind an older one hold no payload.
	msg    *sarama.ConsumerMessage
	offset int64
	// key orders the record: records with the same key are handled one after another.
	// Records without a key share the empty key, so they too go one at a time.
	key string
	// size is what the record counts against Config.MaxBufferedBytes.
	size     int64
	started  bool // handed to the handler (its bytes are given back when it ends)
	finished bool
}

// window is one partition's admitted records, from the oldest not yet committed to
// the newest received, in offset order. It decides which record may go to the handler
// (the oldest unfinished one of its key) and how far the partition's offset may be
// committed (up to the first unfinished record). It is not safe for concurrent use:
// one goroutine per partition owns it.
type window struct {
	recs []*record            // offset order; recs[0] is the oldest uncommitted
	keys map[string][]*record // per key, its unfinished records in offset order; [0] is with the handler
	// finished counts the finished records in recs: they wait for an older one.
	finished int
}

func newWindow() *window { return &window{keys: make(map[string][]*record)} }

// len is the number of admitted records not yet committed.
func (w *window) len() int { return len(w.recs) }

// add admits r, the newest record of the partition, and reports whether it may go to
// the handler now: no earlier record of its key is unfinished.
func (w *window) add(r *record) bool {
	w.recs = append(w.recs, r)
	q := append(w.keys[r.key], r)
	w.keys[r.key] = q
	return len(q) == 1
}

// finish marks r, which the handler had, finished. It returns the next record of r's
// key for the handler (nil if none waits) and the offset to commit, the one after the
// newest record of the finished prefix, or -1 when the prefix did not move.
func (w *window) finish(r *record) (next *record, commit int64) {
	r.finished = true
	r.msg = nil
	q := w.keys[r.key]
	if len(q) == 0 || q[0] != r {
		panic("keyorder: finished a record that was not with the handler")
	}
	if q = q[1:]; len(q) == 0 {
		delete(w.keys, r.key)
	} else {
		w.keys[r.key] = q
		next = q[0]
	}
	w.finished++
	commit = -1
	n := 0
	for n < len(w.recs) && w.recs[n].finished {
		commit = w.recs[n].offset + 1
		w.recs[n] = nil // let the record go
		n++
	}
	w.recs = w.recs[n:]
	w.finished -= n
	return next, commit
}

// oldest is the oldest unfinished record, the one that holds the commit back; nil when
// the window is empty.
func (w *window) oldest() *record {
	if len(w.recs) == 0 {
		return nil
	}
	return w.recs[0]
}
