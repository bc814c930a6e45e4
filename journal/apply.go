package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	bbolt "go.etcd.io/bbolt"
)

// batchState collects what a transaction changed; it is applied to the
// in-memory state only after the commit succeeded.
type batchState struct {
	oldSeqs      map[string]int64 // previous values of streams touched (-1: absent)
	cacheOps     []cacheOp
	addedPending bool
	freed        bool
	keys         []byte // arena for bbolt keys; bbolt needs them until commit
	rec          []byte // the sequence log record; bbolt needs it until commit
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
	savedNext, savedCounts, savedLog := j.w.nextID, j.w.counts, j.w.log
	bs := &j.wb
	j.seqMu.Lock()
	bs.reset()
	j.inTx = true
	j.seqMu.Unlock()
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
		if err := j.logSeqs(tx, bs); err != nil {
			return err
		}
		return j.w.putMeta(tx.Bucket(bucketMeta))
	})
	j.seqMu.Lock()
	j.inTx = false
	if err != nil {
		// Nothing was committed: restore the in-memory state.
		j.w.nextID, j.w.counts, j.w.log = savedNext, savedCounts, savedLog
		for s, old := range bs.oldSeqs {
			if old < 0 {
				delete(j.w.seqs, s)
			} else {
				j.w.seqs[s] = old
			}
		}
	}
	j.seqMu.Unlock()
	if err != nil {
		for _, r := range batch {
			if r.err == nil || errors.Is(r.err, errFullInternal) {
				r.err = err
			}
		}
	} else {
		j.commits.Add(1)
		j.cache.apply(bs.cacheOps)
		j.publish()
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
			err = fmt.Errorf("%w: %w: %s: bbolt panicked writing: %v", ErrBroken, ErrCorrupt, j.path, p)
			j.broken.Store(&err)
			j.log.Error("journal write panicked; journal is unusable until reopened", "err", err)
		}
	}()
	var fnErr error
	err = j.db.Update(func(tx *bbolt.Tx) error {
		fnErr = fn(tx)
		return fnErr
	})
	if err == nil {
		return nil
	}
	mapped := mapWriteErr(j.path, err)
	if fnErr != nil || errors.Is(mapped, ErrNoSpace) {
		// Rolled back before anything was committed: the answer is exact.
		return mapped
	}
	// The commit itself failed (an I/O error while writing or syncing):
	// whether the meta page reached the disk is unknown, and so is the
	// batch. Stop here; reopening reads the truth from the file.
	err = fmt.Errorf("%w: %s: commit failed, whether the last batch is on disk is unknown until the journal is reopened: %w", ErrBroken, j.path, err)
	j.broken.Store(&err)
	j.log.Error("journal commit failed; journal is unusable until reopened", "err", err)
	return err
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
		j.seqMu.Lock() // nextSeq changes w.seqs, which Stats reads
		defer j.seqMu.Unlock()
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
		// One cursor for the whole request: Get and Delete would each make
		// their own and search the tree twice per ID.
		c := pending.Cursor()
		for _, id := range r.ids {
			k := bs.key(id)
			ck, v := c.Seek(k)
			if ck == nil || !bytes.Equal(ck, k) {
				continue
			}
			w.pendingN--
			w.pendingBytes -= int64(len(v))
			if err := c.Delete(); err != nil {
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
		j.w.log.nameBytes += int64(len(stream))
	}
	j.w.seqs[stream] = next + 1
	return next
}
