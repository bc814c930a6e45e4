package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/group"

	bbolt "go.etcd.io/bbolt"
)

type opKind uint8

const (
	opAppend opKind = iota
	opDelete
	opPark
	opRedrive
	opDrop
	opAttempt
	opCompact
)

// Request states: the writer takes a queued request (queued -> taken) or the
// caller withdraws it when its context ends (queued -> cancelled). Once taken,
// the caller waits for the commit, so an error always means "not applied".
const (
	stateQueued int32 = iota
	stateTaken
	stateCancelled
)

// Writer batching caps: one transaction gathers at most this many requests
// or this many bytes of new entries.
const (
	maxBatchRequests = 4096
	maxBatchBytes    = 64 << 20
	maxLinger        = time.Millisecond
	maxGap           = 150 * time.Microsecond
)

// errFullInternal tells Append that the entry did not fit; Append then waits
// for space (or TryAppend returns ErrFull).
var errFullInternal = errors.New("journal: no room")

type request struct {
	kind  opKind
	state atomic.Int32
	done  chan struct{} // capacity 1: the writer sends once per submit
	err   error

	// opAppend: encoded entries (ID/Seq sealed by the writer) and their streams.
	encs    [][]byte
	streams []string
	size    int64
	// opAppend results; opDelete/opAttempt inputs.
	ids  []uint64
	seqs []int64
	// opPark/opRedrive/opDrop.
	id      uint64
	reason  string
	outcome Outcome
	ctx     context.Context // opCompact

	// Inline storage for single-entry appends (no extra allocations).
	encBuf    [1][]byte
	streamBuf [1]string
	idBuf     [1]uint64
	seqBuf    [1]int64
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// newRequest returns a pooled request; release it with putRequest once its
// answer has been received (never after a cancelled submit: the writer may
// still hold it).
func newRequest(kind opKind) *request {
	r := requestPool.Get().(*request)
	r.kind = kind
	return r
}

func putRequest(r *request) {
	done := r.done
	*r = request{done: done}
	requestPool.Put(r)
}

// writerState mirrors what is persisted in meta/streams; only the writer
// goroutine touches it after Open.
type writerState struct {
	nextID uint64
	counts
	seqs map[string]int64 // stream -> next seq; changed under Journal.seqMu
	log  seqLogState
}

func (w *writerState) putMeta(m *bbolt.Bucket) error {
	if err := m.Put(keyNextID, u64(w.nextID)); err != nil {
		return err
	}
	c := make([]byte, 0, 32)
	for _, v := range []int64{w.pendingN, w.pendingBytes, w.parkedN, w.parkedBytes} {
		c = binary.BigEndian.AppendUint64(c, uint64(v))
	}
	return m.Put(keyCounts, c)
}

// submit hands r to the writer and waits for its answer. The context is
// honoured until the writer takes the request; after that the caller waits
// for the commit (one fsync) so that the result is exact.
func (j *Journal) submit(ctx context.Context, r *request) error {
	if err := j.brokenErr(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.state.Store(stateQueued)
	r.err = nil
	j.sendMu.RLock()
	if j.closed {
		j.sendMu.RUnlock()
		return ErrClosed
	}
	select {
	case j.reqs <- r:
		j.sendMu.RUnlock()
	case <-ctx.Done():
		j.sendMu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		if r.state.CompareAndSwap(stateQueued, stateCancelled) {
			return ctx.Err()
		}
		<-r.done
		return r.err
	}
}

func (j *Journal) brokenErr() error {
	if p := j.broken.Load(); p != nil {
		return *p
	}
	return nil
}

// writeLoop is the writer goroutine: it owns every bbolt write.
//
// Group commit: it takes the first request, then everything already queued.
// Callers answered by the previous commit need a moment to come back with
// their next request; committing without them makes batches alternate
// between a few stragglers and everybody else, halving throughput. So when
// the previous batch had several requests, it waits (blocked on the queue, at
// most maxLinger) until as many as last time have arrived. A lone caller
// never waits.
func (j *Journal) writeLoop() {
	batch := make([]*request, 0, 64)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	last := 0
	for first := range j.reqs {
		batch = batch[:0]
		var bytes int64
		var compact *request
		take := func(r *request) bool {
			if r.state.CompareAndSwap(stateQueued, stateTaken) {
				if r.kind == opCompact {
					compact = r
					return false
				}
				batch = append(batch, r)
				bytes += r.size
			}
			return len(batch) < maxBatchRequests && bytes < maxBatchBytes
		}
		more := take(first)
		var deadline time.Time
	gather:
		for more {
			if !group.Gather(j.reqs, func(r *request) bool { more = take(r); return more }) || !more {
				break
			}
			if last < 4 || len(batch) >= last {
				break
			}
			// Linger: wait for the next request at most maxGap, and for all of
			// them at most maxLinger.
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(maxLinger)
			}
			if !now.Before(deadline) {
				break
			}
			linger.Reset(min(maxGap, deadline.Sub(now)))
			select {
			case r, ok := <-j.reqs:
				linger.Stop()
				if !ok {
					break gather
				}
				more = take(r)
			case <-linger.C:
				break gather
			}
		}
		last = len(batch)
		if len(batch) > 0 {
			if j.apply(batch) {
				j.maybeCompactLive()
			}
			j.maybeFoldSeqs()
		}
		if compact != nil {
			compact.err = j.compact(compact.ctx)
			compact.done <- struct{}{}
		}
	}
	linger.Stop()
}

// publish copies the writer's counts for Stats, Backlog and LastID. The
// per-stream sequence numbers are not copied: Stats reads them under seqMu.
func (j *Journal) publish() {
	j.statMu.Lock()
	defer j.statMu.Unlock()
	j.pub.counts = j.w.counts
	j.pub.lastID = j.w.nextID - 1
}

// signal wakes Changed() and space waiters after a commit.
func (j *Journal) signal(addedPending, freed bool) {
	if !addedPending && !freed {
		return
	}
	j.sigMu.Lock()
	defer j.sigMu.Unlock()
	if addedPending {
		close(j.changed)
		j.changed = make(chan struct{})
	}
	if freed {
		close(j.space)
		j.space = make(chan struct{})
	}
}

func (j *Journal) spaceSignal() <-chan struct{} {
	j.sigMu.Lock()
	defer j.sigMu.Unlock()
	return j.space
}

// Changed returns a channel closed by the next commit that adds pending
// entries (Append, AppendBatch, Redrive). To wait for new entries without a
// lost wake-up, call Changed before Read:
//
//	ch := j.Changed()
//	es, err := j.Read(ctx, cursor, 100)
//	if err == nil && len(es) == 0 { select { case <-ch: case <-ctx.Done(): } }
func (j *Journal) Changed() <-chan struct{} {
	j.sigMu.Lock()
	defer j.sigMu.Unlock()
	return j.changed
}
