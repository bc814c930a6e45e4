package consumer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// Test hooks for the crash tests' child processes (crash_test.go), which are this test binary.
const (
	// EnvStoreFoldEvery: fold the stream log once it holds this many bytes, whatever the size of
	// the streams bucket.
	EnvStoreFoldEvery = "RABBITKIT_CONSUMER_STORE_FOLD_EVERY"
	// EnvStoreKillAt: "record:N" SIGKILLs the process at the Nth commit that makes the log due for
	// a fold (durable, its callers not answered, not folded); "fold:N" inside the Nth fold's
	// transaction, after its writes, before it commits.
	EnvStoreKillAt = "RABBITKIT_CONSUMER_STORE_KILL_AT"
)

// ChildBoltOptions are the store options of a crash test's child process: the tunables its
// environment sets (EnvStoreFoldEvery, EnvStoreKillAt).
func ChildBoltOptions() BoltOptions {
	var o BoltOptions
	if n, err := strconv.ParseInt(os.Getenv(EnvStoreFoldEvery), 10, 64); err == nil && n > 0 {
		o.tune.foldEvery = n
	}
	if point, nth, ok := strings.Cut(os.Getenv(EnvStoreKillAt), ":"); ok {
		n, _ := strconv.Atoi(nth)
		seen := 0
		o.tune.hook = func(p string) error {
			if p == point {
				if seen++; seen == n {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {}
				}
			}
			return nil
		}
	}
	return o
}

// tunedOptions are the options of a test store whose log folds once it holds foldEvery bytes and
// cuts records at chunk bytes.
func tunedOptions(foldEvery int64, chunk int) BoltOptions {
	return BoltOptions{NoSync: true, tune: boltTunables{foldEvery: foldEvery, chunkBytes: chunk}}
}

// model is what Load must return: key (dedup.AppendKey) -> state.
type model map[string][]byte

func commitStates(t *testing.T, s *BoltStore, m model, sts []StreamState) {
	t.Helper()
	require.NoError(t, s.Commit(context.Background(), &Batch[*bolt.Tx]{States: func([]bool) []StreamState { return sts }}))
	for _, st := range sts {
		k := string(dedup.AppendKey(nil, st.Key))
		if st.State == nil {
			delete(m, k)
		} else {
			m[k] = st.State
		}
	}
}

func requireLoad(t *testing.T, s *BoltStore, m model) {
	t.Helper()
	got, err := s.Load(context.Background())
	require.NoError(t, err)
	gm := model{}
	var prev []byte
	for _, st := range got {
		k := dedup.AppendKey(nil, st.Key)
		require.True(t, prev == nil || bytes.Compare(prev, k) < 0, "Load: keys out of order or twice: %q after %q", k, prev)
		prev = k
		require.NotNil(t, st.State, "Load: nil state for %s", st.Key)
		gm[string(k)] = st.State
	}
	require.Equal(t, len(m), len(gm), "Load: number of streams")
	for k, v := range m {
		g, ok := gm[k]
		require.True(t, ok, "Load: stream %q missing", k)
		require.True(t, bytes.Equal(v, g), "Load: stream %q: %x, want %x", k, g, v)
	}
}

func logRecords(t *testing.T, s *BoltStore) (n int) {
	t.Helper()
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketLog).Stats().KeyN; return nil }))
	return n
}

