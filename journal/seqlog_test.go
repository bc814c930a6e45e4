package journal

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bbolt "go.etcd.io/bbolt"
)

// envFoldBytes sets Options.seqFoldMinBytes of the journals this test binary and its crash
// children open (withTestFold).
const envFoldBytes = "RABBITKIT_JOURNAL_TEST_FOLD_BYTES"

// withTestFold sets o's fold threshold from envFoldBytes, when set.
func withTestFold(o Options) Options {
	if v, err := strconv.ParseInt(os.Getenv(envFoldBytes), 10, 64); err == nil && v > 0 {
		o.seqFoldMinBytes = v
	}
	return o
}

// TestCrashSafetyFolding is TestCrashSafety with the sequence log folded after every few
// commits, so that the kills also land during folds and right after them.
func TestCrashSafetyFolding(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	t.Setenv(envFoldBytes, "64")
	// At 64 bytes the writer folds after every few commits: the streams bucket fills.
	path := filepath.Join(t.TempDir(), "fold.db")
	j := openT(t, path, Options{})
	for i := range 30 {
		require.NoError(t, j.Append(context.Background(), newEntry("s"+strconv.Itoa(i%3), "x")))
	}
	require.NoError(t, j.Close())
	db := rawBolt(t, path)
	require.NoError(t, db.View(func(tx *bbolt.Tx) error {
		require.Equal(t, 3, tx.Bucket(bucketStreams).Stats().KeyN)
		return nil
	}))
	require.NoError(t, db.Close())
	TestCrashSafety(t)
}

// appendStreams appends one entry to each of n streams "<prefix>i", in batches of 1000, and
// deletes them again, so that only the journal's own records remember their sequence numbers.
func appendStreams(t *testing.T, j *Journal, prefix string, n int) {
	t.Helper()
	ctx := context.Background()
	for lo := 0; lo < n; lo += 1000 {
		es := make([]*Entry, 0, 1000)
		for i := lo; i < min(lo+1000, n); i++ {
			es = append(es, newEntry(prefix+strconv.Itoa(i), "x"))
		}
		require.NoError(t, j.AppendBatch(ctx, es))
		ids := make([]uint64, len(es))
		for i, e := range es {
			ids[i] = e.ID
		}
		require.NoError(t, j.Delete(ctx, ids...))
	}
}

// rawBolt opens a closed journal's file with plain bbolt.
func rawBolt(t *testing.T, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	return db
}

// TestSeqLogFold: with many streams the sequence log is folded into the streams bucket (and
// emptied) now and then; the sequence numbers survive folds, deletes and reopening, and are
// never reused.
func TestSeqLogFold(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{})
	// 60,000 streams of 17-byte names: about 1.3 MiB of log, past defaultSeqFoldMinBytes.
	const n = 60_000
	appendStreams(t, j, "stream-number-", n)
	appendStreams(t, j, "stream-number-", 10) // seq 2 for the first ten
	st := j.Stats()
	require.Len(t, st.NextSeq, n)
	require.Equal(t, int64(3), st.NextSeq["stream-number-9"])
	require.Equal(t, int64(2), st.NextSeq["stream-number-10"])
	require.NoError(t, j.Close())

	db := rawBolt(t, path)
	var logBytes, folded int
	require.NoError(t, db.View(func(tx *bbolt.Tx) error {
		_ = tx.Bucket(bucketSeqLog).ForEach(func(_, v []byte) error { logBytes += len(v); return nil })
		folded = tx.Bucket(bucketStreams).Stats().KeyN
		return nil
	}))
	require.NoError(t, db.Close())
	require.Less(t, int64(logBytes), int64(defaultSeqFoldMinBytes), "the log was folded")
	require.Greater(t, folded, 0, "the streams bucket holds the folded streams")
	require.Less(t, folded, n, "the newest streams are only in the log")

	j = openT(t, path, Options{})
	require.Equal(t, st.NextSeq, j.Stats().NextSeq, "reopened: the same sequence numbers")
	for _, s := range []string{"stream-number-0", "stream-number-10", "stream-number-59999", "new"} {
		e := newEntry(s, "y")
		require.NoError(t, j.Append(ctx, e))
		require.Equal(t, max(st.NextSeq[s], 1), e.Seq, s)
	}
}

