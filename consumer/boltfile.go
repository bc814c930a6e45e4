package consumer

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"

	"github.com/rabbitkit/rabbitkit/internal/boltfile"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The store's file, hardened like the journal's (internal/boltfile):
//
//   - OpenBoltStore locks the file on a descriptor that bbolt adopts (Options.OpenFile) and
//     validates its meta and freelist pages before bbolt maps it: a corrupt or truncated file is
//     ErrCorrupt, not a fault of the process. Every transaction of the store runs under
//     debug.SetPanicOnFault, so a corrupt data page met later is ErrCorrupt too.
//   - The marker file <store>.id records the store's identity, a random id also kept in the meta
//     bucket: a store file lost, emptied or replaced while its marker exists is ErrTruncated
//     unless BoltOptions.AllowReset.
//   - A bbolt file that is not a consumer store (no meta bucket of ours, no format 1 streams
//     bucket, other buckets) is ErrNotStore, naming what it holds.

// Errors of the store's file. Match them with errors.Is; they wrap them with the path and what to do.
var (
	// ErrCorrupt is returned when the store's file (or its marker) fails validation: bad meta or
	// freelist pages, a size inconsistent with them, or a fault of bbolt on a corrupt page.
	ErrCorrupt = errors.New("consumer: store file corrupt")
	// ErrTruncated is returned by OpenBoltStore when the marker file <store>.id says a store
	// existed at the path but the file is missing, empty or another store: its dedup state is
	// lost, so the redeliveries of what it had applied would be applied again. See
	// BoltOptions.AllowReset.
	ErrTruncated = errors.New("consumer: store file lost or replaced")
	// ErrNotStore is returned by OpenBoltStore for a bbolt file that is not a consumer store (a
	// journal, another program's file).
	ErrNotStore = errors.New("consumer: not a consumer store")
)

var keyStoreID = []byte("id") // in bucketMeta: the store's identity, 16 random bytes

// storeMarker is the sidecar file <store>.id, written once the store has its identity.
type storeMarker struct {
	Format int    `json:"format"`
	ID     string `json:"id"` // hex of the meta bucket's id
}

func storeMarkerPath(path string) string { return path + ".id" }

