package journal

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConcurrentMix runs every operation at once for a while, then checks
// that the counters, the tail cache and the file agree: Stats matches what
// Read and Parked return, nothing is both pending and parked, and every
// stream's sequence numbers are unique and below NextSeq.
func TestConcurrentMix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	path := filepath.Join(t.TempDir(), "j.db")
	j := openT(t, path, Options{TailCacheBytes: 64 << 10, MaxEntries: 3000})
	var wg sync.WaitGroup
	var appended atomic.Int64
	errs := make(chan error, 64)
	report := func(err error) {
		if err != nil && ctx.Err() == nil && !errors.Is(err, ErrNotFound) {
			select {
			case errs <- err:
			default:
			}
		}
	}
	for w := range 6 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				if i%4 == 0 {
					report(j.AppendBatch(ctx, []*Entry{newEntry(fmt.Sprint("s", w%3), "a"), newEntry("b", "b")}))
				} else {
					report(j.Append(ctx, newEntry(fmt.Sprint("s", w%3), fmt.Sprint(w, "-", i))))
				}
				appended.Add(1)
			}
		})
	}
	// The "publisher": reads pages, confirms most, records attempts, parks some.
	wg.Go(func() {
		var cursor uint64
		for ctx.Err() == nil {
			ch := j.Changed()
			es, err := j.Read(ctx, cursor, 50)
			report(err)
			if len(es) == 0 {
				cursor = 0
				select {
				case <-ch:
				case <-ctx.Done():
				}
				continue
			}
			var del, att []uint64
			for _, e := range es {
				switch e.ID % 10 {
				case 0:
					report(j.Park(ctx, e.ID, "test"))
				case 1, 2:
					att = append(att, e.ID)
				default:
					del = append(del, e.ID)
				}
			}
			report(j.RecordAttempt(ctx, att, OutcomeUnknown, "lost"))
			report(j.Delete(ctx, del...))
			cursor = es[len(es)-1].ID
		}
	})
	// The "operator": re-drives and drops parked entries.
	wg.Go(func() {
		for ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			n := 0
			report(j.Parked(ctx, func(p ParkedEntry) error {
				n++
				if n%2 == 0 {
					return j.Redrive(ctx, p.ID)
				}
				return j.DropParked(ctx, p.ID)
			}))
		}
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			_ = j.Stats()
			time.Sleep(5 * time.Millisecond)
		}
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			time.Sleep(300 * time.Millisecond)
			report(j.Compact(ctx))
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrFull) {
			t.Error(err)
		}
	}
	require.Greater(t, appended.Load(), int64(100))

	check := func(j *Journal) {
		t.Helper()
		bg := context.Background()
		st := j.Stats()
		pending := readAllEntries(t, j)
		var parked []ParkedEntry
		require.NoError(t, j.Parked(bg, func(p ParkedEntry) error { parked = append(parked, p); return nil }))
		assert.Equal(t, st.Pending, len(pending))
		assert.Equal(t, st.Parked, len(parked))
		var bytes int64
		seen := map[streamSeq]bool{}
		for _, e := range pending {
			enc, _, err := encodeEntry(nil, e, e.Created)
			require.NoError(t, err)
			bytes += int64(len(enc))
			ss := streamSeq{e.Stream, e.Seq}
			require.False(t, seen[ss], "%v twice", ss)
			seen[ss] = true
			require.Less(t, e.Seq, st.NextSeq[e.Stream])
		}
		assert.Equal(t, st.PendingBytes, bytes, "pending bytes counter drifted")
		for _, p := range parked {
			ss := streamSeq{p.Stream, p.Seq}
			require.False(t, seen[ss], "%v pending and parked", ss)
			seen[ss] = true
		}
	}
	check(j)
	require.NoError(t, j.Close())
	check(openT(t, path, Options{MaxEntries: 3000}))
}

func readAllEntries(t *testing.T, j *Journal) []*Entry {
	t.Helper()
	var out []*Entry
	var after uint64
	for {
		es, err := j.Read(context.Background(), after, 333)
		require.NoError(t, err)
		if len(es) == 0 {
			return out
		}
		out = append(out, es...)
		after = es[len(es)-1].ID
	}
}
