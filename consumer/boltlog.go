package consumer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"slices"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	bolt "go.etcd.io/bbolt"
)

// The stream log (store file format 2).
//
// Format 1 wrote every touched stream's state into the streams bucket in each commit. With many
// streams whose names arrive in random order (customer ids), each of those keys lies on a leaf page
// of its own, and a commit of n states rewrote about n pages: 4 KiB written per message. Format 2
// writes the states of a commit as log records under ascending keys in the log bucket, in the
// transaction of the commit's effects; every record holds its streams in key order. Once the log
// is large enough the writer folds it into the streams bucket in a transaction of its own: a k-way
// merge of the records, in key order, the latest record winning, so each page of the streams
// bucket is written once, and the log emptied. Load merges the streams bucket with the log the same
// way.
//
// A commit's states are cut into records of at most boltTunables.chunkBytes: bbolt never splits a leaf of
// four elements or fewer, so large records would share the log's last leaf, and every commit would
// rewrite the previous records with it; records of a quarter page fill its leaves, and a commit
// rewrites at most the part of one leaf page it did not fill. The records of one commit hold
// distinct streams, so a stream is in at most one of them.
//
// Record (record version 1): version byte, crc32c (Castagnoli, big-endian) of the bytes after it,
// the commit's updated stamp (8 bytes, Unix ns, big-endian), then for each stream in ascending key
// order: uvarint(len(key)), key (dedup.AppendKey), uvarint(len(state)+1) or 0 for a deletion, state.
// Log key: big-endian uint64, ascending from 0 after each fold.
//
// The meta bucket holds the file format (8 bytes, big-endian). A file without it is format 1 and is
// upgraded at open; a file of a later format is refused. The streams bucket holds the key
// streamsGuardKey, which AppendKey never produces and format 1 versions reject in Load: they
// would ignore the log and take the redeliveries of what it holds for new.

const (
	storeFormat      = 2
	storeFormatNoLog = 1 // implicit: a file without the meta bucket
	logRecVersion    = 1
	logRecHeader     = 1 + 4 + 8
)

var (
	bucketMeta      = []byte("rabbitkit.consumer.meta") // "format" -> uint64
	bucketLog       = []byte("rabbitkit.consumer.log")  // uint64 -> record
	keyFormat       = []byte("format")
	streamsGuardKey = []byte{0xff} // an unterminated uvarint: not a dedup.AppendKey key
	streamsGuardVal = []byte("rabbitkit.consumer store file format 2: the stream states are also in bucket rabbitkit.consumer.log")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errLogRecord = errors.New("consumer: malformed stream log record")

// logWriter is the writer goroutine's account of the log.
type logWriter struct {
	next         uint64 // key of the next record
	bytes        int64  // bytes of the records in the log bucket
	streamsAlloc int64  // bytes of the streams bucket's leaf pages, as of open or the last fold
	foldFailed   time.Time
	tune         boltTunables // with defaults

	// scratch for apply
	keys []byte
	ents []logEnt
	rec  []byte
	cuts []int
}

type logEnt struct {
	off, n int    // key: keys[off:off+n]
	state  []byte // nil: deletion
}

func (l *logWriter) foldDue() bool {
	if l.tune.foldEvery > 0 {
		return l.bytes >= l.tune.foldEvery
	}
	return l.bytes >= max(l.tune.foldMinBytes, l.streamsAlloc/4)
}

// openFormat brings the file to format 2: creates a new file's buckets, upgrades a format 1 file,
// refuses a later format. It returns the writer's account of the log.
func openFormat(db *bolt.DB, path string, log interface{ Info(string, ...any) }) (logWriter, error) {
	var format uint64
	var hadStreams bool
	err := boltView(db, func(tx *bolt.Tx) error {
		hadStreams = tx.Bucket(bucketStreams) != nil
		m := tx.Bucket(bucketMeta)
		if m == nil {
			// A store is recognised by its meta bucket, or (format 1) by its streams bucket;
			// a file with neither is new if it has no bucket, another program's if it has.
			var names []string
			_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				names = append(names, string(name))
				return nil
			})
			if !hadStreams && len(names) > 0 {
				return notStore(path, names)
			}
			format = storeFormatNoLog
			return nil
		}
		v := m.Get(keyFormat)
		if len(v) != 8 {
			return fmt.Errorf("consumer: store %s: meta format missing or malformed", path)
		}
		format = binary.BigEndian.Uint64(v)
		return nil
	})
	if err != nil {
		return logWriter{}, err
	}
	switch {
	case format > storeFormat:
		return logWriter{}, fmt.Errorf("consumer: store %s has file format %d, written by a later version of rabbitkit; this version reads formats 1 to %d", path, format, storeFormat)
	case format == storeFormatNoLog:
		err := boltUpdate(db, func(tx *bolt.Tx) error {
			streams, err := tx.CreateBucketIfNotExists(bucketStreams)
			if err != nil {
				return err
			}
			if err := streams.Put(streamsGuardKey, streamsGuardVal); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(bucketLog); err != nil {
				return err
			}
			m, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			return m.Put(keyFormat, binary.BigEndian.AppendUint64(nil, storeFormat))
		})
		if err != nil {
			return logWriter{}, fmt.Errorf("consumer: store %s: upgrade to file format %d: %w", path, storeFormat, err)
		}
		if hadStreams {
			log.Info("consumer: store file format upgraded", "path", path, "from", storeFormatNoLog, "to", storeFormat)
		}
	case format != storeFormat:
		return logWriter{}, fmt.Errorf("consumer: store %s: file format %d unknown", path, format)
	}
	var l logWriter
	err = boltView(db, func(tx *bolt.Tx) error {
		streams, lb := tx.Bucket(bucketStreams), tx.Bucket(bucketLog)
		if streams == nil || lb == nil {
			return fmt.Errorf("consumer: store %s: format %d file without its buckets", path, storeFormat)
		}
		c := lb.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 8 || v == nil {
				return fmt.Errorf("consumer: store %s: stream log key %x malformed", path, k)
			}
			l.bytes += int64(len(v))
			l.next = binary.BigEndian.Uint64(k) + 1
		}
		l.streamsAlloc = int64(streams.Stats().LeafAlloc)
		return nil
	})
	return l, err
}

