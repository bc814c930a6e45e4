package journal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if runCrashChild() || runLockChild() {
		return
	}
	goleak.VerifyTestMain(m)
}

func openT(t *testing.T, path string, opts Options) *Journal {
	t.Helper()
	if opts.Source == "" {
		opts.Source = "test-src"
	}
	j, err := Open(path, withTestFold(opts))
	require.NoError(t, err)
	t.Cleanup(func() { _ = j.Close() })
	return j
}

func newEntry(stream string, body string) *Entry {
	return &Entry{Stream: stream, Exchange: "ex", RoutingKey: stream, Body: []byte(body)}
}

func TestAppendReadDelete(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{})
	assert.Greater(t, j.Epoch(), int64(0))
	assert.Equal(t, "test-src", j.Source())
	assert.Equal(t, path, j.Path())
	for _, p := range []string{path, markerPath(path)} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
	}

	var ids []uint64
	for i := range 10 {
		stream := []string{"a", "b"}[i%2]
		e := newEntry(stream, fmt.Sprint("m", i))
		require.NoError(t, j.Append(ctx, e))
		assert.Equal(t, uint64(i+1), e.ID)
		assert.Equal(t, int64(i/2+1), e.Seq)
		assert.False(t, e.Created.IsZero())
		ids = append(ids, e.ID)
	}
	es, err := j.Read(ctx, 0, 100)
	require.NoError(t, err)
	require.Len(t, es, 10)
	for i, e := range es {
		assert.Equal(t, ids[i], e.ID)
		assert.Equal(t, fmt.Sprint("m", i), string(e.Body))
	}
	es, err = j.Read(ctx, 4, 3)
	require.NoError(t, err)
	require.Len(t, es, 3)
	assert.Equal(t, uint64(5), es[0].ID)

	require.NoError(t, j.Delete(ctx, 1, 2, 3, 999))
	st := j.Stats()
	assert.Equal(t, 7, st.Pending)
	assert.Equal(t, map[string]int64{"a": 6, "b": 6}, st.NextSeq)
	assert.False(t, st.OldestPending.IsZero())

	// Restart: sequences continue, never reused.
	require.NoError(t, j.Close())
	require.NoError(t, j.Close(), "Close is idempotent")
	assert.ErrorIs(t, j.Append(ctx, newEntry("a", "x")), ErrClosed)
	_, err = j.Read(ctx, 0, 1)
	assert.ErrorIs(t, err, ErrClosed)

	j2 := openT(t, path, Options{})
	assert.Equal(t, j.Epoch(), j2.Epoch())
	e := newEntry("a", "after restart")
	require.NoError(t, j2.Append(ctx, e))
	assert.Equal(t, uint64(11), e.ID)
	assert.Equal(t, int64(6), e.Seq)
	es, err = j2.Read(ctx, 0, 100)
	require.NoError(t, err)
	require.Len(t, es, 8)
	assert.Equal(t, uint64(4), es[0].ID)
}

func TestOpenOptionsValidated(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "j.db"), Options{})
	assert.ErrorIs(t, err, ErrInvalidOptions)
	_, err = Open(filepath.Join(t.TempDir(), "j.db"), Options{Source: "s", MaxBytes: -1})
	assert.ErrorIs(t, err, ErrInvalidOptions)
}

func TestSourceMismatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{Source: "one"})
	require.NoError(t, j.Close())
	_, err := Open(path, Options{Source: "two"})
	require.ErrorIs(t, err, ErrSourceMismatch)
	assert.Contains(t, err.Error(), path)
}

func TestSourceOf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	_, err := SourceOf(path)
	require.ErrorIs(t, err, fs.ErrNotExist)
	j := openT(t, path, Options{Source: "orders-api-1"})
	require.NoError(t, j.Close())
	src, err := SourceOf(path)
	require.NoError(t, err)
	require.Equal(t, "orders-api-1", src)
	require.NoError(t, os.WriteFile(path+".id", []byte("garbage"), 0o600))
	_, err = SourceOf(path)
	require.ErrorIs(t, err, ErrCorrupt)
}

func TestAppendCancelledContext(t *testing.T) {
	j := openT(t, filepath.Join(t.TempDir(), "j.db"), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := j.Append(ctx, newEntry("a", "x"))
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 0, j.Stats().Pending)
}

