package journal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bbolt "go.etcd.io/bbolt"
)

func compactPath(path string) string { return path + ".compact" }

// compact copies the live data into <path>.compact, fsyncs it, renames it
// over path and swaps the open database. It runs on the writer goroutine (or
// in Open before the writer starts), so no write is in flight. The new file
// is opened and locked before the rename, so no other process can slip in
// between the rename and our use of the new file.
func (j *Journal) compact(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := j.brokenErr(); err != nil {
		return err
	}
	start := time.Now()
	before, _ := os.Stat(j.path)
	tmp := compactPath(j.path)
	_ = os.Remove(tmp)
	f, _, err := lockFile(tmp, j.opts.LockTimeout)
	if err != nil {
		return err
	}
	dst, err := openBolt(tmp, f, j.opts)
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	fail := func(err error) error {
		_ = dst.Close()
		_ = os.Remove(tmp)
		return err
	}
	// The copy commits several transactions; durability comes from the Sync
	// below, before the rename makes the file visible.
	dst.NoSync = true
	if err := bbolt.Compact(dst, j.db, 16<<20); err != nil {
		return fail(mapWriteErr(tmp, err))
	}
	dst.NoSync = false
	if err := dst.Sync(); err != nil {
		return fail(mapWriteErr(tmp, err))
	}
	if err := os.Rename(tmp, j.path); err != nil {
		return fail(fmt.Errorf("journal: compact: rename: %w", err))
	}
	if err := syncDir(filepath.Dir(j.path)); err != nil {
		// The rename happened; the new file is complete either way.
		j.log.Warn("journal compaction: directory sync failed", "err", err)
	}
	j.dbMu.Lock()
	old := j.db
	j.db = dst
	j.dbMu.Unlock()
	if err := old.Close(); err != nil {
		j.log.Warn("journal compaction: closing the old file", "err", err)
	}
	after, _ := os.Stat(j.path)
	if before != nil && after != nil {
		j.log.Info("journal compacted", "before_bytes", before.Size(), "after_bytes", after.Size(), "took", time.Since(start))
	}
	return nil
}

// maybeAutoCompact compacts at Open when the file is larger than
// AutoCompactMinSize and more than half of it is free pages.
func (j *Journal) maybeAutoCompact() error {
	if j.opts.AutoCompactMinSize < 0 {
		return nil
	}
	fi, err := os.Stat(j.path)
	if err != nil {
		return fmt.Errorf("journal: stat %s: %w", j.path, err)
	}
	free := freeBytes(j.db)
	if fi.Size() <= j.opts.AutoCompactMinSize || free*2 <= fi.Size() {
		return nil
	}
	j.log.Info("journal mostly free space: compacting", "file_bytes", fi.Size(), "free_bytes", free)
	if err := j.compact(context.Background()); err != nil {
		// Not fatal: the journal works uncompacted.
		j.log.Error("journal auto-compaction failed", "err", err)
	}
	return nil
}

// freeBytes is the size of the free pages (bbolt's FreeAlloc is only
// updated by write transactions, not at open).
func freeBytes(db *bbolt.DB) int64 {
	st := db.Stats()
	return int64(st.FreePageN+st.PendingPageN) * int64(db.Info().PageSize)
}
