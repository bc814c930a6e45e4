package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

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
	seqs map[string]int64 // stream -> next seq
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
			select {
			case r, ok := <-j.reqs:
				if !ok {
					break gather
				}
				more = take(r)
				continue
			default:
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
		}
		if compact != nil {
			compact.err = j.compact(compact.ctx)
			compact.done <- struct{}{}
		}
	}
	linger.Stop()
}

// batchState collects what a transaction changed; it is applied to the
// in-memory state only after the commit succeeded.
type batchState struct {
	oldSeqs      map[string]int64 // previous values of streams touched (-1: absent)
	cacheOps     []cacheOp
	addedPending bool
	freed        bool
	keys         []byte // arena for bbolt keys; bbolt needs them until commit
}

// key returns the bbolt key of id, valid until the next batch.
func (bs *batchState) key(id uint64) []byte {
	n := len(bs.keys)
	bs.keys = binary.BigEndian.AppendUint64(bs.keys, id)
	return bs.keys[n : n+8 : n+8]
}

func (bs *batchState) reset() {
	if bs.oldSeqs == nil {
		bs.oldSeqs = map[string]int64{}
	}
	clear(bs.oldSeqs)
	clear(bs.cacheOps)
	bs.cacheOps = bs.cacheOps[:0]
	bs.keys = bs.keys[:0]
	bs.addedPending, bs.freed = false, false
}

type cacheOp struct {
	kind opKind // opAppend (add), opDelete (remove), opAttempt (replace)
	id   uint64
	data []byte
}

// apply commits batch and answers its requests. It reports whether the
// commit freed space.
func (j *Journal) apply(batch []*request) (freed bool) {
	savedNext, savedCounts := j.w.nextID, j.w.counts
	bs := &j.wb
	bs.reset()
	err := j.update(func(tx *bbolt.Tx) error {
		pending, parked := tx.Bucket(bucketPending), tx.Bucket(bucketParked)
		// IDs only grow: appends land at the right edge, so pack pages
		// instead of splitting them half full.
		pending.FillPercent = 0.95
		for _, r := range batch {
			r.err = nil
			if err := j.applyOne(tx, pending, parked, r, bs); err != nil {
				return err
			}
		}
		streams := tx.Bucket(bucketStreams)
		for s := range bs.oldSeqs {
			if err := streams.Put([]byte(s), u64(uint64(j.w.seqs[s]))); err != nil {
				return err
			}
		}
		return j.w.putMeta(tx.Bucket(bucketMeta))
	})
	if err != nil {
		// Nothing was committed: restore the in-memory state.
		j.w.nextID, j.w.counts = savedNext, savedCounts
		for s, old := range bs.oldSeqs {
			if old < 0 {
				delete(j.w.seqs, s)
			} else {
				j.w.seqs[s] = old
			}
		}
		for _, r := range batch {
			if r.err == nil || errors.Is(r.err, errFullInternal) {
				r.err = err
			}
		}
	} else {
		j.commits.Add(1)
		j.cache.apply(bs.cacheOps)
		j.publish(bs.oldSeqs)
		j.signal(bs.addedPending, bs.freed)
	}
	for _, r := range batch {
		r.done <- struct{}{}
	}
	return err == nil && bs.freed
}

// update runs fn in a write transaction, containing panics/faults from a
// corrupt file: the journal is then marked broken.
func (j *Journal) update(fn func(tx *bbolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: writing: %v", ErrCorrupt, j.path, p)
			j.broken.Store(&err)
			j.log.Error("journal write panicked; journal is unusable until reopened", "err", err)
		}
	}()
	if err := j.db.Update(fn); err != nil {
		return mapWriteErr(j.path, err)
	}
	return nil
}

func key(id uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), id) }