// logStates writes the states of a group's commit into the log, inside its transaction. It returns
// the bytes and records written; the caller accounts for them once the transaction commits.
func (l *logWriter) logStates(tx *bolt.Tx, stamp []byte) (bytesN int64, recs uint64, err error) {
	if len(l.ents) == 0 {
		return 0, 0, nil
	}
	keys := l.keys
	key := func(e logEnt) []byte { return keys[e.off : e.off+e.n] }
	slices.SortStableFunc(l.ents, func(a, b logEnt) int { return bytes.Compare(key(a), key(b)) })
	// The last state of a stream wins (as the Puts in batch order did).
	w := 0
	for i := range l.ents {
		if i+1 < len(l.ents) && bytes.Equal(key(l.ents[i]), key(l.ents[i+1])) {
			continue
		}
		l.ents[w] = l.ents[i]
		w++
	}
	l.ents = l.ents[:w]
	rec, cuts := l.rec[:0], l.cuts[:0]
	start := -1
	for _, e := range l.ents {
		k := key(e)
		size := uvarintLen(uint64(len(k))) + len(k) + uvarintLen(uint64(len(e.state))+1) + len(e.state)
		if start >= 0 && len(rec)-start+size > l.tune.chunkBytes && len(rec)-start > logRecHeader {
			sealRecord(rec[start:])
			cuts = append(cuts, len(rec))
			start = -1
		}
		if start < 0 {
			start = len(rec)
			rec = append(rec, logRecVersion, 0, 0, 0, 0)
			rec = append(rec, stamp...)
		}
		rec = binary.AppendUvarint(rec, uint64(len(k)))
		rec = append(rec, k...)
		if e.state == nil {
			rec = append(rec, 0)
			continue
		}
		rec = binary.AppendUvarint(rec, uint64(len(e.state))+1)
		rec = append(rec, e.state...)
	}
	sealRecord(rec[start:])
	cuts = append(cuts, len(rec))
	l.rec, l.cuts = rec, cuts

	lb := tx.Bucket(bucketLog)
	lb.FillPercent = 1 // keys only grow: fill the pages instead of splitting them half full
	from := 0
	for i, to := range cuts {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], l.next+uint64(i))
		if err := lb.Put(k[:], rec[from:to:to]); err != nil {
			return 0, 0, err
		}
		from = to
	}
	return int64(len(rec)), uint64(len(cuts)), nil
}

