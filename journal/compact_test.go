package journal

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fillAndDrain appends n entries of size bytes and deletes all but every
// keepEvery-th; it returns the kept IDs.
func fillAndDrain(t *testing.T, j *Journal, n, size, keepEvery int) []uint64 {
	t.Helper()
	ctx := context.Background()
	var kept, del []uint64
	for i := 0; i < n; i += 500 {
		var es []*Entry
		for k := range min(500, n-i) {
			es = append(es, &Entry{Stream: fmt.Sprint("s", k%2), Body: bytes.Repeat([]byte{byte(k)}, size)})
		}
		require.NoError(t, j.AppendBatch(ctx, es))
		for _, e := range es {
			if e.ID%uint64(keepEvery) == 0 {
				kept = append(kept, e.ID)
			} else {
				del = append(del, e.ID)
			}
		}
	}
	require.NoError(t, j.Delete(ctx, del...))
	return kept
}

func readIDs(t *testing.T, j *Journal) []uint64 {
	t.Helper()
	var ids []uint64
	var after uint64
	for {
		es, err := j.Read(context.Background(), after, 1000)
		require.NoError(t, err)
		if len(es) == 0 {
			return ids
		}
		for _, e := range es {
			ids = append(ids, e.ID)
		}
		after = es[len(es)-1].ID
	}
}

func TestCompact(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{TailCacheBytes: -1})
	kept := fillAndDrain(t, j, 10_000, 1000, 50)
	require.NoError(t, j.Park(ctx, kept[0], "parked before compaction"))
	kept = kept[1:]
	before := j.Stats()
	require.Greater(t, before.FreeBytes, before.FileSize/2)

	// Reads keep working while the compaction runs.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	readErrs := make(chan error, 1)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			es, err := j.Read(ctx, 0, 1000)
			if err == nil && len(es) != len(kept) {
				err = fmt.Errorf("read %d entries during compaction, want %d", len(es), len(kept))
			}
			if err != nil {
				readErrs <- err
				return
			}
		}
	})
	require.NoError(t, j.Compact(ctx))
	close(stop)
	wg.Wait()
	select {
	case err := <-readErrs:
		t.Fatal(err)
	default:
	}

	after := j.Stats()
	t.Logf("file %d -> %d bytes, free %d -> %d", before.FileSize, after.FileSize, before.FreeBytes, after.FreeBytes)
	assert.Less(t, after.FileSize, before.FileSize/4)
	assert.Equal(t, before.Pending, after.Pending)
	assert.Equal(t, before.NextSeq, after.NextSeq)
	assert.Equal(t, kept, readIDs(t, j))
	n := 0
	require.NoError(t, j.Parked(ctx, func(ParkedEntry) error { n++; return nil }))
	assert.Equal(t, 1, n)

	// Writes continue on the new file, sequences continue.
	e := newEntry("s0", "after compaction")
	require.NoError(t, j.Append(ctx, e))
	assert.Equal(t, before.NextSeq["s0"], e.Seq)

	// The new file is locked too: no second opener slips in after the rename.
	_, err := Open(path, Options{Source: "test-src", LockTimeout: 100 * time.Millisecond})
	require.ErrorIs(t, err, ErrLocked)

	require.NoError(t, j.Close())
	j2 := openT(t, path, Options{})
	assert.Equal(t, j.Epoch(), j2.Epoch())
	assert.Equal(t, append(kept, e.ID), readIDs(t, j2))
	checkFile(t, j2)
}

func TestAutoCompactAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	opts := Options{AutoCompactMinSize: 4 << 20}
	j := openT(t, path, Options{AutoCompactMinSize: -1})
	kept := fillAndDrain(t, j, 8_000, 1000, 100)
	before := j.Stats()
	require.NoError(t, j.Close())
	require.Greater(t, before.FileSize, int64(4<<20))

	// Below the threshold nothing happens.
	j = openT(t, path, Options{AutoCompactMinSize: before.FileSize + 1})
	assert.Equal(t, before.FileSize, j.Stats().FileSize)
	require.NoError(t, j.Close())

	require.NoError(t, os.WriteFile(compactPath(path), []byte("leftover of a crashed compaction"), 0o600))
	j = openT(t, path, opts)
	after := j.Stats()
	t.Logf("file %d -> %d bytes at open", before.FileSize, after.FileSize)
	assert.Less(t, after.FileSize, before.FileSize/4, "file did not shrink")
	assert.Equal(t, kept, readIDs(t, j))
	assert.Equal(t, before.NextSeq, after.NextSeq)
	_, err := os.Stat(compactPath(path))
	assert.True(t, os.IsNotExist(err), "temporary file left behind")
}

func TestAutoCompactAfterDeletes(t *testing.T) {
	ctx := context.Background()
	var logs bytes.Buffer
	j := openT(t, filepath.Join(t.TempDir(), "j.db"), Options{AutoCompactMinSize: 2 << 20, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	var ids []uint64
	for range 8 {
		es := make([]*Entry, 500)
		for k := range es {
			es[k] = &Entry{Stream: "s", Body: make([]byte, 1000)}
		}
		require.NoError(t, j.AppendBatch(ctx, es))
		for _, e := range es {
			ids = append(ids, e.ID)
		}
	}
	before := j.Stats()
	require.Greater(t, before.FileSize, int64(2<<20))
	require.NoError(t, j.Delete(ctx, ids[:len(ids)-10]...))
	// The writer compacts after answering the Delete; the next write queues
	// behind it.
	e := &Entry{Stream: "s"}
	require.NoError(t, j.Append(ctx, e))
	assert.Equal(t, before.NextSeq["s"], e.Seq)
	after := j.Stats()
	t.Logf("file %d -> %d bytes after deleting", before.FileSize, after.FileSize)
	assert.Less(t, after.FileSize, before.FileSize/4)
	assert.Contains(t, logs.String(), "journal compacted")
	assert.Equal(t, append(ids[len(ids)-10:], e.ID), readIDs(t, j))
}

// TestAutoCompactDefaults: with default Options, a file over 64 MiB that is
// mostly free space is compacted by Open, and nothing is lost.
func TestAutoCompactDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 64+ MiB file")
	}
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{AutoCompactMinSize: -1}) // fill without the writer compacting
	kept := fillAndDrain(t, j, 72_000, 1000, 1000)
	before := j.Stats()
	require.NoError(t, j.Close())
	require.Greater(t, before.FileSize, DefaultAutoCompactMinSize)

	j = openT(t, path, Options{})
	after := j.Stats()
	t.Logf("file %d MiB -> %d MiB at open with default options", before.FileSize>>20, after.FileSize>>20)
	assert.Less(t, after.FileSize, before.FileSize/10)
	assert.Equal(t, kept, readIDs(t, j))
	assert.Equal(t, before.NextSeq, after.NextSeq)
}
