package publisher

import (
	"container/heap"
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Receipt is the future of one published message. It goes through two stages: journaled (accepted:
// durable locally; Journaled, WaitJournaled), then a final outcome (Done, Err, Wait): confirmed by
// the broker (Err returns nil) or parked (Err returns a *ParkedError). A lost connection is never an
// outcome: the message stays journaled and is resent.
//
// Err is like context.Context's: nil while the outcome is pending, and nil once confirmed. Use Done
// or Wait to tell the two apart.
//
// A Receipt costs nothing for the Publisher until Done, Err or Wait is called; then it is remembered
// until its outcome is known.
type Receipt struct {
	p         *Publisher
	job       *job
	entry     *journal.Entry // until journaled
	journaled chan struct{}  // closed once journaling succeeded or failed
	jerr      error          // journaling failure; written before journaled is closed
	id        uint64
	stamp     protocol.Stamp

	mu   sync.Mutex // guards done creation and registration
	done chan struct{}
	err  error // final outcome; written before done is closed
}

// Journaled is closed once the message is durably journaled, or journaling failed (then Err returns
// why and Done is closed too).
func (r *Receipt) Journaled() <-chan struct{} { return r.journaled }

// WaitJournaled waits until the message is journaled (nil) or journaling failed (its error), or ctx
// ends. A ctx error says nothing about the message: watch Journaled.
func (r *Receipt) WaitJournaled(ctx context.Context) error {
	select {
	case <-r.journaled:
		return r.jerr
	case <-ctx.Done():
		return fmt.Errorf("publisher: wait for journal: %w", ctx.Err())
	}
}

// Done is closed once the outcome is final: confirmed, parked, failed to journal, or left unconfirmed
// in the journal by Close (ErrUnconfirmed).
func (r *Receipt) Done() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		r.done = make(chan struct{})
		select {
		case <-r.journaled:
			r.arm()
		default: // the appender arms it once journaled
		}
	}
	return r.done
}

// arm registers r with the frontier (or fails it). r.mu must be held and r journaled.
func (r *Receipt) arm() {
	if r.jerr != nil {
		r.err = r.jerr
		close(r.done)
		return
	}
	r.p.fr.wait(r)
}

// Err returns the final error, or nil while the outcome is pending and once the message is
// confirmed (select on Done to tell them apart). The errors: a *ParkedError (errors.Is ErrParked,
// and ErrUnroutable for returns) when parked; the journaling error when the message was not
// accepted; ErrUnconfirmed when Close left it in the journal. It never waits.
func (r *Receipt) Err() error {
	select {
	case <-r.journaled:
	default:
		return nil // not journaled yet: pending
	}
	if r.jerr != nil {
		return r.jerr
	}
	select {
	case <-r.Done():
		return r.err
	default:
		return nil
	}
}

// Wait waits for the final outcome and returns Err's value then, or ctx's error (wrapped) if ctx ends
// first. A ctx error says nothing about the message.
func (r *Receipt) Wait(ctx context.Context) error {
	select {
	case <-r.Done():
		return r.err
	case <-ctx.Done():
		return fmt.Errorf("publisher: wait for confirm: %w", ctx.Err())
	}
}

// Stamp is the wire identity of the message (zero until journaled).
func (r *Receipt) Stamp() protocol.Stamp {
	select {
	case <-r.journaled:
		return r.stamp
	default:
		return protocol.Stamp{}
	}
}

// setJournaled records the journaling result and arms Done if it was requested. Appender only.
func (r *Receipt) setJournaled(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		e := r.entry
		r.id = e.ID
		r.stamp = protocol.Stamp{Source: r.p.cfg.Source, Epoch: r.p.j.Epoch(), Stream: e.Stream, Seq: e.Seq}
	}
	r.entry = nil
	r.jerr = err
	close(r.journaled)
	if r.done != nil {
		r.arm()
	}
}

// job is one unit handed to the appender: one message, or a batch journaled all or nothing.
type job struct {
	state atomic.Int32 // jobQueued -> jobTaken (appender) | jobCanceled (caller's ctx ended first)
	rs    []*Receipt
}

const (
	jobQueued int32 = iota
	jobTaken
	jobCanceled
)

