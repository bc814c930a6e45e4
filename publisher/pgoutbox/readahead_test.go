package pgoutbox_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// The relay's read-ahead (view.Read): after a full page the next is read in the background and
// handed to the next Read with the same arguments; a Read with other arguments (a pass that
// restarts) gets a fresh read and skips nothing; an empty read-ahead is never handed out, so a
// commit made after it is seen; close waits for the reader (goleak in TestMain).
func TestReadAhead(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 4)
	o := open(t, e.pool, pgoutbox.Options{})
	next := 1
	publish := func(n int) {
		t.Helper()
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			if _, err := o.PublishTx(ctx, tx, e.msg("s", fmt.Sprint(next))); err != nil {
				t.Fatal(err)
			}
			next++
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	read, settle, ahead, closeView := pgoutbox.ViewForTest(o)
	defer closeView()
	page := func(after uint64, max int, want ...int64) uint64 {
		t.Helper()
		p, err := read(ctx, after, max)
		if err != nil {
			t.Fatal(err)
		}
		var seqs []int64
		for _, en := range p {
			seqs = append(seqs, en.Seq)
		}
		if !slices.Equal(seqs, want) {
			t.Fatalf("Read(%d, %d): seqs %v, want %v", after, max, seqs, want)
		}
		if len(p) == 0 {
			return after
		}
		return lastID(p)
	}

	publish(10)
	a := page(0, 4, 1, 2, 3, 4) // full: the read-ahead of 5..8 starts
	if !ahead() {
		t.Fatal("a full page started no read-ahead")
	}
	b := page(a, 4, 5, 6, 7, 8) // handed over; the read-ahead of 9, 10 starts
	settle()
	b2 := page(a, 4, 5, 6, 7, 8) // a restart from a: the read-ahead (9, 10) is dropped, 5..8 read again by rid
	if b2 != b {
		t.Fatalf("re-read 5..8 ended at rid %d, first read at %d", b2, b)
	}
	c := page(b, 4, 9, 10) // not full: no read-ahead after it
	if ahead() {
		t.Fatal("a short page (the backlog is read) started a read-ahead")
	}

	publish(2)
	d := page(c, 2, 11, 12) // full: the read-ahead finds nothing
	settle()
	publish(1)
	page(d, 2, 13) // the empty read-ahead is not handed out: 13, committed after it, is read
}

func lastID(p []*journal.Entry) uint64 { return p[len(p)-1].ID }
