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
// A nil error means the entry is on disk. Any error means it is not: the
// context is honoured until the writer starts committing the entry, and from
// then on Append waits for that commit (one transaction) to report exactly.
func (j *Journal) Append(ctx context.Context, e *Entry) error {
	return j.append(ctx, []*Entry{e}, true)
}

// TryAppend is Append that fails at once with ErrFull instead of waiting for
// space.
func (j *Journal) TryAppend(ctx context.Context, e *Entry) error {
	return j.append(ctx, []*Entry{e}, false)
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
	now := time.Now()
	r := &request{
		kind:    opAppend,
		encs:    make([][]byte, len(es)),
		streams: make([]string, len(es)),
		ids:     make([]uint64, 0, len(es)),
		seqs:    make([]int64, 0, len(es)),
	}
	created := make([]time.Time, len(es))
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
		created[i] = e.Created
		if created[i].IsZero() {
			created[i] = now
		}
		enc, hdrLen, err := encodeEntry(make([]byte, 0, 96+len(e.Body)), e, created[i])
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
	for {
		space := j.spaceSignal()
		err := j.submit(ctx, r)
		if err == nil {
			for i, e := range es {
				e.ID, e.Seq, e.Created = r.ids[i], r.seqs[i], created[i]
			}
			return nil
		}
		if !errors.Is(err, errFullInternal) {
			return err
		}
		if !wait {
			return fmt.Errorf("%w: %s holds MaxEntries %d or MaxBytes %d", ErrFull, j.path, j.opts.MaxEntries, j.opts.MaxBytes)
		}
		select {
		case <-space:
		case <-ctx.Done():
			return fmt.Errorf("%w (waiting for space): %w", ErrFull, ctx.Err())
		case <-j.done:
			return ErrClosed
		}
		r = &request{kind: opAppend, encs: r.encs, streams: r.streams, size: r.size, ids: r.ids[:0], seqs: r.seqs[:0]}
	}
}

// Delete removes pending entries (typically once the broker confirmed them).
// IDs that are not pending are ignored. Deletes are group-committed with
// appends; the call returns once the deletion is durable.
func (j *Journal) Delete(ctx context.Context, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return j.submit(ctx, &request{kind: opDelete, ids: ids})
}

// RecordAttempt increments Attempts and sets LastOutcome/LastError of the
// pending entries ids. IDs that are no longer pending are ignored.
func (j *Journal) RecordAttempt(ctx context.Context, ids []uint64, o Outcome, reason string) error {
	if len(ids) == 0 {
		return nil
	}
	return j.submit(ctx, &request{kind: opAttempt, ids: ids, outcome: o, reason: reason})
}

// Park moves pending entry id to the parked set with reason. Parked entries
// are never read by Read; they stay until Redrive or DropParked. ErrNotFound
// when id is not pending.
func (j *Journal) Park(ctx context.Context, id uint64, reason string) error {
	return j.submit(ctx, &request{kind: opPark, id: id, reason: reason})
}

// Redrive moves parked entry id back to the pending set under a new ID (the
// end of the journal), keeping its stream and sequence number and resetting
// Attempts. ErrNotFound when id is not parked.
func (j *Journal) Redrive(ctx context.Context, id uint64) error {
	return j.submit(ctx, &request{kind: opRedrive, id: id})
}

// DropParked deletes parked entry id for good. ErrNotFound when id is not
// parked.
func (j *Journal) DropParked(ctx context.Context, id uint64) error {
	return j.submit(ctx, &request{kind: opDrop, id: id})
}

// Compact rewrites the journal into a new file without free space, fsyncs
// it, renames it over the old one and continues on it. Writes wait while it
// runs. ctx is checked before the copy starts and while waiting in line.
func (j *Journal) Compact(ctx context.Context) error {
	return j.submit(ctx, &request{kind: opCompact, ctx: ctx})
}
