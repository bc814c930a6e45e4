package journal

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Append journals e and returns once it is durable (fsync'd). It assigns
// e.ID, e.Seq and, when zero, e.Created. While the journal is full it waits
// for space until ctx ends.
//
// A nil error means the entry is on disk. An error wrapping ErrBroken means
// the disk failed the commit itself: whether the entry is on disk is unknown
// until the journal is reopened. Any other error means it is not: the context
// is honoured until the writer starts committing the entry, and from then on
// Append waits for that commit (one transaction) to report exactly.
func (j *Journal) Append(ctx context.Context, e *Entry) error {
	es := [1]*Entry{e}
	return j.append(ctx, es[:], true)
}

// TryAppend is Append that fails at once with ErrFull instead of waiting for
// space.
func (j *Journal) TryAppend(ctx context.Context, e *Entry) error {
	es := [1]*Entry{e}
	return j.append(ctx, es[:], false)
}

// AppendBatch journals es in one transaction, all or nothing, in slice order
// (IDs and per-stream sequences ascend with the index). It waits for space
// like Append. A batch that can never fit the bounds gives ErrTooLarge.
func (j *Journal) AppendBatch(ctx context.Context, es []*Entry) error {
	if len(es) == 0 {
		return nil
	}
	return j.append(ctx, es, true)
}

func (j *Journal) append(ctx context.Context, es []*Entry, wait bool) error {
	now := time.Now().Round(0).UTC() // as Read returns it: no monotonic reading, UTC
	r := newRequest(opAppend)
	if len(es) == 1 {
		r.encs, r.streams, r.ids, r.seqs = r.encBuf[:], r.streamBuf[:], r.idBuf[:0], r.seqBuf[:0]
	} else {
		r.encs, r.streams = make([][]byte, len(es)), make([]string, len(es))
		r.ids, r.seqs = make([]uint64, 0, len(es)), make([]int64, 0, len(es))
	}
	if err := j.encodeAll(r, es, now); err != nil {
		putRequest(r)
		return err
	}
	for {
		space := j.spaceSignal()
		err := j.submit(ctx, r)
		if err == nil {
			for i, e := range es {
				if e.Created.IsZero() {
					e.Created = now
				}
				e.ID, e.Seq = r.ids[i], r.seqs[i]
			}
			putRequest(r)
			return nil
		}
		if !errors.Is(err, errFullInternal) {
			if r.state.Load() != stateCancelled {
				putRequest(r)
			}
			return err
		}
		if !wait {
			putRequest(r)
			return fmt.Errorf("%w: %s holds MaxEntries %d or MaxBytes %d", ErrFull, j.path, j.opts.MaxEntries, j.opts.MaxBytes)
		}
		select {
		case <-space:
		case <-ctx.Done():
			putRequest(r)
			return fmt.Errorf("%w (waiting for space): %w", ErrFull, ctx.Err())
		case <-j.done:
			putRequest(r)
			return ErrClosed
		}
		r.ids, r.seqs = r.ids[:0], r.seqs[:0]
	}
}

// encodeAll validates and encodes es into r.
func (j *Journal) encodeAll(r *request, es []*Entry, now time.Time) error {
	for i, e := range es {
		if e == nil {
			return fmt.Errorf("%w: nil entry at index %d", ErrInvalidEntry, i)
		}
		if e.Stream == "" {
			return fmt.Errorf("%w: empty stream", ErrInvalidEntry)
		}
		if len(e.Body) > j.opts.MaxMessageSize {
			return fmt.Errorf("%w: body %d bytes > MaxMessageSize %d", ErrTooLarge, len(e.Body), j.opts.MaxMessageSize)
		}
		created := e.Created
		if created.IsZero() {
			created = now
		}
		enc, hdrLen, err := encodeEntry(make([]byte, 0, 128+len(e.Body)+len(e.Stream)+len(e.Exchange)+len(e.RoutingKey)), e, created)
		if err != nil {
			return err
		}
		if size := len(e.Body) + hdrLen; size > j.opts.MaxMessageSize {
			return fmt.Errorf("%w: body+headers %d bytes > MaxMessageSize %d", ErrTooLarge, size, j.opts.MaxMessageSize)
		}
		if int64(len(enc)) > j.opts.MaxBytes {
			return fmt.Errorf("%w: entry of %d bytes > MaxBytes %d", ErrTooLarge, len(enc), j.opts.MaxBytes)
		}
		r.encs[i], r.streams[i] = enc, e.Stream
		r.size += int64(len(enc))
	}
	if r.size > j.opts.MaxBytes || len(es) > j.opts.MaxEntries {
		return fmt.Errorf("%w: batch of %d entries, %d bytes exceeds MaxEntries %d / MaxBytes %d",
			ErrTooLarge, len(es), r.size, j.opts.MaxEntries, j.opts.MaxBytes)
	}
	return nil
}

// do submits a single request and recycles it.
func (j *Journal) do(ctx context.Context, r *request) error {
	err := j.submit(ctx, r)
	if r.state.Load() != stateCancelled {
		putRequest(r)
	}
	return err
}

// Delete removes pending entries (typically once the broker confirmed them).
// IDs that are not pending are ignored. Deletes are group-committed with
// appends; the call returns once the deletion is durable.
func (j *Journal) Delete(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	r := newRequest(opDelete)
	r.ids = ids
	return j.do(ctx, r)
}

// RecordAttempt increments Attempts and sets LastOutcome/LastError of the
// pending entries ids. IDs that are no longer pending are ignored.
func (j *Journal) RecordAttempt(ctx context.Context, ids []uint64, o Outcome, reason string) error {
	if len(ids) == 0 {
		return nil
	}
	r := newRequest(opAttempt)
	r.ids, r.outcome, r.reason = ids, o, reason
	return j.do(ctx, r)
}

// Park moves pending entry id to the parked set with reason. Parked entries
// are never read by Read; they stay until Redrive or DropParked. ErrNotFound
// when id is not pending.
func (j *Journal) Park(ctx context.Context, id uint64, reason string) error {
	r := newRequest(opPark)
	r.id, r.reason = id, reason
	return j.do(ctx, r)
}

// Redrive moves parked entry id back to the pending set under a new ID (the
// end of the journal), keeping its stream and sequence number and resetting
// Attempts. ErrNotFound when id is not parked.
func (j *Journal) Redrive(ctx context.Context, id uint64) error {
	r := newRequest(opRedrive)
	r.id = id
	return j.do(ctx, r)
}

// DropParked deletes parked entry id for good. ErrNotFound when id is not
// parked.
func (j *Journal) DropParked(ctx context.Context, id uint64) error {
	r := newRequest(opDrop)
	r.id = id
	return j.do(ctx, r)
}

// Compact rewrites the journal into a new file without free space, fsyncs
// it, renames it over the old one and continues on it. Writes wait while it
// runs. ctx is checked before the copy starts and while waiting in line.
func (j *Journal) Compact(ctx context.Context) error {
	r := newRequest(opCompact)
	r.ctx = ctx
	return j.do(ctx, r)
}
