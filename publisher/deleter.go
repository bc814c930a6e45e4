package publisher

// Deleting confirmed entries off the sender goroutine.

import (
	"context"
	"time"
)

const (
	deleteBatch   = 256             // confirmed IDs handed to the deleter at once
	deleteTimeout = 5 * time.Second // bound of one journal delete (also after a hard stop)
	// maxPendingDeletes: beyond this many confirmed IDs waiting for the deleter, the sender waits.
	maxPendingDeletes = 1 << 16
)

// flushDeletes hands the confirmed IDs to the deleter; with wait it also waits until every delete
// handed over so far is committed.
//
// Deletes are handed over even after a hard stop (the deleter bounds each one): a confirmed entry
// left in the journal would be sent again by the next Publisher.
func (s *sender) flushDeletes(ctx context.Context, wait bool) {
	if len(s.deletes) > 0 {
		req := delReq{ids: s.deletes}
		if wait || len(s.deletes) >= maxPendingDeletes {
			s.del.in <- req
		} else {
			select {
			case s.del.in <- req:
			default:
				return // the deleter is busy with an fsync: keep collecting, never stall the pipeline
			}
		}
		s.deletes = make([]uint64, 0, deleteBatch)
	}
	if !wait || ctx.Err() != nil {
		return
	}
	done := make(chan struct{})
	s.del.in <- delReq{done: done}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// deleter commits confirmed deletes off the sender goroutine, so the pipeline never waits for fsync.
type deleter struct {
	j  Outbox
	in chan delReq
	p  *Publisher
}

type delReq struct {
	ids  []uint64
	done chan struct{}
}

func (d *deleter) run() {
	var ids []uint64
	var dones []chan struct{}
	for r := range d.in {
		// Merge everything already waiting into one journal commit.
		ids, dones = append(ids[:0], r.ids...), dones[:0]
		if r.done != nil {
			dones = append(dones, r.done)
		}
	more:
		for {
			select {
			case r, ok := <-d.in:
				if !ok {
					break more
				}
				ids = append(ids, r.ids...)
				if r.done != nil {
					dones = append(dones, r.done)
				}
			default:
				break more
			}
		}
		if len(ids) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
			err := d.j.Delete(ctx, ids...)
			cancel()
			if err != nil {
				d.p.log.Error("publisher: deleting confirmed entries failed; they will be sent again", "count", len(ids), "err", err)
			}
		}
		for _, c := range dones {
			close(c)
		}
	}
}
