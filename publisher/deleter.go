package publisher

// Deleting confirmed entries off the sender goroutine, retried until they are gone.

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/group"

	"github.com/rabbitkit/rabbitkit/journal"
)

// errTimeoutSpent: the retries after the sender stopped used up deleteTimeout.
var errTimeoutSpent = errors.New("publisher: delete retries after Close used up their time")

const (
	deleteBatch   = 256             // confirmed IDs handed to the deleter at once
	deleteTimeout = 5 * time.Second // bound of one delete attempt, and of the retries after the sender stopped
	// maxPendingDeletes: beyond this many confirmed IDs not yet handed over, the sender hands
	// them over even when the deleter is busy.
	maxPendingDeletes = 1 << 16
	// deleteRetryMin and deleteRetryMax bound the backoff between attempts of a failed delete.
	deleteRetryMin = 50 * time.Millisecond
	deleteRetryMax = 5 * time.Second
)

// flushDeletes registers the confirmed IDs in the deleter's pending-delete set (from then on the
// sender's reads skip them: skipPending) and hands them to the deleter. With force it hands
// them over even when the deleter is busy; every pass that starts over calls it so, because it
// re-reads entries whose deletes may not have committed yet.
//
// Deletes are handed over even after a hard stop (the deleter bounds its retries then): a
// confirmed entry left in the outbox would be sent again by the next Publisher.
func (s *sender) flushDeletes(force bool) {
	if len(s.deletes) == 0 {
		return
	}
	s.del.add(s.deletes) // registered before any read can see them again
	if !force && len(s.deletes) < maxPendingDeletes {
		select {
		case s.del.in <- s.deletes:
		default:
			return // the deleter is busy with an fsync: keep collecting, never stall the pipeline
		}
	} else {
		s.del.in <- s.deletes
	}
	s.deletes = make([]uint64, 0, deleteBatch)
}

// deleter commits confirmed deletes off the sender goroutine, so the pipeline never waits for
// fsync or for the database, and retries a failed delete with backoff until it commits. The IDs
// not yet deleted are its pending-delete set, which the sender holds against what it reads.
type deleter struct {
	j  Outbox
	in chan []uint64
	p  *Publisher

	mu      sync.Mutex
	pending map[uint64]struct{} // confirmed IDs whose delete has not committed
}

func newDeleter(j Outbox, p *Publisher) *deleter {
	return &deleter{j: j, in: make(chan []uint64, 16), p: p, pending: make(map[uint64]struct{})}
}

// add registers ids as confirmed, not yet deleted.
func (d *deleter) add(ids []uint64) {
	d.mu.Lock()
	for _, id := range ids {
		d.pending[id] = struct{}{}
	}
	d.mu.Unlock()
}

// drop forgets ids once their delete committed.
func (d *deleter) drop(ids []uint64) {
	d.mu.Lock()
	for _, id := range ids {
		delete(d.pending, id)
	}
	d.mu.Unlock()
}

// skipPending removes from page the entries whose delete is pending: they were confirmed, and
// sending them again as if they were new would make duplicates for nothing. page is filtered in
// place.
func (d *deleter) skipPending(page []*journal.Entry) []*journal.Entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return page
	}
	out := page[:0]
	for _, e := range page {
		if _, ok := d.pending[e.ID]; !ok {
			out = append(out, e)
		}
	}
	clear(page[len(out):])
	return out
}

// run is the deleter goroutine; it returns once in is closed and everything is deleted, or
// deleteTimeout after in was closed.
func (d *deleter) run() {
	var batch []uint64 // to delete: registered in pending, not yet committed
	var retry *time.Timer
	var retryC <-chan time.Time
	wait := deleteRetryMin
	var closedAt time.Time                                       // zero while the sender runs
	take := func(ids []uint64) { batch = append(batch, ids...) } // the sender registered them
	for {
		if closedAt.IsZero() {
			select {
			case ids, ok := <-d.in:
				if !ok {
					closedAt = time.Now()
					break
				}
				take(ids)
				if retryC != nil {
					continue // backing off: keep collecting until the timer fires
				}
			case <-retryC:
				retryC = nil
			}
		} else if retryC != nil {
			<-retryC
			retryC = nil
		}
		// Merge everything already waiting into one commit.
		if closedAt.IsZero() && !group.Gather(d.in, func(ids []uint64) bool { take(ids); return true }) {
			closedAt = time.Now()
		}
		if len(batch) == 0 {
			if !closedAt.IsZero() {
				return
			}
			continue
		}
		timeout := deleteTimeout
		if !closedAt.IsZero() {
			timeout = min(timeout, deleteTimeout-time.Since(closedAt))
		}
		err := errTimeoutSpent
		if timeout > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err = d.j.Delete(ctx, batch...)
			cancel()
		}
		if err == nil {
			d.drop(batch)
			batch = batch[:0]
			wait = deleteRetryMin
			if !closedAt.IsZero() {
				return
			}
			continue
		}
		if !closedAt.IsZero() && time.Since(closedAt)+wait >= deleteTimeout {
			d.p.log.Error("publisher: deleting confirmed entries failed; the next run sends them again (consumers drop them as duplicates)",
				"count", len(batch), "err", err)
			return
		}
		d.p.log.Warn("publisher: deleting confirmed entries failed; retrying", "count", len(batch), "in", wait, "err", err)
		if retry == nil {
			retry = time.NewTimer(wait)
		} else {
			retry.Reset(wait)
		}
		retryC = retry.C
		wait = min(2*wait, deleteRetryMax)
	}
}
