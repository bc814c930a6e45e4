package journal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/boltfile"
	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// lockFile opens (creating if needed, mode 0600) and exclusively flocks path,
// waiting at most timeout (internal/boltfile). bbolt later adopts the returned
// descriptor (Options.OpenFile), so the lock is held from validation to Close.
func lockFile(path string, timeout time.Duration) (*os.File, bool, error) {
	return boltfile.Lock(path, timeout, ErrLocked, "journal")
}

// validateFile checks, before bbolt maps the file, what bbolt would otherwise
// trust blindly (internal/boltfile.Validate): a failure wraps ErrCorrupt.
func validateFile(f *os.File, path string, size int64) error {
	return boltfile.Validate(f, path, size, ErrCorrupt, "journal")
}

// openBolt opens the already locked file f with bbolt. A fault while bbolt
// maps or scans the file (corrupt content) becomes ErrCorrupt instead of
// killing the process.
func openBolt(path string, f *os.File, opts Options) (db *bbolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			_ = f.Close()
			db, err = nil, fmt.Errorf("%w: %s: bbolt failed opening it: %v", ErrCorrupt, path, p)
		}
	}()
	// NoFreelistSync stays false on purpose: it is crash-safe (the freelist is
	// rebuilt at open), but bbolt v1.5.0 rebuilds it by running its page
	// checker on a goroutine of its own, where a corrupt page faults the whole
	// process and a detected inconsistency leaks that goroutine. With a synced
	// freelist, Open reads only the meta and freelist pages (validated above)
	// and corrupt data pages surface on our goroutines as ErrCorrupt.
	bo := &bbolt.Options{
		Timeout:        opts.LockTimeout,
		NoFreelistSync: false,
		FreelistType:   bbolt.FreelistMapType,
		PageSize:       opts.PageSize, // used only when the file is created
		MaxSize:        int(opts.MaxFileSize),
		OpenFile: func(string, int, fs.FileMode) (*os.File, error) {
			return f, nil
		},
	}
	db, err = bbolt.Open(path, 0o600, bo)
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
		}
		return nil, fmt.Errorf("journal: open %s: %w", path, err)
	}
	return db, nil
}

// mapWriteErr classifies a failed bbolt write.
func mapWriteErr(path string, err error) error {
	if errors.Is(err, berrors.ErrMaxSizeReached) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %s: %w", ErrNoSpace, path, err)
	}
	return fmt.Errorf("journal: write %s: %w", path, err)
}
