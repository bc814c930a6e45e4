package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/boltfile"
	"github.com/rabbitkit/rabbitkit/journal"
)

// fillStore creates a closed store at dir/store.db with n streams, folded into the streams bucket
// and some in the log.
func fillStore(t *testing.T, dir string, n int) (string, model) {
	t.Helper()
	opts := tunedOptions(64<<10, 960)
	path := filepath.Join(dir, "store.db")
	s, err := OpenBoltStore(path, opts)
	require.NoError(t, err)
	m := model{}
	for i := 0; i < n; i += 100 {
		var sts []StreamState
		for j := i; j < i+100 && j < n; j++ {
			sts = append(sts, StreamState{Key: dedup.Key{Source: "src", Stream: fmt.Sprint("stream-", j)}, State: bytes.Repeat([]byte{byte(j)}, 40)})
		}
		commitStates(t, s, m, sts)
	}
	require.NoError(t, s.Close())
	return path, m
}

// A corrupt store is ErrCorrupt (with the path and what to do) at open, or at Load/View/Commit
// when only data pages are damaged: never a crash of the process.
func TestBoltStoreCorruptFile(t *testing.T) {
	src, _ := fillStore(t, t.TempDir(), 3000)
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	m := boltfile.ParseMeta(orig)
	require.True(t, m.Valid)
	ps := int(m.PageSize)
	hwm := int(m.Pgid) * ps
	garbage := func(off, n int) func([]byte) []byte {
		return func(b []byte) []byte {
			for i := off; i < off+n && i < len(b); i++ {
				b[i] = byte(i*131 + 7)
			}
			return b
		}
	}
	cut := func(n int) func([]byte) []byte { return func(b []byte) []byte { return b[:n] } }
	cases := []struct {
		name     string
		mutate   func([]byte) []byte
		openFail bool // ErrCorrupt expected from OpenBoltStore
	}{
		{"cut to 1 byte", cut(1), true},
		{"cut inside the first meta page", cut(100), true},
		{"cut after the meta pages", cut(2 * ps), true},
		{"cut at a third", cut(hwm / 3), true},
		{"cut one page short of the high-water mark", cut(hwm - ps), true},
		{"cut one byte short", cut(len(orig) - 1), false}, // may be preallocated space only
		{"both meta pages garbage", func(b []byte) []byte { return garbage(0, 2*ps)(b) }, true},
		{"page size garbage", func(b []byte) []byte {
			copy(b[boltfile.MetaOff+8:], []byte{0x34, 0x12, 0, 0})
			copy(b[ps+boltfile.MetaOff+8:], []byte{0x34, 0x12, 0, 0})
			return b
		}, true},
		{"freelist page garbage", func(b []byte) []byte {
			mm := boltfile.ParseMeta(b)
			if m1 := boltfile.ParseMeta(b[ps:]); m1.Valid && m1.TxID > mm.TxID {
				mm = m1
			}
			return garbage(int(mm.Freelist)*ps, ps)(b)
		}, true},
		{"data pages garbage at 4 pages", garbage(4*ps, 8*ps), false},
		{"data pages garbage at a half", garbage(hwm/2, 16*ps), false},
		{"data pages garbage near the end", garbage(hwm-10*ps, 9*ps), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			b := tc.mutate(append([]byte(nil), orig...))
			require.NoError(t, os.WriteFile(path, b, 0o600))
			// The dump tool's path: validated, read-only, faults recovered.
			verr := ViewBoltFile(path, func(tx *bolt.Tx) error {
				return tx.ForEach(func(_ []byte, bk *bolt.Bucket) error {
					return bk.ForEach(func(k, v []byte) error { return nil })
				})
			})
			s, err := OpenBoltStore(path, BoltOptions{NoSync: true})
			t.Logf("ViewBoltFile: %v; OpenBoltStore: %v", verr, err)
			if tc.openFail {
				require.ErrorIs(t, err, ErrCorrupt)
				require.ErrorIs(t, verr, ErrCorrupt)
				require.Contains(t, err.Error(), path)
				require.Contains(t, err.Error(), "restore the file")
				_, statErr := os.Stat(path)
				require.NoError(t, statErr, "the corrupt file is left as it was")
				return
			}
			if err != nil {
				require.True(t, errors.Is(err, ErrCorrupt) || errors.Is(err, ErrStore), "%v", err)
				return
			}
			defer func() { _ = s.Close() }()
			if _, err := s.Load(context.Background()); err != nil {
				require.ErrorIs(t, err, ErrStore)
				t.Logf("Load: %v", err)
			}
			err = s.Commit(context.Background(), &Batch[*bolt.Tx]{States: func([]bool) []StreamState {
				return []StreamState{{Key: dedup.Key{Source: "src", Stream: "stream-7"}, State: []byte("new")}}
			}})
			if err != nil {
				require.ErrorIs(t, err, ErrStore)
			}
		})
	}
}

