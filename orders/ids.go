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
// that a create knows its order's id before it writes anything, and can send the order,
// its event and its stored response in one round trip.
//
// Ids are drawn in blocks sized to the rate: one at a time while orders are rare, so that
// ids stay consecutive (the first order is 1, the next 2), doubling up to maxIDBlock while
// blocks run out within idMaxAge. An id left unused for idMaxAge is dropped, leaving a gap
// as a rolled-back insert does. That bounds how far apart creation order and id order can
// be when several api instances draw blocks (GET /orders lists newest first by id): ids
// from different instances are in creation order to within idMaxAge.
type idSource struct {
	mu    sync.Mutex
	ids   []int64   // drawn, not handed out, ascending
	drawn time.Time // when the oldest of ids was drawn
	block int       // size of the next draw
}

const (
	maxIDBlock = 64
	idMaxAge   = time.Second
)

// take returns an id for a new order, drawing from the sequence when none is at hand.
func (s *idSource) take(ctx context.Context, pc *pgx.Conn) (int64, error) {
	s.mu.Lock()
	if len(s.ids) > 0 && time.Since(s.drawn) >= idMaxAge {
		s.ids = nil
		s.block = max(1, s.block/2)
	}
	if len(s.ids) > 0 {
		id := s.ids[0]
		s.ids = s.ids[1:]
		s.mu.Unlock()
		return id, nil
	}
	n := max(1, s.block)
	if time.Since(s.drawn) < idMaxAge { // the last block ran out quickly
		s.block = min(2*n, maxIDBlock)
	}
	s.mu.Unlock()

	drawn := time.Now()
	rows, _ := pc.Query(ctx, `SELECT nextval(pg_get_serial_sequence('orders', 'id')) FROM generate_series(1, $1)`, n)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("draw order ids: %w", err)
	}
	slices.Sort(ids)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ids) == 0 {
		s.drawn = drawn
	}
	s.keep(ids[1:]...)
	return ids[0], nil
}

// giveBack returns an id that was taken but not used (the request was a replay).
func (s *idSource) giveBack(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ids) == 0 {
		s.drawn = time.Now()
	}
	s.keep(id)
}

// keep adds ids to those at hand; s.mu is held.
func (s *idSource) keep(ids ...int64) {
	s.ids = append(s.ids, ids...)
	slices.Sort(s.ids)
}
