package keyorder

import "sync"

// budget bounds the bytes of the records a Subscriber holds (admitted and not yet
// finished) across all its partitions. A partition that cannot take its next record's
// bytes waits for some to be given back while it goes on finishing its own records: it never blocks
// while holding what it could give back.
type budget struct {
	mu    sync.Mutex
	limit int64
	used  int64
	free  chan struct{} // closed, and replaced, whenever bytes are given back
}

func newBudget(limit int64) *budget { return &budget{limit: limit, free: make(chan struct{})} }

// take reserves n bytes if they fit and returns nil. If they do not, it returns a
// channel that is closed the next time bytes are given back (taken under the same lock,
// so no give between the refusal and the wait is missed). A record larger than the
// whole budget is admitted when nothing else is held, so that it cannot wait forever.
func (b *budget) take(n int64) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used > 0 && b.used+n > b.limit {
		return b.free
	}
	b.used += n
	return nil
}

// give returns n bytes and wakes the partitions waiting for them.
func (b *budget) give(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	close(b.free)
	b.free = make(chan struct{})
}

// inUse is the number of bytes held.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