func TestBoltStoreViewUserPanicGoesOn(t *testing.T) {
	s, err := OpenBoltStore(filepath.Join(t.TempDir(), "store.db"), BoltOptions{NoSync: true})
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	require.PanicsWithValue(t, "mine", func() {
		_ = s.View(context.Background(), func(*bolt.Tx) error { panic("mine") })
	})
	_, err = s.Load(context.Background())
	require.NoError(t, err, "the store still works")
}

type logBuf struct{ bytes.Buffer }

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(&l.Buffer, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// The marker <store>.id detects a store file that is lost, emptied or replaced.
func TestBoltStoreMarker(t *testing.T) {
	dir := t.TempDir()
	path, m := fillStore(t, dir, 50)
	mb, err := os.ReadFile(storeMarkerPath(path))
	require.NoError(t, err)
	var mk storeMarker
	require.NoError(t, json.Unmarshal(mb, &mk))
	require.Len(t, mk.ID, 32)
	orig, err := os.ReadFile(path)
	require.NoError(t, err)

	other := filepath.Join(t.TempDir(), "other.db")
	s, err := OpenBoltStore(other, BoltOptions{NoSync: true})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	otherB, err := os.ReadFile(other)
	require.NoError(t, err)

	for name, prepare := range map[string]func(){
		"missing":  func() { require.NoError(t, os.Remove(path)) },
		"empty":    func() { require.NoError(t, os.WriteFile(path, nil, 0o600)) },
		"replaced": func() { require.NoError(t, os.WriteFile(path, otherB, 0o600)) },
	} {
		t.Run(name, func(t *testing.T) {
			prepare()
			_, existed := os.Stat(path)
			_, err := OpenBoltStore(path, BoltOptions{NoSync: true})
			require.ErrorIs(t, err, ErrTruncated)
			require.Contains(t, err.Error(), "the store was lost: its redeliveries would be applied again")
			require.Contains(t, err.Error(), "AllowReset")
			if existed != nil {
				_, statErr := os.Stat(path)
				require.ErrorIs(t, statErr, os.ErrNotExist, "no file left behind")
			}

			var lb logBuf
			s, err := OpenBoltStore(path, BoltOptions{NoSync: true, AllowReset: true, Logger: lb.logger()})
			require.NoError(t, err)
			requireLoad(t, s, map[string][]byte{})
			require.NoError(t, s.Close())
			require.Contains(t, lb.String(), "level=ERROR")
			require.Contains(t, lb.String(), "applied again")
			s, err = OpenBoltStore(path, BoltOptions{NoSync: true}) // the marker follows the new store
			require.NoError(t, err)
			require.NoError(t, s.Close())

			// Back to the original store and its marker.
			require.NoError(t, os.WriteFile(path, orig, 0o600))
			require.NoError(t, os.WriteFile(storeMarkerPath(path), mb, 0o600))
		})
	}

	// The original with its marker opens; without a marker too, and the marker is rewritten.
	s, err = OpenBoltStore(path, BoltOptions{NoSync: true})
	require.NoError(t, err)
	requireLoad(t, s, m)
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(storeMarkerPath(path)))
	var lb logBuf
	s, err = OpenBoltStore(path, BoltOptions{NoSync: true, Logger: lb.logger()})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.Contains(t, lb.String(), "marker missing")
	mb2, err := os.ReadFile(storeMarkerPath(path))
	require.NoError(t, err)
	require.Equal(t, mb, mb2)
}