// Load returns exactly the committed states whatever the log holds: random puts, updates,
// deletions (also of streams never stored, and of streams only in the log), a stream twice in one
// batch, empty states; folded never, after every commit or now and then; small and normal records;
// reopened now and then.
func TestStreamLogMatchesModel(t *testing.T) {
	for _, tc := range []struct {
		foldEvery int64
		chunk     int
	}{{1 << 40, 960}, {1 << 40, 48}, {1, 960}, {1, 48}, {3000, 200}, {0, 960}} {
		t.Run(fmt.Sprintf("fold=%d/chunk=%d", tc.foldEvery, tc.chunk), func(t *testing.T) {
			opts := tunedOptions(tc.foldEvery, tc.chunk)
			rounds, reopen := 300, 60
			if testing.Short() { // make unit: the same cases, fewer commits
				rounds, reopen = 60, 20
			}
			rng := rand.New(rand.NewPCG(uint64(tc.foldEvery), uint64(tc.chunk)))
			path := filepath.Join(t.TempDir(), "store.db")
			var folds atomic.Int64
			opts.tune.hook = func(p string) error {
				if p == "fold" {
					folds.Add(1)
				}
				return nil
			}
			s, err := OpenBoltStore(path, opts)
			require.NoError(t, err)
			defer func() { _ = s.Close() }()
			m := model{}
			randKey := func() dedup.Key {
				return dedup.Key{Source: []string{"a", "src", ""}[rng.IntN(3)], Stream: fmt.Sprintf("s%x", rng.Uint32()%300)}
			}
			for i := range rounds {
				var sts []StreamState
				for range 1 + rng.IntN(60) {
					st := StreamState{Key: randKey()}
					switch rng.IntN(10) {
					case 0: // deletion
					case 1:
						st.State = []byte{}
					default:
						st.State = make([]byte, 1+rng.IntN(60))
						for j := range st.State {
							st.State[j] = byte(rng.Uint32())
						}
					}
					sts = append(sts, st)
				}
				if rng.IntN(5) == 0 { // the same stream again, later in the batch: this one wins
					sts = append(sts, StreamState{Key: sts[0].Key, State: []byte(fmt.Sprint("again", i))})
				}
				commitStates(t, s, m, sts)
				requireLoad(t, s, m)
				if i%reopen == reopen-1 {
					require.NoError(t, s.Close())
					s, err = OpenBoltStore(path, opts)
					require.NoError(t, err)
					requireLoad(t, s, m)
				}
			}
			require.NoError(t, s.Close()) // the writer is done: its last fold too
			s, err = OpenBoltStore(path, opts)
			require.NoError(t, err)
			requireLoad(t, s, m)
			switch tc.foldEvery {
			case 1 << 40:
				require.Zero(t, folds.Load(), "folds")
				require.Positive(t, logRecords(t, s))
			case 1:
				require.Equal(t, int64(rounds), folds.Load(), "folds")
				require.Zero(t, logRecords(t, s), "log after a fold")
			case 3000:
				require.Positive(t, folds.Load(), "folds")
			}
		})
	}
}

// A fold that fails (disk full) leaves the log as it was: nothing lost, and it is retried.
func TestStreamLogFoldFailureLosesNothing(t *testing.T) {
	opts := tunedOptions(1, 960)
	opts.tune.foldRetryAfter = time.Nanosecond
	var failing atomic.Bool
	failing.Store(true)
	opts.tune.hook = func(p string) error {
		if p == "fold" && failing.Load() {
			return errors.New("disk full")
		}
		return nil
	}
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBoltStore(path, opts)
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	m := model{}
	k := func(i int) dedup.Key { return dedup.Key{Source: "src", Stream: fmt.Sprint("s", i)} }
	commitStates(t, s, m, []StreamState{{Key: k(1), State: []byte("one")}, {Key: k(2), State: []byte("two")}})
	commitStates(t, s, m, []StreamState{{Key: k(2)}, {Key: k(3), State: []byte("three")}})
	require.Equal(t, 2, logRecords(t, s), "two records, no fold")
	requireLoad(t, s, m)
	failing.Store(false)
	commitStates(t, s, m, []StreamState{{Key: k(1), State: []byte("uno")}})
	require.NoError(t, s.Close())
	s, err = OpenBoltStore(path, opts)
	require.NoError(t, err)
	require.Zero(t, logRecords(t, s), "folded")
	requireLoad(t, s, m)
}

// writeFormat1 writes a store file as versions before the stream log did: states in the streams
// bucket only, no meta bucket; plus an application bucket.
func writeFormat1(t *testing.T, path string, states map[dedup.Key]string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketStreams)
		if err != nil {
			return err
		}
		for k, v := range states {
			if err := b.Put(dedup.AppendKey(nil, k), append(make([]byte, 8), v...)); err != nil {
				return err
			}
		}
		app, err := tx.CreateBucket([]byte("effects"))
		if err != nil {
			return err
		}
		return app.Put([]byte("k"), []byte("v"))
	}))
	require.NoError(t, db.Close())
}

