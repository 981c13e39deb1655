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

// take reserves n bytes while any of the budget is left and returns nil; the last record
// admitted may overshoot it, so a large record is never starved by small ones (the
// overshoot is at most one record per partition). When nothing is left it returns a
// channel that is closed the next time bytes are given back (taken under the same lock,
// so no give between the refusal and the wait is missed).
func (b *budget) take(n int64) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used >= b.limit {
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