// TestStatsAndReadRaceClose: Stats, Read and Append racing Close never panic
// and end with ErrClosed.
func TestStatsAndReadRaceClose(t *testing.T) {
	for range 20 {
		j, err := Open(filepath.Join(t.TempDir(), "j.db"), Options{Source: "s"})
		require.NoError(t, err)
		ctx := context.Background()
		require.NoError(t, j.Append(ctx, newEntry("s", "x")))
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				for {
					_ = j.Stats()
					_ = j.Backlog()
					_, rerr := j.Read(ctx, 0, 10)
					aerr := j.Append(ctx, newEntry("s", "y"))
					if errors.Is(rerr, ErrClosed) && errors.Is(aerr, ErrClosed) {
						return
					}
				}
			})
		}
		time.Sleep(time.Millisecond)
		require.NoError(t, j.Close())
		wg.Wait()
	}
}

// TestBacklogAgreesWithStats: Backlog is Stats without the per-stream copy.
func TestBacklogAgreesWithStats(t *testing.T) {
	ctx := context.Background()
	j := openT(t, filepath.Join(t.TempDir(), "j.db"), Options{})
	require.Zero(t, j.Backlog())
	for i := range 5 {
		require.NoError(t, j.Append(ctx, newEntry(fmt.Sprint("s", i), "x")))
	}
	es, err := j.Read(ctx, 0, 10)
	require.NoError(t, err)
	require.NoError(t, j.Park(ctx, es[1].ID, "test"))
	require.NoError(t, j.Delete(ctx, es[0].ID))
	st, b := j.Stats(), j.Backlog()
	require.Equal(t, Backlog{Pending: st.Pending, PendingBytes: st.PendingBytes, Parked: st.Parked, ParkedBytes: st.ParkedBytes, OldestPending: st.OldestPending}, b)
	require.Equal(t, 3, b.Pending)
	require.Equal(t, 1, b.Parked)
	require.Equal(t, es[2].Created, b.OldestPending)
}

// TestReadReturnsWhatWasAppended: every field survives the journal, from the
// tail cache and from bbolt alike.
func TestReadReturnsWhatWasAppended(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{})
	e := fullEntry()
	e.ID, e.Seq = 0, 0
	e2 := fullEntry()
	e2.ID, e2.Seq, e2.Created = 0, 0, time.Time{}
	require.NoError(t, j.AppendBatch(ctx, []*Entry{e, e2}))
	es, err := j.Read(ctx, 0, 10) // tail cache
	require.NoError(t, err)
	require.Len(t, es, 2)
	assert.Equal(t, e, es[0])
	assert.Equal(t, e2, es[1])
	require.NoError(t, j.Close())
	j = openT(t, path, Options{})
	es, err = j.Read(ctx, 0, 10) // bbolt
	require.NoError(t, err)
	require.Len(t, es, 2)
	assert.Equal(t, e, es[0])
	assert.Equal(t, e2, es[1])
}

// TestPageSize: a new file gets Options.PageSize (default 16 KiB); an existing file keeps its own,
// through reopening and compaction; a page size bbolt cannot use is refused.
func TestPageSize(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	j := openT(t, filepath.Join(dir, "new.db"), Options{})
	require.Equal(t, DefaultPageSize, j.db.Info().PageSize)

	path := filepath.Join(dir, "old.db")
	j = openT(t, path, Options{PageSize: 4096})
	require.NoError(t, j.Append(ctx, newEntry("s", "x")))
	require.NoError(t, j.Close())
	j = openT(t, path, Options{})
	require.Equal(t, 4096, j.db.Info().PageSize, "an existing file keeps its page size")
	require.NoError(t, j.Compact(ctx))
	require.Equal(t, 4096, j.db.Info().PageSize, "so does its compacted copy")
	es, err := j.Read(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, es, 1)

	for _, ps := range []int{-1, 1024, 5000, 2 << 20} {
		_, err := Open(filepath.Join(dir, "bad.db"), Options{Source: "s", PageSize: ps})
		require.ErrorIs(t, err, ErrInvalidOptions, "page size %d", ps)
	}
}
