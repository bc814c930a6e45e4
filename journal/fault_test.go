package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/boltfile"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bbolt "go.etcd.io/bbolt"
)

// fillJournal creates a closed journal at dir/j.db with n entries.
func fillJournal(t *testing.T, dir string, n int) string {
	t.Helper()
	path := filepath.Join(dir, "j.db")
	j := openT(t, path, Options{})
	var es []*Entry
	for i := range n {
		es = append(es, newEntry(fmt.Sprint("s", i%3), strings.Repeat("x", 200)+fmt.Sprint(i)))
	}
	require.NoError(t, j.AppendBatch(context.Background(), es))
	require.NoError(t, j.Close())
	return path
}

func copyJournal(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "j.db")
	for _, suffix := range []string{"", ".id"} {
		b, err := os.ReadFile(src + suffix)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst+suffix, b, 0o600))
	}
	return dst
}

func TestZeroLengthFileWithMarker(t *testing.T) {
	path := fillJournal(t, t.TempDir(), 10)
	mk, err := readMarker(path)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, 0))

	_, err = Open(path, Options{Source: "test-src"})
	require.ErrorIs(t, err, ErrTruncated)
	assert.Contains(t, err.Error(), path)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Zero(t, fi.Size(), "a refused open leaves the file alone")

	var logs bytes.Buffer
	j := openT(t, path, Options{AllowNewEpoch: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	assert.NotEqual(t, mk.Epoch, j.Epoch())
	assert.Contains(t, logs.String(), "level=ERROR")
	assert.Contains(t, logs.String(), "NEW EPOCH")
	e := newEntry("s0", "fresh")
	require.NoError(t, j.Append(context.Background(), e))
	assert.Equal(t, int64(1), e.Seq)
	require.NoError(t, j.Close())
	// The marker now names the new epoch, so a plain reopen works.
	j2 := openT(t, path, Options{})
	assert.Equal(t, j.Epoch(), j2.Epoch())
}

func TestMissingFileWithMarker(t *testing.T) {
	path := fillJournal(t, t.TempDir(), 1)
	require.NoError(t, os.Remove(path))
	_, err := Open(path, Options{Source: "test-src"})
	require.ErrorIs(t, err, ErrTruncated)
	_, err = os.Stat(path)
	assert.True(t, os.IsNotExist(err), "refused open must not leave a new file behind")
}

func TestMissingMarkerIsRewritten(t *testing.T) {
	path := fillJournal(t, t.TempDir(), 1)
	mk, err := readMarker(path)
	require.NoError(t, err)
	require.NoError(t, os.Remove(markerPath(path)))
	j := openT(t, path, Options{})
	assert.Equal(t, mk.Epoch, j.Epoch())
	mk2, err := readMarker(path)
	require.NoError(t, err)
	assert.Equal(t, mk, mk2)
}

func TestMarkerFromOtherJournal(t *testing.T) {
	a := fillJournal(t, t.TempDir(), 1)
	b := fillJournal(t, t.TempDir(), 1)
	mb, err := os.ReadFile(markerPath(b))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(markerPath(a), mb, 0o600))
	_, err = Open(a, Options{Source: "test-src"})
	assert.ErrorIs(t, err, ErrCorrupt)
}

// TestTruncatedFile cuts a journal at many offsets. Whenever the cut removes
// pages the meta page refers to, Open must fail with ErrCorrupt; a cut that
// only removes preallocated space past the high-water mark may open, and then
// every entry must be intact. Never a crash.
func TestTruncatedFile(t *testing.T) {
	src := fillJournal(t, t.TempDir(), 2000)
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	m := boltfile.ParseMeta(orig)
	require.True(t, m.Valid)
	m1 := boltfile.ParseMeta(orig[m.PageSize:])
	if m1.Valid && m1.TxID > m.TxID {
		m = m1
	}
	hwm := int64(m.Pgid) * int64(m.PageSize)
	ps := int64(m.PageSize)
	offsets := []int64{1, 15, 100, ps - 1, ps, ps + 80, 2*ps - 1, 2 * ps, 3 * ps, hwm / 3, hwm / 2, hwm - ps, hwm - 1, hwm, int64(len(orig)) - 1}
	for range 10 {
		offsets = append(offsets, 1+rand.Int64N(int64(len(orig))-1))
	}
	for _, off := range offsets {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			path := copyJournal(t, src)
			require.NoError(t, os.Truncate(path, off))
			j, err := Open(path, Options{Source: "test-src", LockTimeout: time.Second})
			if off < hwm {
				require.ErrorIs(t, err, ErrCorrupt)
				assert.Contains(t, err.Error(), path)
				return
			}
			require.NoError(t, err)
			defer j.Close()
			es, err := j.Read(context.Background(), 0, 5000)
			require.NoError(t, err)
			assert.Len(t, es, 2000)
		})
	}
}