// applyOne applies r inside tx. Per-request failures (not found, full) are
// stored in r.err; a returned error aborts the whole transaction.
func (j *Journal) applyOne(tx *bbolt.Tx, pending, parked *bbolt.Bucket, r *request, bs *batchState) error {
	w := &j.w
	switch r.kind {
	case opAppend:
		n := int64(len(r.encs))
		if w.pendingN+w.parkedN+n > int64(j.opts.MaxEntries) || w.pendingBytes+w.parkedBytes+r.size > j.opts.MaxBytes {
			r.err = errFullInternal
			return nil
		}
		r.ids, r.seqs = r.ids[:0], r.seqs[:0]
		for i, enc := range r.encs {
			id := w.nextID
			w.nextID++
			seq := j.nextSeq(r.streams[i], bs)
			sealEntry(enc, id, seq)
			if err := pending.Put(bs.key(id), enc); err != nil {
				return err
			}
			r.ids = append(r.ids, id)
			r.seqs = append(r.seqs, seq)
			bs.cacheOps = append(bs.cacheOps, cacheOp{kind: opAppend, id: id, data: enc})
		}
		w.pendingN += n
		w.pendingBytes += r.size
		bs.addedPending = true
	case opDelete:
		for _, id := range r.ids {
			k := bs.key(id)
			v := pending.Get(k)
			if v == nil {
				continue
			}
			w.pendingN--
			w.pendingBytes -= int64(len(v))
			if err := pending.Delete(k); err != nil {
				return err
			}
			bs.cacheOps = append(bs.cacheOps, cacheOp{kind: opDelete, id: id})
			bs.freed = true
		}
	case opPark:
		k := bs.key(r.id)
		v := pending.Get(k)
		if v == nil {
			r.err = fmt.Errorf("%w: pending entry %d", ErrNotFound, r.id)
			return nil
		}
		rec := encodeParked(v, r.reason, time.Now())
		w.pendingN--
		w.pendingBytes -= int64(len(v))
		w.parkedN++
		w.parkedBytes += int64(len(rec))
		if err := parked.Put(k, rec); err != nil {
			return err
		}
		if err := pending.Delete(k); err != nil {
			return err
		}
		bs.cacheOps = append(bs.cacheOps, cacheOp{kind: opDelete, id: r.id})
	case opRedrive:
		k := bs.key(r.id)
		rec := parked.Get(k)
		if rec == nil {
			r.err = fmt.Errorf("%w: parked entry %d", ErrNotFound, r.id)
			return nil
		}
		pe, err := decodeParked(rec)
		if err != nil {
			r.err = fmt.Errorf("%w: parked entry %d: %w", ErrCorrupt, r.id, err)
			return nil
		}
		e := &pe.Entry
		e.ID, e.Attempts = w.nextID, 0
		enc, _, err := encodeEntry(nil, e, e.Created)
		if err != nil {
			r.err = fmt.Errorf("%w: parked entry %d: %w", ErrCorrupt, r.id, err)
			return nil
		}
		w.nextID++
		w.parkedN--
		w.parkedBytes -= int64(len(rec))
		w.pendingN++
		w.pendingBytes += int64(len(enc))
		if err := parked.Delete(k); err != nil {
			return err
		}
		if err := pending.Put(bs.key(e.ID), enc); err != nil {
			return err
		}
		r.ids = append(r.ids[:0], e.ID)
		bs.cacheOps = append(bs.cacheOps, cacheOp{kind: opAppend, id: e.ID, data: enc})
		bs.addedPending = true
	case opDrop:
		k := bs.key(r.id)
		rec := parked.Get(k)
		if rec == nil {
			r.err = fmt.Errorf("%w: parked entry %d", ErrNotFound, r.id)
			return nil
		}
		w.parkedN--
		w.parkedBytes -= int64(len(rec))
		if err := parked.Delete(k); err != nil {
			return err
		}
		bs.freed = true
	case opAttempt:
		for _, id := range r.ids {
			k := bs.key(id)
			v := pending.Get(k)
			if v == nil {
				continue
			}
			e, err := decodeEntry(v)
			if err != nil {
				r.err = fmt.Errorf("%w: pending entry %d: %w", ErrCorrupt, id, err)
				continue
			}
			e.Attempts++
			e.LastOutcome = r.outcome
			e.LastError = r.reason
			enc, _, err := encodeEntry(make([]byte, 0, len(v)+len(r.reason)), e, e.Created)
			if err != nil {
				r.err = fmt.Errorf("%w: pending entry %d: %w", ErrCorrupt, id, err)
				continue
			}
			w.pendingBytes += int64(len(enc) - len(v))
			if err := pending.Put(k, enc); err != nil {
				return err
			}
			bs.cacheOps = append(bs.cacheOps, cacheOp{kind: opAttempt, id: id, data: enc})
		}
	}
	return nil
}

// nextSeq assigns the next sequence number of stream within the batch.
func (j *Journal) nextSeq(stream string, bs *batchState) int64 {
	next, ok := j.w.seqs[stream]
	if _, touched := bs.oldSeqs[stream]; !touched {
		if ok {
			bs.oldSeqs[stream] = next
		} else {
			bs.oldSeqs[stream] = -1
		}
	}
	if !ok {
		next = 1
	}
	j.w.seqs[stream] = next + 1
	return next
}

// publish copies the writer state for Stats; touched names the streams that
// changed (nil: all).
func (j *Journal) publish(touched map[string]int64) {
	j.statMu.Lock()
	defer j.statMu.Unlock()
	j.pub.counts = j.w.counts
	if touched == nil || j.pub.nextSeq == nil {
		j.pub.nextSeq = make(map[string]int64, len(j.w.seqs))
		for s, v := range j.w.seqs {
			j.pub.nextSeq[s] = v
		}
		return
	}
	for s := range touched {
		j.pub.nextSeq[s] = j.w.seqs[s]
	}
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