// TestFormat1Migrates: a format 1 file (no sequence log: every stream's next sequence number in
// the streams bucket) opens, is upgraded to format 2 at Open and keeps its sequence numbers.
func TestFormat1Migrates(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{})
	appendStreams(t, j, "s", 3)
	appendStreams(t, j, "s", 1)
	e := newEntry("pending", "p")
	require.NoError(t, j.Append(ctx, e))
	want := j.Stats().NextSeq
	require.Equal(t, map[string]int64{"s0": 3, "s1": 2, "s2": 2, "pending": 2}, want)
	require.NoError(t, j.Close())

	// Rewrite it as format 1 wrote it: the log's values in the streams bucket, no log.
	db := rawBolt(t, path)
	require.NoError(t, db.Update(func(tx *bbolt.Tx) error {
		streams := tx.Bucket(bucketStreams)
		err := tx.Bucket(bucketSeqLog).ForEach(func(_, v []byte) error {
			return decodeSeqRecord(v, func(name []byte, next int64) {
				if old := streams.Get(name); old == nil || int64(binary.BigEndian.Uint64(old)) < next {
					require.NoError(t, streams.Put(name, u64(uint64(next))))
				}
			})
		})
		if err != nil {
			return err
		}
		if err := tx.DeleteBucket(bucketSeqLog); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyFormat, u64(fileFormatNoLog))
	}))
	require.NoError(t, db.Close())

	j = openT(t, path, Options{})
	require.Equal(t, want, j.Stats().NextSeq)
	es, err := j.Read(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, es, 1)
	require.Equal(t, e.ID, es[0].ID)
	e = newEntry("s0", "z")
	require.NoError(t, j.Append(ctx, e))
	require.Equal(t, int64(3), e.Seq)
	require.NoError(t, j.Close())

	db = rawBolt(t, path)
	require.NoError(t, db.View(func(tx *bbolt.Tx) error {
		require.Equal(t, u64(fileFormat), tx.Bucket(bucketMeta).Get(keyFormat))
		require.NotNil(t, tx.Bucket(bucketSeqLog))
		return nil
	}))
	require.NoError(t, db.Close())
	j = openT(t, path, Options{})
	e = newEntry("s0", "z")
	require.NoError(t, j.Append(ctx, e))
	require.Equal(t, int64(4), e.Seq, "after the upgrade, reopened")
}

// TestSeqLogCorrupt: a damaged sequence log record, or a format 2 file without the log, is
// ErrCorrupt at Open, never a silent loss of sequence numbers.
func TestSeqLogCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		harm func(tx *bbolt.Tx) error
	}{
		{"flipped byte", func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketSeqLog)
			k, v := b.Cursor().Last()
			v = append([]byte(nil), v...)
			v[len(v)-1] ^= 1
			return b.Put(k, v)
		}},
		{"truncated record", func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketSeqLog)
			k, v := b.Cursor().Last()
			return b.Put(k, append([]byte(nil), v[:3]...))
		}},
		{"log missing", func(tx *bbolt.Tx) error { return tx.DeleteBucket(bucketSeqLog) }},
		{"unknown format", func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, u64(fileFormat+1)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "j.db")
			j := openT(t, path, Options{})
			appendStreams(t, j, "s", 5)
			require.NoError(t, j.Close())
			db := rawBolt(t, path)
			require.NoError(t, db.Update(tc.harm))
			require.NoError(t, db.Close())
			_, err := Open(path, Options{Source: "test-src"})
			require.ErrorIs(t, err, ErrCorrupt)
		})
	}
}

func TestSeqRecordRoundTrip(t *testing.T) {
	seqs := map[string]int64{"a": 1, "stream/with:odd%bytes\x00": 1 << 40, "z": 7}
	rec := encodeSeqRecord(nil, seqs, seqs)
	got := map[string]int64{}
	require.NoError(t, decodeSeqRecord(rec, func(name []byte, next int64) { got[string(name)] = next }))
	require.Equal(t, seqs, got)
	for i := range len(rec) {
		require.Error(t, decodeSeqRecord(rec[:i], func([]byte, int64) {}), "cut at %d", i)
	}
}