func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

func sealRecord(r []byte) {
	binary.BigEndian.PutUint32(r[1:], crc32.Checksum(r[5:], castagnoli))
}

// loadStates returns the committed state of every stream: the streams bucket merged with the log,
// in key order.
func loadStates(tx *bolt.Tx) ([]StreamState, error) {
	streams, lb := tx.Bucket(bucketStreams), tx.Bucket(bucketLog)
	m, err := newLogMerge(lb)
	if err != nil {
		return nil, err
	}
	var out []StreamState
	emit := func(k, state []byte) error {
		key, err := dedup.ParseKey(k)
		if err != nil {
			return err
		}
		out = append(out, StreamState{Key: key, State: append([]byte{}, state...)})
		return nil
	}
	c := streams.Cursor()
	k, v := c.First()
	lk, _, ls, lok, err := m.next()
	for err == nil && (k != nil || lok) {
		if k != nil && bytes.Equal(k, streamsGuardKey) {
			k, v = c.Next()
			continue
		}
		cmp := -1 // the streams bucket's key first
		switch {
		case k == nil:
			cmp = 1
		case lok:
			cmp = bytes.Compare(k, lk)
		}
		if cmp < 0 {
			if len(v) < 8 {
				return nil, fmt.Errorf("consumer: stream key %x: state too short", k)
			}
			err = emit(k, v[8:])
			k, v = c.Next()
			continue
		}
		if ls != nil {
			err = emit(lk, ls)
		}
		if cmp == 0 {
			k, v = c.Next()
		}
		if err == nil {
			lk, _, ls, lok, err = m.next()
		}
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// foldLog writes the latest logged state of every stream into the streams bucket, in key order, and
// empties the log; in tx, the fold's own transaction.
func foldLog(tx *bolt.Tx, hook func(string) error) error {
	m, err := newLogMerge(tx.Bucket(bucketLog))
	if err != nil {
		return err
	}
	streams := tx.Bucket(bucketStreams)
	// Fill the pages: a fold rewrites every leaf it touches anyway, and fuller leaves are fewer
	// pages for the next fold (BenchmarkStoreStreams: 10% fewer bytes written with ascending names).
	streams.FillPercent = 1
	var arena []byte // values must stay valid until the commit: Put copies keys, not values
	for {
		k, stamp, state, ok, err := m.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if state == nil {
			if err := streams.Delete(k); err != nil {
				return err
			}
			continue
		}
		n := 8 + len(state)
		if cap(arena)-len(arena) < n {
			arena = make([]byte, 0, max(n, 256<<10))
		}
		arena = append(append(arena, stamp...), state...)
		if err := streams.Put(k, arena[len(arena)-n:len(arena):len(arena)]); err != nil {
			return err
		}
	}
	if hook != nil {
		if err := hook("fold"); err != nil {
			return err
		}
	}
	if err := tx.DeleteBucket(bucketLog); err != nil {
		return err
	}
	_, err = tx.CreateBucket(bucketLog)
	return err
}

// maybeFold runs on the writer after a commit: it folds the log once that is due.
func (s *BoltStore) maybeFold() {
	l := &s.w
	if !l.foldDue() || !l.foldFailed.IsZero() && time.Since(l.foldFailed) < l.tune.foldRetryAfter {
		return
	}
	t0, logged := time.Now(), l.bytes
	if err := boltUpdate(s.db, func(tx *bolt.Tx) error { return foldLog(tx, l.tune.hook) }); err != nil {
		// Nothing is lost: the log still holds every state. A broken file fails the next commit.
		l.foldFailed = time.Now()
		s.log.Warn("consumer: folding the store's stream log failed; retrying later", "path", s.Path(), "err", err)
		return
	}
	l.foldFailed = time.Time{}
	l.next, l.bytes = 0, 0
	_ = boltView(s.db, func(tx *bolt.Tx) error {
		l.streamsAlloc = int64(tx.Bucket(bucketStreams).Stats().LeafAlloc)
		return nil
	})
	s.log.Debug("consumer: stream log folded", "path", s.Path(), "log_bytes", logged, "streams_bytes", l.streamsAlloc, "took", time.Since(t0))
}
