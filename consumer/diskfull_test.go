package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
)

// diskFullStore fails commits while full is set, as a BoltStore on a full disk does: with an
// error wrapping ErrStore and ErrDiskFull, nothing of the batch applied. afterStates makes the
// failure come after Batch.States was called, as when the write of the transaction fails: the
// worker's window then already holds the batch's marks and must be rolled back.
type diskFullStore struct {
	*consumer.BoltStore
	full        atomic.Bool
	afterStates bool
	failed      atomic.Int32
}

func (s *diskFullStore) Commit(ctx context.Context, b *consumer.Batch[*bolt.Tx]) error {
	if !s.full.Load() {
		return s.BoltStore.Commit(ctx, b)
	}
	s.failed.Add(1)
	if s.afterStates && b.States != nil {
		applied := make([]bool, len(b.Ops))
		for i := range applied {
			applied[i] = true
		}
		b.States(applied)
	}
	return fmt.Errorf("%w: %w: commit: the disk holding test.db is full: %w", consumer.ErrStore, consumer.ErrDiskFull, syscall.ENOSPC)
}

// A full disk does not end Run: nothing of the failed batches is acked, the consumer backs off
// and commits the same batch again, and once there is space every message is applied exactly
// once, its mark durable: after a restart a redelivery of every message is a duplicate. The
// transactional variant fails after Batch.States, so the window is ahead of the store and must be
// rolled back, or the retried batch would write no marks (its streams no longer dirty) and the
// redeliveries after the restart would be applied a second time.
func TestDiskFullBacksOffAndResumes(t *testing.T) {
	for _, tc := range []struct {
		name string
		tx   bool
	}{{"transactional", true}, {"plain", false}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, testbroker.SharedURL(t))
			ch := f.channel()
			bs, err := consumer.OpenBoltStore(f.path, consumer.BoltOptions{})
			require.NoError(t, err)
			defer bs.Close()
			fs := &diskFullStore{BoltStore: bs, afterStates: tc.tx}
			cfg := f.config()
			cfg.StorePath, cfg.MaxBatch = "", 5
			cfg.StoreRetryBackoff = func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }
			c, err := consumer.NewWithStore(cfg, fs)
			require.NoError(t, err)
			var cnt counter
			var run *running
			if tc.tx {
				run = start(t, c, nil, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error { return countEffect(tx, m) })
			} else {
				run = start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
			}
			applied := func() map[string]uint64 {
				if tc.tx {
					return effectsOf(t, c)
				}
				out := map[string]uint64{}
				for k, n := range cnt.snapshot() {
					out[k] = uint64(n)
				}
				return out
			}
			want := publishStreams(f, ch, []string{"a", "b"}, 1, 10)
			testutil.Eventually(t, 20*time.Second, "the first 20", func() bool {
				return len(applied()) == 20 && f.mem.Get(consumer.MetricHandled) == 20
			})

			// One message per new stream: no later batch rewrites a stream whose mark the retried
			// batch must write itself.
			fs.full.Store(true)
			var fresh []string
			for i := range 40 {
				fresh = append(fresh, fmt.Sprint("n", i))
			}
			want = append(want, publishStreams(f, ch, fresh, 1, 1)...)
			testutil.Eventually(t, 20*time.Second, "commits failing", func() bool { return fs.failed.Load() >= 5 })
			require.Equal(t, float64(20), f.mem.Get(consumer.MetricHandled), "nothing of a failed batch counts as handled")
			select {
			case <-run.done:
				t.Fatalf("Run ended on a full disk: %v", run.err)
			default:
			}
			require.Positive(t, f.mem.Get(consumer.MetricStoreRetries))

			fs.full.Store(false) // space again
			testutil.Eventually(t, 30*time.Second, "all 60 applied", func() bool { return len(applied()) == 60 })
			run.stop(t)
			require.NoError(t, run.err)
			requireExactlyOnce(t, applied(), want)

			// Every mark is durable: all 60 again are duplicates for the next Run.
			publishStreams(f, ch, []string{"a", "b"}, 1, 10)
			publishStreams(f, ch, fresh, 1, 1)
			if tc.tx {
				run = start(t, c, nil, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error { return countEffect(tx, m) })
			} else {
				run = start(t, c, func(_ context.Context, m *consumer.Message) error { cnt.add(m); return nil }, nil)
			}
			testutil.Eventually(t, 20*time.Second, "the copies drained", func() bool { return f.messages(ch, f.queue) == 0 })
			time.Sleep(200 * time.Millisecond) // the last acks
			run.stop(t)
			requireExactlyOnce(t, applied(), want)
		})
	}
}