// frontier resolves receipts without per-message memory for the backlog: the sender reports the
// highest ID below which every entry is settled, and only receipts someone waits on are remembered.
//
// A settled ID is confirmed unless it was parked, so the frontier remembers every parked ID: the
// last parkedMemory with their *ParkedError, older ones only as runs of IDs (evicted). A confirmed
// message is thereby never reported as anything but confirmed.
type frontier struct {
	mu      sync.Mutex
	settled uint64 // every ID <= settled is confirmed or parked
	waiters waitHeap
	closed  bool
	parked  map[uint64]*ParkedError
	order   []uint64 // parked IDs, oldest first, for eviction
	evicted idRuns   // parked IDs whose *ParkedError was evicted from parked
}

func (f *frontier) init() { f.parked = make(map[uint64]*ParkedError) }

// wait resolves r now if its ID is settled, else remembers it.
func (f *frontier) wait(r *Receipt) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.id <= f.settled:
		r.err = f.outcome(r.id)
		close(r.done)
	case f.closed:
		r.err = ErrUnconfirmed
		close(r.done)
	default:
		heap.Push(&f.waiters, r)
	}
}

// advance settles every ID <= to. The sender, and New before the sender starts.
func (f *frontier) advance(to uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if to <= f.settled {
		return
	}
	f.settled = to
	for len(f.waiters) > 0 && f.waiters[0].id <= to {
		r := heap.Pop(&f.waiters).(*Receipt)
		r.err = f.outcome(r.id)
		close(r.done)
	}
}

// outcome of a settled ID: nil (confirmed), its *ParkedError, or, for a parking evicted from
// memory, ErrOutcomeForgotten (which wraps ErrParked too). f.mu held.
func (f *frontier) outcome(id uint64) error {
	if pe, ok := f.parked[id]; ok {
		return pe
	}
	if f.evicted.contains(id) {
		return fmt.Errorf("%w: %w: id %d was parked more than %d parkings ago; see journal.Parked", ErrParked, ErrOutcomeForgotten, id, parkedMemory)
	}
	return nil
}

func (f *frontier) remember(pe *ParkedError) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.order) >= parkedMemory {
		old := f.order[0]
		f.order = f.order[1:]
		delete(f.parked, old)
		f.evicted.add(old)
	}
	f.parked[pe.ID] = pe
	f.order = append(f.order, pe.ID)
}

// close resolves every remaining waiter with ErrUnconfirmed.
func (f *frontier) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for len(f.waiters) > 0 {
		r := heap.Pop(&f.waiters).(*Receipt)
		r.err = ErrUnconfirmed
		close(r.done)
	}
}

func (p *Publisher) advance(to uint64)              { p.fr.advance(to) }
func (p *Publisher) rememberParked(pe *ParkedError) { p.fr.remember(pe) }

type waitHeap []*Receipt

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].id < h[j].id }
func (h waitHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *waitHeap) Push(x any)        { *h = append(*h, x.(*Receipt)) }
func (h *waitHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return r
}

// idRuns is a set of IDs kept as sorted, disjoint, non-adjacent runs: parkings come in ID order
// mostly, and many at once (a missing exchange) form a few long runs.
type idRuns []idRun

type idRun struct{ lo, hi uint64 } // lo <= hi, both included

// find returns the index of the first run with hi >= id.
func (s idRuns) find(id uint64) int {
	return sort.Search(len(s), func(i int) bool { return s[i].hi >= id })
}

func (s idRuns) contains(id uint64) bool {
	i := s.find(id)
	return i < len(s) && s[i].lo <= id
}

func (s *idRuns) add(id uint64) {
	r := *s
	i := r.find(id)
	switch {
	case i < len(r) && r[i].lo <= id:
		return // present
	case i > 0 && r[i-1].hi+1 == id:
		r[i-1].hi = id
		if i < len(r) && r[i].lo == id+1 { // joins two runs
			r[i-1].hi = r[i].hi
			r = append(r[:i], r[i+1:]...)
		}
	case i < len(r) && r[i].lo == id+1:
		r[i].lo = id
	default:
		r = append(r, idRun{})
		copy(r[i+1:], r[i:])
		r[i] = idRun{id, id}
	}
	*s = r
}
