package journal

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A second Open that waits for the lock while the holder compacts must not end up holding the lock
// of the old, unlinked file: it must keep waiting on the new file and fail with ErrLocked.
func TestOpenWaitingDuringCompactionStaysLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	ctx := context.Background()
	j := openT(t, path, Options{})
	for range 3 {
		require.NoError(t, j.Append(ctx, newEntry("x", "a")))
	}
	type result struct {
		j   *Journal
		err error
	}
	second := make(chan result, 1)
	go func() {
		j2, err := Open(path, Options{Source: "test-src", LockTimeout: 2 * time.Second})
		second <- result{j2, err}
	}()
	time.Sleep(300 * time.Millisecond) // the second Open is now waiting for the lock
	require.NoError(t, j.Compact(ctx))
	r := <-second
	if r.err == nil {
		_ = r.j.Close()
	}
	require.ErrorIs(t, r.err, ErrLocked, "a second opener must never share a journal with its holder")

	// The holder still works, and a later opener sees exactly what it wrote.
	e := newEntry("x", "after")
	require.NoError(t, j.Append(ctx, e))
	require.EqualValues(t, 4, e.Seq)
}