// readStoreMarker returns (nil, nil) when there is no marker.
func readStoreMarker(path string) (*storeMarker, error) {
	b, err := os.ReadFile(storeMarkerPath(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("consumer: read store marker: %w", err)
	}
	var m struct {
		storeMarker
		Source string `json:"source"` // a journal's marker (journal/marker.go)
		Epoch  int64  `json:"epoch"`
	}
	if err := json.Unmarshal(b, &m); err == nil && m.ID == "" && m.Epoch > 0 {
		return nil, fmt.Errorf("%w: %s is a rabbitkit journal (its marker %s names source %q, epoch %d); give OpenBoltStore a file of its own",
			ErrNotStore, path, storeMarkerPath(path), m.Source, m.Epoch)
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Format != 1 || m.ID == "" {
		return nil, fmt.Errorf("%w: store marker %s is unreadable (%q); remove it only if %s is the store it belongs to",
			ErrCorrupt, storeMarkerPath(path), b, path)
	}
	return &m.storeMarker, nil
}

// writeStoreMarker writes the marker atomically (temp file, fsync, rename, fsync dir).
func writeStoreMarker(path, id string) error {
	b, err := json.Marshal(storeMarker{Format: 1, ID: id})
	if err != nil {
		return err
	}
	final := storeMarkerPath(path)
	tmp := final + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("consumer: write store marker: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		return fmt.Errorf("consumer: write store marker %s: %w", final, err)
	}
	d, err := os.Open(filepath.Dir(final))
	if err != nil {
		return fmt.Errorf("consumer: sync dir of %s: %w", final, err)
	}
	err = d.Sync()
	_ = d.Close()
	if err != nil {
		return fmt.Errorf("consumer: sync dir of %s: %w", final, err)
	}
	return nil
}

func lostStore(path, what string, mk *storeMarker) error {
	return fmt.Errorf("%w: %s %s, but marker %s records store %s: the store was lost: its redeliveries would be applied again "+
		"(the messages it had handled but the broker had not yet forgotten, and every stream's dedup state); start anew only if "+
		"nothing it had applied can be redelivered or applying it twice is harmless (set BoltOptions.AllowReset), otherwise restore the file",
		ErrTruncated, path, what, storeMarkerPath(path), mk.ID)
}

func logReset(log *slog.Logger, path, what string, mk *storeMarker) {
	log.Error("consumer: the store was lost; starting anew because BoltOptions.AllowReset is set: messages it had applied that are redelivered will be applied again",
		"path", path, "file", what, "marker", storeMarkerPath(path), "lost_id", mk.ID)
}

// openBoltFile locks, checks and opens the store file. mk is its marker (nil when none, or when
// AllowReset discarded it).
func openBoltFile(path string, opts BoltOptions) (db *bolt.DB, mk *storeMarker, err error) {
	f, existed, err := boltfile.Lock(path, opts.LockTimeout, ErrLocked, "consumer")
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*bolt.DB, *storeMarker, error) {
		_ = f.Close()
		if !existed {
			_ = os.Remove(path)
		}
		return nil, nil, err
	}
	// Read under the lock: a concurrent creator has either written it or not started.
	if mk, err = readStoreMarker(path); err != nil {
		return fail(err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(fmt.Errorf("consumer: stat %s: %w", path, err))
	}
	if fi.Size() == 0 && mk != nil {
		what := "is empty"
		if !existed {
			what = "is missing"
		}
		if !opts.AllowReset {
			return fail(lostStore(path, what, mk))
		}
		logReset(opts.Logger, path, what, mk)
		mk = nil
	}
	if fi.Size() > 0 {
		if err := boltfile.Validate(f, path, fi.Size(), ErrCorrupt, "consumer"); err != nil {
			return fail(fmt.Errorf("%w; restore the file from a backup, or move it aside to start anew (its dedup state is then lost)", err))
		}
	}
	db, err = openBoltFault(path, f, opts)
	if err != nil {
		if !existed {
			_ = os.Remove(path)
		}
		return nil, nil, err
	}
	return db, mk, nil
}

func openBoltFault(path string, f *os.File, opts BoltOptions) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			_ = f.Close()
			db, err = nil, fmt.Errorf("%w: %s: bbolt failed opening it: %v", ErrCorrupt, path, p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      opts.LockTimeout,
		NoSync:       opts.NoSync,
		FreelistType: bolt.FreelistMapType,
		MaxSize:      opts.tune.maxSize,
		OpenFile:     func(string, int, fs.FileMode) (*os.File, error) { return f, nil },
	})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, path, opts.LockTimeout)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return nil, fmt.Errorf("consumer: open store %s: %w", path, err)
}

// boltView and boltUpdate run fn, the store's own code, in a transaction of db under
// debug.SetPanicOnFault: a fault or a panic of bbolt on a corrupt page becomes ErrCorrupt.
func boltView(db *bolt.DB, fn func(*bolt.Tx) error) error { return boltTx(db, false, false, fn) }

func boltUpdate(db *bolt.DB, fn func(*bolt.Tx) error) error { return boltTx(db, true, false, fn) }

// userPanic carries a panic of a user's function (View) past boltTx, which re-raises it: only a
// fault or a panic raised inside bbolt (a corrupt page the function read) becomes ErrCorrupt.
type userPanic struct{ p any }

// panickedInBolt, called in a deferred function that recovered p, reports whether the panic was
// raised by bbolt's code (its page assertions, an index out of range on a corrupt page) or is a
// fault, rather than by the user's function itself.
func panickedInBolt(p any) bool {
	if re, ok := p.(runtime.Error); ok && strings.Contains(re.Error(), "fault") {
		return true
	}
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(1, pcs)])
	afterPanic := false
	for {
		fr, more := frames.Next()
		switch {
		case fr.Function == "runtime.gopanic":
			afterPanic = true
		case afterPanic && !strings.HasPrefix(fr.Function, "runtime."):
			return strings.HasPrefix(fr.Function, "go.etcd.io/bbolt")
		}
		if !more {
			return false
		}
	}
}