// TestGarbageFile: random bytes, with and without a marker, and a real
// journal whose meta pages are intact but whose data pages are garbage.
func TestGarbageFile(t *testing.T) {
	for _, size := range []int{1, 100, 4096, 8192, 64 << 10, 1 << 20} {
		for _, withMarker := range []bool{false, true} {
			t.Run(fmt.Sprint(size, "-marker-", withMarker), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "j.db")
				b := make([]byte, size)
				for i := range b {
					b[i] = byte(rand.Uint32())
				}
				require.NoError(t, os.WriteFile(path, b, 0o600))
				if withMarker {
					require.NoError(t, writeMarker(path, marker{Source: "test-src", Epoch: 7}))
				}
				_, err := Open(path, Options{Source: "test-src"})
				require.ErrorIs(t, err, ErrCorrupt)
			})
		}
	}
}

// TestGarbageDataPages keeps the meta pages valid and scribbles over data
// pages: the result is an error from Open or Read, never a crash.
func TestGarbageDataPages(t *testing.T) {
	src := fillJournal(t, t.TempDir(), 2000)
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	ps := int(binary.LittleEndian.Uint32(orig[boltfile.MetaOff+8:]))
	pages := len(orig) / ps
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			path := copyJournal(t, src)
			b := append([]byte(nil), orig...)
			victim := 2 + rand.IntN(pages-2)
			from := victim*ps + rand.IntN(ps)
			for k := from; k < min(len(b), from+1+rand.IntN(ps)); k++ {
				b[k] = byte(rand.Uint32())
			}
			require.NoError(t, os.WriteFile(path, b, 0o600))
			j, err := Open(path, Options{Source: "test-src"})
			if err != nil {
				t.Logf("page %d: Open: %v", victim, err)
				assert.ErrorIs(t, err, ErrCorrupt)
				return
			}
			defer j.Close()
			es, err := j.Read(context.Background(), 0, 5000)
			t.Logf("page %d: Read %d entries, err %v", victim, len(es), err)
			if err != nil {
				assert.ErrorIs(t, err, ErrCorrupt)
			}
		})
	}
}

func checkFile(t *testing.T, j *Journal) {
	t.Helper()
	require.NoError(t, j.view(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}))
}

func TestDiskFullMaxFileSize(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path, Options{Source: "s", MaxFileSize: 1 << 20})
	require.NoError(t, err)
	var acked []*Entry
	body := bytes.Repeat([]byte("d"), 2000)
	for {
		e := &Entry{Stream: "s", Body: body}
		err := j.Append(ctx, e)
		if err != nil {
			require.ErrorIs(t, err, ErrNoSpace)
			assert.Contains(t, err.Error(), path)
			break
		}
		acked = append(acked, e)
		require.Less(t, len(acked), 10_000, "never hit the size limit")
	}
	require.Greater(t, len(acked), 100)
	// Still full: fails again, and an AppendBatch fails as a whole.
	require.ErrorIs(t, j.Append(ctx, &Entry{Stream: "s", Body: body}), ErrNoSpace)
	es, err := j.Read(ctx, 0, 100_000)
	require.NoError(t, err)
	require.Len(t, es, len(acked), "nothing journaled is lost")
	for i, e := range es {
		assert.Equal(t, acked[i].ID, e.ID)
		assert.Equal(t, acked[i].Seq, e.Seq)
	}
	checkFile(t, j)

	// Space returns after deletes: freed pages are reused.
	var del []uint64
	for _, e := range acked[:len(acked)/2] {
		del = append(del, e.ID)
	}
	require.NoError(t, j.Delete(ctx, del...))
	e := &Entry{Stream: "s", Body: body}
	require.NoError(t, j.Append(ctx, e))
	assert.Equal(t, acked[len(acked)-1].Seq+1, e.Seq, "no sequence consumed by the failed appends")
	require.NoError(t, j.Close())

	// And after reopening with a larger limit.
	j = openT(t, path, Options{Source: "s", MaxFileSize: 4 << 20})
	for range 200 {
		require.NoError(t, j.Append(ctx, &Entry{Stream: "s", Body: body}))
	}
	es, err = j.Read(ctx, 0, 100_000)
	require.NoError(t, err)
	assert.Len(t, es, len(acked)-len(acked)/2+1+200)
	checkFile(t, j)
}

func TestSizeLimits(t *testing.T) {
	ctx := context.Background()
	j := openT(t, filepath.Join(t.TempDir(), "j.db"), Options{MaxMessageSize: 64 << 10})
	cases := []struct {
		name    string
		e       *Entry
		wantErr error
	}{
		{"zero-length body", &Entry{Stream: "s"}, nil},
		{"empty non-nil body", &Entry{Stream: "s", Body: []byte{}}, nil},
		{"body at limit", &Entry{Stream: "s", Body: make([]byte, 64<<10)}, nil},
		{"body over limit", &Entry{Stream: "s", Body: make([]byte, 64<<10+1)}, ErrTooLarge},
		{"headers push over limit", &Entry{Stream: "s", Body: make([]byte, 60<<10), Headers: map[string]any{"h": strings.Repeat("h", 5<<10)}}, ErrTooLarge},
		{"large headers under limit", &Entry{Stream: "s", Headers: map[string]any{"h": strings.Repeat("h", 60<<10), "n": map[string]any{"a": make([]byte, 1000)}}}, nil},
		{"many headers", &Entry{Stream: "s", Headers: manyHeaders(2000)}, nil},
		{"no stream", &Entry{Body: []byte("x")}, ErrInvalidEntry},
		{"bad header type", &Entry{Stream: "s", Headers: map[string]any{"x": struct{}{}}}, ErrInvalidEntry},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := j.Stats().Pending
			err := j.Append(ctx, tc.e)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				assert.Equal(t, before, j.Stats().Pending, "nothing journaled")
				return
			}
			require.NoError(t, err)
			es, err := j.Read(ctx, tc.e.ID-1, 1)
			require.NoError(t, err)
			require.Len(t, es, 1)
			assert.Equal(t, len(tc.e.Body), len(es[0].Body))
			assert.Equal(t, len(tc.e.Headers), len(es[0].Headers))
		})
	}
}