// mountTmpfs mounts a tmpfs of size bytes at a new directory and returns it; unmounted at cleanup.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fs")
	require.NoError(t, os.Mkdir(dir, 0o700))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Geteuid() != 0 {
			// TestDiskFullBacksOffAndResumes covers the logic everywhere; this one needs root.
			t.Skipf("mounting a tmpfs needs root (uid %d): %v %s", os.Geteuid(), err, out)
		}
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes path until the file system is full and returns the bytes written.
func fillDisk(t *testing.T, path string) int {
	t.Helper()
	fh, err := os.Create(path)
	require.NoError(t, err)
	defer fh.Close()
	chunk := bytes.Repeat([]byte{0xee}, 16<<10)
	n := 0
	for {
		w, err := fh.Write(chunk)
		n += w
		if err != nil {
			require.True(t, errors.Is(err, syscall.ENOSPC), "filling: %v", err)
			return n
		}
	}
}

// The real thing: the store on a tmpfs that fills up. The transactional handler writes 64 KiB per
// message beside its mark, so every commit needs new pages; once the file system is full each
// commit fails with ENOSPC, Run goes on, nothing is acked, and when the filler is deleted the
// consumer resumes by itself and applies every message exactly once.
func TestDiskFullTmpfs(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	dir := mountTmpfs(t, 16<<20)
	ch := f.channel()
	cfg := f.config()
	cfg.StorePath, cfg.MaxBatch = filepath.Join(dir, "consumer.db"), 4
	cfg.StoreRetryBackoff = func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }
	c, err := consumer.New(cfg)
	require.NoError(t, err)
	blob := bytes.Repeat([]byte{1}, 64<<10)
	var attempts atomic.Int64
	run := start(t, c, nil, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
		attempts.Add(1)
		b, err := tx.CreateBucketIfNotExists([]byte("blobs"))
		if err != nil {
			return err
		}
		if err := b.Put([]byte(m.Stamp.String()), blob); err != nil {
			return err
		}
		return countEffect(tx, m)
	})
	want := publishStreams(f, ch, []string{"a"}, 1, 8)
	testutil.Eventually(t, 20*time.Second, "the first 8", func() bool {
		return len(effectsOf(t, c)) == 8 && f.mem.Get(consumer.MetricHandled) == 8
	})

	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)
	want = append(want, publishStreams(f, ch, []string{"a", "b"}, 9, 40)...)
	testutil.Eventually(t, 30*time.Second, "commits failing on ENOSPC", func() bool { return f.mem.Get(consumer.MetricStoreRetries) >= 3 })
	// A commit or two may still fit in pages the file had free; then nothing moves.
	stuck := f.mem.Get(consumer.MetricHandled)
	time.Sleep(500 * time.Millisecond)
	require.Equal(t, stuck, f.mem.Get(consumer.MetricHandled), "commits go on while the disk is full")
	require.Less(t, stuck, 72.0)
	require.Len(t, effectsOf(t, c), int(stuck), "nothing of a failed commit is applied")
	select {
	case <-run.done:
		t.Fatalf("Run ended on a full disk: %v", run.err)
	default:
	}

	require.NoError(t, os.Remove(filler))
	testutil.Eventually(t, 60*time.Second, "all 72 applied once there is space", func() bool { return len(effectsOf(t, c)) == 72 })
	run.stop(t)
	require.NoError(t, run.err)
	requireExactlyOnce(t, effectsOf(t, c), want)
	require.Greater(t, attempts.Load(), int64(72), "the failed batches' handlers ran again")
}