func boltTx(db *bolt.DB, write, user bool, fn func(*bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			if up, ok := p.(userPanic); ok {
				panic(up.p)
			}
			err = fmt.Errorf("%w: %s: bbolt failed in a transaction (corrupt page?): %v; restore the file from a backup, or move it aside to start anew",
				ErrCorrupt, db.Path(), p)
		}
	}()
	if user {
		inner := fn
		fn = func(tx *bolt.Tx) error {
			defer func() {
				if p := recover(); p != nil {
					if panickedInBolt(p) {
						panic(p)
					}
					panic(userPanic{p})
				}
			}()
			return inner(tx)
		}
	}
	if write {
		return db.Update(fn)
	}
	return db.View(fn)
}

// identify reconciles the store's id (meta bucket) with its marker before openFormat writes
// anything; commit, after openFormat, gives a new store its id and (re)writes the marker.
func identify(db *bolt.DB, path string, mk *storeMarker, opts BoltOptions) (id string, err error) {
	err = boltView(db, func(tx *bolt.Tx) error {
		if m := tx.Bucket(bucketMeta); m != nil {
			id = hex.EncodeToString(m.Get(keyStoreID))
		}
		return nil
	})
	if err != nil || mk == nil || mk.ID == id {
		return id, err
	}
	what := "holds store " + id
	if id == "" {
		what = "holds no store identity (a new file, or one written by another program or an older version)"
	}
	if !opts.AllowReset {
		return "", lostStore(path, what, mk)
	}
	logReset(opts.Logger, path, what, mk)
	return id, nil
}

func commitIdentity(db *bolt.DB, path, id string, mk *storeMarker, log *slog.Logger) error {
	if id == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		err := boltUpdate(db, func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyStoreID, b[:])
		})
		if err != nil {
			return fmt.Errorf("consumer: store %s: record its identity: %w", path, err)
		}
		id = hex.EncodeToString(b[:])
	} else if mk == nil {
		log.Warn("consumer: store marker missing: rewriting it", "path", path, "marker", storeMarkerPath(path), "id", id)
	}
	if mk != nil && mk.ID == id {
		return nil
	}
	return writeStoreMarker(path, id)
}

// notStore describes a bbolt file without the consumer's meta bucket nor a format 1 streams
// bucket but with other buckets: another program's file, which the store must not take over.
func notStore(path string, names []string) error {
	what := "another program's bbolt file"
	if len(names) > 0 && slices.Contains(names, "meta") && slices.Contains(names, "pending") {
		what = "a rabbitkit journal (journal.Open)"
	}
	if len(names) > 8 {
		names = append(names[:8:8], "...")
	}
	return fmt.Errorf("%w: %s is %s: it has buckets %q but no bucket %s; give OpenBoltStore a file of its own",
		ErrNotStore, path, what, names, bucketMeta)
}

// writeErr wraps a failed commit or fold: a full disk is said so.
func writeErr(path, what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, bolterrors.ErrMaxSizeReached) {
		return fmt.Errorf("%w: %w: %s: the disk holding %s is full: %w (nothing of it is acked; free space there: the consumer retries and resumes by itself)",
			ErrStore, ErrDiskFull, what, path, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrStore, what, err)
}

// ViewBoltFile runs fn in a read-only transaction of the store file at path, for tools that read a
// store another process may hold (examples/consumer -dump): it validates the file first and turns a
// fault on a corrupt page into ErrCorrupt, so a damaged file is an error, not a crash.
func ViewBoltFile(path string, fn func(tx *bolt.Tx) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("consumer: open %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = boltfile.Validate(f, path, fi.Size(), ErrCorrupt, "consumer")
	}
	_ = f.Close()
	if err != nil {
		return err
	}
	db, err := func() (db *bolt.DB, err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if p := recover(); p != nil {
				db, err = nil, fmt.Errorf("%w: %s: bbolt failed opening it: %v", ErrCorrupt, path, p)
			}
		}()
		return bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: defaultLockTimeout})
	}()
	if err != nil {
		if errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrChecksum) || errors.Is(err, bolterrors.ErrVersionMismatch) {
			return fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
		}
		return fmt.Errorf("consumer: open %s: %w", path, err)
	}
	defer db.Close()
	return boltTx(db, false, true, fn)
}