func manyHeaders(n int) map[string]any {
	h := make(map[string]any, n)
	for i := range n {
		h[fmt.Sprint("header-", i)] = int64(i)
	}
	return h
}

func TestDefaultMaxMessageSize(t *testing.T) {
	j := openT(t, filepath.Join(t.TempDir(), "j.db"), Options{})
	err := j.Append(context.Background(), &Entry{Stream: "s", Body: make([]byte, DefaultMaxMessageSize+1)})
	require.ErrorIs(t, err, ErrTooLarge)
}

func TestForeignBoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("users"))
		return err
	}))
	require.NoError(t, db.Close())
	_, err = Open(path, Options{Source: "s"})
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), "not a journal")
}

// TestCommitIOErrorBreaks swaps the journal's file descriptor for a read-only
// one so that the next commit fails with an I/O error: the journal must
// report ErrBroken (outcome unknown) and refuse further work, and a reopen
// must find everything committed before.
func TestCommitIOErrorBreaks(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := Open(path, Options{Source: "s"})
	require.NoError(t, err)
	first := &Entry{Stream: "s", Body: []byte("kept")}
	require.NoError(t, j.Append(ctx, first))

	fd := -1
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	for _, de := range ents {
		n, _ := strconv.Atoi(de.Name())
		if target, _ := os.Readlink("/proc/self/fd/" + de.Name()); target == path {
			fd = n
		}
	}
	require.NotEqual(t, -1, fd, "journal fd not found")
	ro, err := os.Open(path)
	require.NoError(t, err)
	require.NoError(t, syscall.Dup2(int(ro.Fd()), fd))
	require.NoError(t, ro.Close())

	err = j.Append(ctx, &Entry{Stream: "s", Body: []byte("lost or not")})
	require.ErrorIs(t, err, ErrBroken)
	assert.Contains(t, err.Error(), path)
	require.ErrorIs(t, j.Append(ctx, &Entry{Stream: "s"}), ErrBroken, "broken journal refuses work")
	require.ErrorIs(t, j.Delete(ctx, first.ID), ErrBroken)
	_ = j.Close() // the descriptor is not ours any more; errors are expected

	j2 := openT(t, path, Options{Source: "s"})
	es, err := j2.Read(ctx, 0, 10)
	require.NoError(t, err)
	require.NotEmpty(t, es)
	assert.Equal(t, "kept", string(es[0].Body))
	e := &Entry{Stream: "s"}
	require.NoError(t, j2.Append(ctx, e))
	assert.Equal(t, int64(len(es)+1), e.Seq, "sequences continue from what is on disk")
}

// TestCorruptFreelist: a freelist naming pages past the high-water mark or
// out of order would make bbolt hand out live pages; Open refuses it.
func TestCorruptFreelist(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, src, Options{AutoCompactMinSize: -1})
	kept := fillAndDrain(t, j, 3000, 500, 10)
	require.NotEmpty(t, kept)
	require.NoError(t, j.Append(ctx, newEntry("s", "x"))) // a commit after the deletes
	require.NoError(t, j.Close())
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	m := boltfile.ParseMeta(orig)
	if m1 := boltfile.ParseMeta(orig[m.PageSize:]); m1.Valid && m1.TxID > m.TxID {
		m = m1
	}
	require.NotEqual(t, boltfile.NoFreelist, m.Freelist)
	off := int(m.Freelist) * int(m.PageSize)
	count := binary.LittleEndian.Uint16(orig[off+10:])
	require.Greater(t, count, uint16(2), "test needs free pages")
	for name, id := range map[string]uint64{"past hwm": m.Pgid + 5, "meta page": 1, "out of order": 2} {
		t.Run(name, func(t *testing.T) {
			path := copyJournal(t, src)
			b := append([]byte(nil), orig...)
			binary.LittleEndian.PutUint64(b[off+boltfile.PageHeaderLen+8:], id) // the second id
			require.NoError(t, os.WriteFile(path, b, 0o600))
			_, err := Open(path, Options{Source: "test-src"})
			require.ErrorIs(t, err, ErrCorrupt)
			assert.Contains(t, err.Error(), "freelist")
		})
	}
	// The untouched file opens.
	j2 := openT(t, copyJournal(t, src), Options{AutoCompactMinSize: -1})
	assert.Equal(t, len(kept)+1, j2.Stats().Pending)
}
