package orders

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// idSource hands out order ids drawn ahead of use from the orders' identity sequence, so
// that a create knows its order's id before it writes anything and, with an id at hand,
// sends the order, its event and its stored response in one round trip.
//
// Ids are drawn in blocks sized to the rate: one at a time while orders are rare (each
// create then draws its own id first, two round trips, and ids stay consecutive: the
// first order is 1, the next 2), doubling up to maxIDBlock while blocks run out within
// idMaxAge. One request draws at a time; others that find no id wait for its block. An id
// not used within idMaxAge of its draw is dropped, leaving a gap as a rolled-back insert
// does, and the blocks start again from one. So an order's id is never older than
// idMaxAge when the order is created: ids follow creation order to within that age, also
// across api instances, which bounds how far GET /orders (newest first by id) can be from
// creation order.
type idSource struct {
	mu       sync.Mutex
	ids      []int64       // drawn, not handed out, ascending
	drawn    time.Time     // when the oldest of ids was drawn
	lastDraw time.Time     // when the last block was drawn
	block    int           // size of the next draw
	drawing  chan struct{} // closed when the draw under way ends; nil when none is
}

const (
	maxIDBlock = 64
	idMaxAge   = time.Second
)

// take returns an id for a new order and when it was drawn, drawing a block from the
// sequence when none is at hand.
func (s *idSource) take(ctx context.Context, pc *pgx.Conn) (int64, time.Time, error) {
	s.mu.Lock()
	for {
		if len(s.ids) > 0 && time.Since(s.drawn) >= idMaxAge {
			s.ids, s.block = nil, 1
		}
		if len(s.ids) > 0 {
			id := s.ids[0]
			s.ids = s.ids[1:]
			drawn := s.drawn
			s.mu.Unlock()
			return id, drawn, nil
		}
		if s.drawing == nil {
			break
		}
		wait := s.drawing
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		}
		s.mu.Lock()
	}
	n := max(1, s.block)
	if time.Since(s.lastDraw) < idMaxAge { // the last block ran out quickly
		s.block = min(2*n, maxIDBlock)
	}
	done := make(chan struct{})
	s.drawing = done
	s.mu.Unlock()

	drawn := time.Now()
	rows, _ := pc.Query(ctx, `SELECT nextval(pg_get_serial_sequence('orders', 'id')) FROM generate_series(1, $1)`, n)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])

	s.mu.Lock()
	defer s.mu.Unlock()
	s.drawing = nil
	close(done)
	s.lastDraw = drawn
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("draw order ids: %w", err)
	}
	slices.Sort(ids)
	s.keep(drawn, ids[1:]...)
	return ids[0], drawn, nil
}

// giveBack returns an id that was taken but not used (the request was a replay), with
// the time it was drawn; an id past idMaxAge is dropped instead.
func (s *idSource) giveBack(id int64, drawn time.Time) {
	if time.Since(drawn) >= idMaxAge {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keep(drawn, id)
}

// keep adds ids drawn at drawn to those at hand (a replay may give one back while a
// block is being drawn); s.mu is held.
func (s *idSource) keep(drawn time.Time, ids ...int64) {
	if len(ids) == 0 {
		return
	}
	if len(s.ids) == 0 || drawn.Before(s.drawn) {
		s.drawn = drawn
	}
	s.ids = append(s.ids, ids...)
	slices.Sort(s.ids)
}
