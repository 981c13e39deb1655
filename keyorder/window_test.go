package keyorder

import (
	"testing"

	"github.com/IBM/sarama"
)

func rec(offset int64, key string) *record {
	return &record{msg: &sarama.ConsumerMessage{Offset: offset, Key: []byte(key)}, offset: offset, key: key}
}

func TestWindow(t *testing.T) {
	w := newWindow()
	a0, b1, a2, c3, none4, none5 := rec(10, "a"), rec(11, "b"), rec(12, "a"), rec(14, "c"), rec(15, ""), rec(16, "")
	for _, c := range []struct {
		r    *record
		want bool
	}{{a0, true}, {b1, true}, {a2, false}, {c3, true}, {none4, true}, {none5, false}} {
		if got := w.add(c.r); got != c.want {
			t.Errorf("add(offset %d, key %q) = %v, want %v", c.r.offset, c.r.key, got, c.want)
		}
	}
	steps := []struct {
		name       string
		r          *record
		wantNext   *record
		wantCommit int64
		wantLen    int
	}{
		{"a newer key finishing first commits nothing", c3, nil, -1, 6},
		{"the oldest finishing commits up to the next unfinished, and frees its key", a0, a2, 11, 5},
		{"a keyless record frees the next keyless one", none4, none5, -1, 5},
		{"finishing the oldest commits past every finished one (offset gaps kept)", b1, nil, 12, 4},
		{"", a2, nil, 16, 1},
		{"", none5, nil, 17, 0},
	}
	for _, s := range steps {
		next, commit := w.finish(s.r)
		if next != s.wantNext || commit != s.wantCommit || w.len() != s.wantLen {
			t.Errorf("%s: finish(offset %d) = next %v, commit %d, len %d; want next %v, commit %d, len %d",
				s.name, s.r.offset, next, commit, w.len(), s.wantNext, s.wantCommit, s.wantLen)
		}
	}
	if len(w.keys) != 0 || w.finished != 0 {
		t.Errorf("after all finished: keys %v, finished %d; want none", w.keys, w.finished)
	}
}

func TestBudget(t *testing.T) {
	b := newBudget(100)
	if b.take(60) != nil || b.take(50) != nil {
		t.Fatal("take refused while some budget was left (the last one may overshoot)")
	}
	wait := b.take(1)
	if wait == nil {
		t.Fatal("take admitted with the budget spent")
	}
	select {
	case <-wait:
		t.Fatal("woken before anything was given back")
	default:
	}
	b.give(60)
	<-wait // closed by give
	if b.take(200) != nil {
		t.Error("a record larger than what is left refused while some is left: small ones could starve it")
	}
	if got := b.inUse(); got != 250 {
		t.Errorf("inUse = %d, want 250", got)
	}
}