// A bbolt file that is not a consumer store is refused by name; a store with the buckets of
// transactional handlers beside its own is fine.
func TestBoltStoreNotAStore(t *testing.T) {
	dir := t.TempDir()
	jp := filepath.Join(dir, "journal.db")
	j, err := journal.Open(jp, journal.Options{Source: "src"})
	require.NoError(t, err)
	require.NoError(t, j.Close())
	before, err := os.ReadFile(jp)
	require.NoError(t, err)

	_, err = OpenBoltStore(jp, BoltOptions{NoSync: true})
	require.ErrorIs(t, err, ErrNotStore)
	require.Contains(t, err.Error(), "rabbitkit journal")
	require.Contains(t, err.Error(), jp)
	require.NoError(t, os.Remove(jp+".id")) // without the journal's marker: by its buckets
	_, err = OpenBoltStore(jp, BoltOptions{NoSync: true})
	require.ErrorIs(t, err, ErrNotStore)
	require.Contains(t, err.Error(), "rabbitkit journal")
	after, err := os.ReadFile(jp)
	require.NoError(t, err)
	require.Equal(t, before, after, "the journal is left as it was")
	_, err = os.Stat(jp + ".id")
	require.ErrorIs(t, err, os.ErrNotExist, "no store marker written")

	op := filepath.Join(dir, "other.db")
	db, err := bolt.Open(op, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("orders")); return err }))
	require.NoError(t, db.Close())
	_, err = OpenBoltStore(op, BoltOptions{NoSync: true})
	require.ErrorIs(t, err, ErrNotStore)
	require.Contains(t, err.Error(), `"orders"`)

	// A store whose handlers keep buckets of their own in its file.
	sp := filepath.Join(dir, "store.db")
	s, err := OpenBoltStore(sp, BoltOptions{NoSync: true})
	require.NoError(t, err)
	require.NoError(t, s.Commit(context.Background(), &Batch[*bolt.Tx]{Ops: []Op[*bolt.Tx]{{
		Key: dedup.Key{Source: "src", Stream: "a"},
		Effect: func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("orders"))
			if err != nil {
				return err
			}
			return b.Put([]byte("1"), []byte("one"))
		},
	}}}))
	require.NoError(t, s.Close())
	s, err = OpenBoltStore(sp, BoltOptions{NoSync: true})
	require.NoError(t, err)
	require.NoError(t, s.View(context.Background(), func(tx *bolt.Tx) error {
		require.Equal(t, []byte("one"), tx.Bucket([]byte("orders")).Get([]byte("1")))
		return nil
	}))
	require.NoError(t, s.Close())
}

// A commit that finds the disk full fails (nothing of it applied) and its error says so.
func TestBoltStoreDiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := OpenBoltStore(path, BoltOptions{NoSync: true, tune: boltTunables{maxSize: 256 << 10}})
	require.NoError(t, err)
	defer func() { _ = s.Close() }()
	m := model{}
	commitStates(t, s, m, []StreamState{{Key: dedup.Key{Source: "src", Stream: "small"}, State: []byte("x")}})
	applied := false
	err = s.Commit(context.Background(), &Batch[*bolt.Tx]{
		Ops: []Op[*bolt.Tx]{{Key: dedup.Key{Source: "src", Stream: "big"}, Effect: func(tx *bolt.Tx) error {
			applied = true
			b, err := tx.CreateBucketIfNotExists([]byte("blobs"))
			if err != nil {
				return err
			}
			return b.Put([]byte("blob"), bytes.Repeat([]byte{1}, 1<<20))
		}}},
		States: func([]bool) []StreamState {
			return []StreamState{{Key: dedup.Key{Source: "src", Stream: "big"}, State: []byte("y")}}
		},
	})
	require.True(t, applied)
	require.ErrorIs(t, err, ErrStore)
	require.Contains(t, err.Error(), "the disk holding "+path+" is full")
	requireLoad(t, s, m) // nothing of the failed commit
	require.NoError(t, s.View(context.Background(), func(tx *bolt.Tx) error {
		require.Nil(t, tx.Bucket([]byte("blobs")))
		return nil
	}))

	e := writeErr(path, "commit", fmt.Errorf("write: %w", syscall.ENOSPC))
	require.ErrorIs(t, e, ErrStore)
	require.ErrorIs(t, e, syscall.ENOSPC)
	require.True(t, strings.Contains(e.Error(), "is full"), e.Error())
}
