package journal

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"time"

	bbolt "go.etcd.io/bbolt"
)

// Read returns up to max pending entries with ID > after, in ascending ID
// order (which is per-stream sequence order, except for redriven entries). It
// holds at most max entries in memory; an empty result means none are
// pending past after (see Changed to wait for more). The entries are the
// caller's, but an entry's Body may share memory with the journal's cache of
// recent appends: treat Body as read-only.
func (j *Journal) Read(ctx context.Context, after uint64, max int) ([]*Entry, error) {
	if max <= 0 {
		return nil, fmt.Errorf("journal: Read max %d must be > 0", max)
	}
	if err := j.usable(ctx); err != nil {
		return nil, err
	}
	if encs, ok := j.cache.read(after, max); ok {
		out := make([]*Entry, 0, len(encs))
		for _, b := range encs {
			e, err := decodeCached(b)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: cached entry %d: %w", ErrCorrupt, j.path, entryID(b), err)
			}
			out = append(out, e)
		}
		return out, nil
	}
	var out []*Entry
	err := j.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketPending).Cursor()
		for k, v := c.Seek(key(after + 1)); k != nil && len(out) < max; k, v = c.Next() {
			if len(out)%256 == 255 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("%w: %s: pending entry %x: %w", ErrCorrupt, j.path, k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Parked calls fn for every parked entry in ID order until fn returns an
// error, which Parked returns. fn runs outside any bbolt transaction (entries
// are read in pages), so it may call other Journal methods such as Redrive.
func (j *Journal) Parked(ctx context.Context, fn func(ParkedEntry) error) error {
	var after []byte
	for {
		if err := j.usable(ctx); err != nil {
			return err
		}
		var page []ParkedEntry
		err := j.view(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketParked).Cursor()
			k, v := c.First()
			if after != nil {
				k, v = c.Seek(after)
				if k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(page) < 256; k, v = c.Next() {
				pe, err := decodeParked(v)
				if err != nil {
					return fmt.Errorf("%w: %s: parked entry %x: %w", ErrCorrupt, j.path, k, err)
				}
				page = append(page, pe)
				after = append(after[:0], k...)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, pe := range page {
			if err := fn(pe); err != nil {
				return err
			}
		}
		if len(page) < 256 {
			return nil
		}
	}
}

func (j *Journal) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := j.brokenErr(); err != nil {
		return err
	}
	select {
	case <-j.done:
		return ErrClosed
	default:
		return nil
	}
}

// Stats is a snapshot of the journal's contents.
type Stats struct {
	Pending       int              // pending entries
	PendingBytes  int64            // their encoded size
	Parked        int              // parked entries
	ParkedBytes   int64            // their encoded size
	OldestPending time.Time        // Created of the lowest-ID pending entry; zero if none
	NextSeq       map[string]int64 // per stream, the sequence number the next append gets
	FileSize      int64            // size of the bbolt file
	FreeBytes     int64            // bytes of free pages inside it (reclaimed by Compact)
	Commits       int64            // write transactions committed since Open (group commit: fewer than writes)
}

// Backlog is the part of Stats that is cheap to take at any rate: counts and the oldest pending
// entry, no per-stream copy and no file stat.
type Backlog struct {
	Pending       int       // pending entries
	PendingBytes  int64     // their encoded size
	Parked        int       // parked entries
	ParkedBytes   int64     // their encoded size
	OldestPending time.Time // Created of the lowest-ID pending entry; zero if none or closed
}

// Backlog returns the counts as of the last commit and the oldest pending entry's age (one read
// transaction). Unlike Stats its cost does not grow with the number of streams.
func (j *Journal) Backlog() Backlog {
	j.statMu.Lock()
	b := Backlog{Pending: int(j.pub.pendingN), PendingBytes: j.pub.pendingBytes, Parked: int(j.pub.parkedN), ParkedBytes: j.pub.parkedBytes}
	j.statMu.Unlock()
	_ = j.view(func(tx *bbolt.Tx) error {
		if _, v := tx.Bucket(bucketPending).Cursor().First(); v != nil {
			b.OldestPending, _ = entryCreated(v)
		}
		return nil
	})
	return b
}

// Stats returns a snapshot as of the last commit. It copies every stream's next sequence number:
// take Backlog for what a gauge needs. On a closed journal the file fields and OldestPending are
// zero.
func (j *Journal) Stats() Stats {
	j.statMu.Lock()
	s := Stats{
		Pending:      int(j.pub.pendingN),
		PendingBytes: j.pub.pendingBytes,
		Parked:       int(j.pub.parkedN),
		ParkedBytes:  j.pub.parkedBytes,
		Commits:      j.commits.Load(),
	}
	j.statMu.Unlock()
	s.NextSeq = j.nextSeqs()
	err := j.view(func(tx *bbolt.Tx) error {
		if _, v := tx.Bucket(bucketPending).Cursor().First(); v != nil {
			s.OldestPending, _ = entryCreated(v)
		}
		s.FreeBytes = freeBytes(tx.DB())
		return nil
	})
	if err != nil {
		return s
	}
	if fi, err := os.Stat(j.path); err == nil {
		s.FileSize = fi.Size()
	}
	return s
}

// nextSeqs copies every stream's next sequence number as of the last commit: the writer's map,
// with the committed values of the streams an uncommitted batch has touched put back.
func (j *Journal) nextSeqs() map[string]int64 {
	j.seqMu.Lock()
	defer j.seqMu.Unlock()
	m := maps.Clone(j.w.seqs)
	if m == nil {
		m = map[string]int64{}
	}
	if j.inTx {
		for s, old := range j.wb.oldSeqs {
			if old < 0 {
				delete(m, s)
			} else {
				m[s] = old
			}
		}
	}
	return m
}
