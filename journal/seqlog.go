package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"time"

	bbolt "go.etcd.io/bbolt"
)

// The sequence log (file format 2).
//
// Every stream's next sequence number must be durable in the transaction that assigns it, and
// outlive the entries that carry it. Format 1 wrote it into the streams bucket (stream name ->
// next seq) in every append commit. With many streams a batch touches as many streams as it has
// entries, and their keys lie all over that bucket: a commit of 512 entries over 100,000 streams
// with unordered names rewrote a leaf page per entry (BenchmarkStreams: 0.19x the rate of one
// stream). Format 2 appends one record per commit instead, under an ascending key in the seqlog
// bucket: the touched streams and their next sequence numbers. Now and then the writer folds the
// log into the streams bucket (sorted, so each of its pages is written once) and empties it, in
// one transaction. Open reads the streams bucket, then the log: the later value wins (they only
// grow).
//
// Record: version byte (1), crc32c (Castagnoli, big-endian) of the bytes after it, then for each
// stream uvarint(len(name)), name, uvarint(next seq).

const (
	seqRecVersion = 1
	seqRecHeader  = 5
	// streamOverhead estimates a streams bucket record's bytes beside its name (8-byte value,
	// 16-byte leaf element).
	streamOverhead = 24
	// seqFoldRetry: after a failed fold (disk full), wait this long before trying again.
	seqFoldRetry = 10 * time.Second
)

// defaultSeqFoldMinBytes: the log is folded once it holds this many bytes, or a quarter of the
// streams bucket's size if that is more: folding rewrites at most the whole bucket, so each logged
// byte costs at most about four bytes of folding, and Open never reads more log than a quarter of
// the bucket plus this. The crash tests, which fold all the time, lower it (Options.seqFoldMinBytes).
const defaultSeqFoldMinBytes = 1 << 20

// seqLogState is the writer's account of the seqlog bucket.
type seqLogState struct {
	next      uint64 // key of the next record
	bytes     int64  // bytes of the records in the bucket
	nameBytes int64  // total length of every stream name (the keys of writerState.seqs)
}

var errSeqRecord = errors.New("malformed sequence log record")

// encodeSeqRecord appends the record of the streams in touched (their values now in seqs) to buf.
func encodeSeqRecord(buf []byte, touched, seqs map[string]int64) []byte {
	buf = append(buf, seqRecVersion, 0, 0, 0, 0)
	for s := range touched {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
		buf = binary.AppendUvarint(buf, uint64(seqs[s]))
	}
	binary.BigEndian.PutUint32(buf[1:], crc32.Checksum(buf[seqRecHeader:], castagnoli))
	return buf
}

// decodeSeqRecord calls fn for each stream of rec; name aliases rec.
func decodeSeqRecord(rec []byte, fn func(name []byte, next int64)) error {
	if len(rec) < seqRecHeader || rec[0] != seqRecVersion {
		return errSeqRecord
	}
	if binary.BigEndian.Uint32(rec[1:]) != crc32.Checksum(rec[seqRecHeader:], castagnoli) {
		return fmt.Errorf("%w: checksum mismatch", errSeqRecord)
	}
	b := rec[seqRecHeader:]
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n == 0 || n > uint64(len(b)-k) {
			return errSeqRecord
		}
		name := b[k : k+int(n)]
		b = b[k+int(n):]
		next, k := binary.Uvarint(b)
		if k <= 0 || next < 1 || next > 1<<63-1 {
			return errSeqRecord
		}
		b = b[k:]
		fn(name, int64(next))
	}
	return nil
}

// logSeqs writes the record of the streams bs touched; called inside the batch's transaction.
func (j *Journal) logSeqs(tx *bbolt.Tx, bs *batchState) error {
	if len(bs.oldSeqs) == 0 {
		return nil
	}
	bs.rec = encodeSeqRecord(bs.rec[:0], bs.oldSeqs, j.w.seqs)
	l := &j.w.log
	b := tx.Bucket(bucketSeqLog)
	b.FillPercent = 1 // keys only grow: fill pages instead of splitting them half full
	if err := b.Put(bs.key(l.next), bs.rec); err != nil {
		return err
	}
	l.next++
	l.bytes += int64(len(bs.rec))
	return nil
}

// loadSeqLog replays the log over j.w.seqs (loaded from the streams bucket) at Open.
func (j *Journal) loadSeqLog(tx *bbolt.Tx) error {
	l := seqLogState{}
	c := tx.Bucket(bucketSeqLog).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 8 || v == nil {
			return fmt.Errorf("%w: %s: sequence log key %x malformed", ErrCorrupt, j.path, k)
		}
		err := decodeSeqRecord(v, func(name []byte, next int64) {
			if next > j.w.seqs[string(name)] {
				j.w.seqs[string(name)] = next
			}
		})
		if err != nil {
			return fmt.Errorf("%w: %s: sequence log record %x: %w", ErrCorrupt, j.path, k, err)
		}
		l.bytes += int64(len(v))
		l.next = binary.BigEndian.Uint64(k) + 1
	}
	for s := range j.w.seqs {
		l.nameBytes += int64(len(s))
	}
	j.w.log = l
	return nil
}

// maybeFoldSeqs runs on the writer after a commit: once the log is large enough, it writes the
// latest sequence number of every stream it names into the streams bucket and empties it, in
// one transaction.
func (j *Journal) maybeFoldSeqs() {
	l := &j.w.log
	if l.bytes < max(j.opts.seqFoldMinBytes, (l.nameBytes+streamOverhead*int64(len(j.w.seqs)))/4) {
		return
	}
	if !j.foldFailed.IsZero() && time.Since(j.foldFailed) < seqFoldRetry {
		return
	}
	if err := j.update(j.foldSeqs); err != nil {
		// Nothing changed: the log still holds every value. Writes go on; a broken journal
		// refuses them by itself.
		j.foldFailed = time.Now()
		j.log.Warn("journal: folding the sequence log failed; retrying later", "err", err)
		return
	}
	j.foldFailed = time.Time{}
	j.commits.Add(1)
	l.next, l.bytes = 0, 0
}

// foldSeqs writes the streams the log names, in key order, with their current next sequence
// numbers (the writer's state is the committed one between batches), and empties the log.
func (j *Journal) foldSeqs(tx *bbolt.Tx) error {
	lb := tx.Bucket(bucketSeqLog)
	var names [][]byte // alias the log's pages: valid until the transaction ends, and Put copies keys
	err := lb.ForEach(func(k, v []byte) error {
		return decodeSeqRecord(v, func(name []byte, _ int64) { names = append(names, name) })
	})
	if err != nil {
		return fmt.Errorf("%w: %s: sequence log: %w", ErrCorrupt, j.path, err)
	}
	slices.SortFunc(names, bytes.Compare)
	names = slices.CompactFunc(names, bytes.Equal)
	streams := tx.Bucket(bucketStreams)
	vals := make([]byte, 0, 8*len(names))
	for _, name := range names {
		n := len(vals)
		vals = binary.BigEndian.AppendUint64(vals, uint64(j.w.seqs[string(name)]))
		if err := streams.Put(name, vals[n:n+8:n+8]); err != nil {
			return err
		}
	}
	if err := tx.DeleteBucket(bucketSeqLog); err != nil {
		return err
	}
	_, err = tx.CreateBucket(bucketSeqLog)
	return err
}