// A file of format 1 is upgraded at open: its states load, later commits go to the log, and a
// format 1 version's Load (dedup.ParseKey on every key of the streams bucket) refuses it then.
func TestStoreUpgradesFormat1(t *testing.T) {
	opts := tunedOptions(1<<40, 960)
	path := filepath.Join(t.TempDir(), "store.db")
	a, b, c := dedup.Key{Source: "src", Stream: "a"}, dedup.Key{Source: "src", Stream: "b"}, dedup.Key{Source: "src", Stream: "c"}
	writeFormat1(t, path, map[dedup.Key]string{a: "A1", b: "B1"})
	s, err := OpenBoltStore(path, opts)
	require.NoError(t, err)
	m := model{string(dedup.AppendKey(nil, a)): []byte("A1"), string(dedup.AppendKey(nil, b)): []byte("B1")}
	requireLoad(t, s, m)
	commitStates(t, s, m, []StreamState{{Key: a}, {Key: b, State: []byte("B2")}, {Key: c, State: []byte("C1")}})
	require.NoError(t, s.Close())

	s, err = OpenBoltStore(path, opts)
	require.NoError(t, err)
	requireLoad(t, s, m)
	require.NoError(t, s.View(context.Background(), func(tx *bolt.Tx) error {
		require.Equal(t, binary.BigEndian.AppendUint64(nil, storeFormat), tx.Bucket(bucketMeta).Get(keyFormat))
		require.Equal(t, []byte("v"), tx.Bucket([]byte("effects")).Get([]byte("k")), "the application's bucket")
		var oldLoad error
		_ = tx.Bucket(bucketStreams).ForEach(func(k, _ []byte) error {
			_, oldLoad = dedup.ParseKey(k)
			return oldLoad
		})
		require.Error(t, oldLoad, "a format 1 version's Load must fail on this file")
		return nil
	}))
	require.NoError(t, s.Close())
}

// A file of a later format is refused with an error that says so; a malformed format too.
func TestStoreRefusesLaterFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBoltStore(path, BoltOptions{NoSync: true})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	for _, v := range [][]byte{binary.BigEndian.AppendUint64(nil, storeFormat+1), []byte("x")} {
		db, err := bolt.Open(path, 0o600, nil)
		require.NoError(t, err)
		require.NoError(t, db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, v) }))
		require.NoError(t, db.Close())
		_, err = OpenBoltStore(path, BoltOptions{NoSync: true})
		require.ErrorIs(t, err, ErrStore)
		if len(v) == 8 {
			require.ErrorContains(t, err, "file format 3, written by a later version")
		} else {
			require.ErrorContains(t, err, "format missing or malformed")
		}
	}
}

// A damaged log record fails Load (and the fold) instead of returning wrong states.
func TestStreamLogCorruptRecord(t *testing.T) {
	opts := tunedOptions(1<<40, 960)
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBoltStore(path, opts)
	require.NoError(t, err)
	commitStates(t, s, model{}, []StreamState{{Key: dedup.Key{Source: "s", Stream: "a"}, State: []byte("state")}})
	require.NoError(t, s.Close())
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLog)
		k, v := b.Cursor().First()
		v = append([]byte(nil), v...)
		v[len(v)-1] ^= 1
		return b.Put(append([]byte(nil), k...), v)
	}))
	require.NoError(t, db.Close())
	s, err = OpenBoltStore(path, opts)
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	_, err = s.Load(context.Background())
	require.ErrorIs(t, err, ErrStore)
	require.ErrorContains(t, err, "checksum mismatch")
}

// Records: a commit's states are cut into records of about boltTunables.chunkBytes, each in key order;
// the decoder rejects truncations.
func TestStreamLogRecords(t *testing.T) {
	opts := tunedOptions(1<<40, 100)
	s, err := OpenBoltStore(filepath.Join(t.TempDir(), "store.db"), opts)
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	m := model{}
	var sts []StreamState
	for i := range 50 {
		sts = append(sts, StreamState{Key: dedup.Key{Source: "src", Stream: fmt.Sprintf("s%03d", (i*37)%50)}, State: bytes.Repeat([]byte{byte(i)}, 10)})
	}
	commitStates(t, s, m, sts)
	n := logRecords(t, s)
	require.Greater(t, n, 5, "records")
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLog).ForEach(func(k, v []byte) error {
			require.LessOrEqual(t, len(v), 100, "record %x", k)
			for cut := logRecHeader; cut < len(v); cut++ {
				r := logRun{rest: v[logRecHeader:cut]}
				var err error
				for ok := true; ok && err == nil; ok, err = r.advance() {
				}
				if err == nil && cut < len(v) {
					// A cut on an entry boundary decodes: the crc guards those.
					continue
				}
				require.ErrorIs(t, err, errLogRecord)
			}
			return nil
		})
	}))
	requireLoad(t, s, m)
}
