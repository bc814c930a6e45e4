package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// lockFile opens (creating if needed, mode 0600) and exclusively flocks path,
// waiting at most timeout. existed reports whether the file was there before.
// bbolt later adopts the returned descriptor (Options.OpenFile), so the lock is
// held without a gap from validation to Close.
func lockFile(path string, timeout time.Duration) (f *os.File, existed bool, err error) {
	deadline := time.Now().Add(timeout)
	for {
		_, statErr := os.Stat(path)
		existed = statErr == nil
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, existed, fmt.Errorf("journal: open %s: %w", path, err)
		}
		for {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if err == nil {
				break
			}
			if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
				_ = f.Close()
				return nil, existed, fmt.Errorf("journal: lock %s: %w", path, err)
			}
			if time.Now().After(deadline) {
				_ = f.Close()
				return nil, existed, fmt.Errorf("%w: %s: flock not acquired within %v", ErrLocked, path, timeout)
			}
			time.Sleep(25 * time.Millisecond)
		}
		// The holder may have compacted the journal while we waited: it renames a new file over
		// path and then closes (unlocks) the old one. Our lock on the old, unlinked file would
		// then guard nothing. Lock-then-verify: keep the lock only if it is on the file at path.
		if same, serr := sameFile(f, path); serr == nil && same {
			return f, existed, nil
		}
		_ = f.Close()
		if time.Now().After(deadline) {
			return nil, existed, fmt.Errorf("%w: %s: the file was replaced while waiting for its lock", ErrLocked, path)
		}
	}
}

// sameFile reports whether the open file f is the file currently at path.
func sameFile(f *os.File, path string) (bool, error) {
	a, err := f.Stat()
	if err != nil {
		return false, err
	}
	b, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return os.SameFile(a, b), nil
}

// bbolt meta page layout (see go.etcd.io/bbolt/internal/common/meta.go): a
// 16-byte page header followed by the meta fields, little endian.
const (
	metaOff        = 16
	metaMagic      = 0xED0CDAED
	metaVersion    = 2
	metaLen        = 64 // magic..checksum
	pgidNoFreelist = ^uint64(0)
	pageHeaderLen  = 16
)

type metaPage struct {
	magic, version, pageSize uint32
	root, freelist, pgid     uint64
	txid                     uint64
	valid                    bool
}

func parseMeta(b []byte) metaPage {
	if len(b) < metaOff+metaLen {
		return metaPage{}
	}
	m := b[metaOff : metaOff+metaLen]
	le := binary.LittleEndian
	mp := metaPage{
		magic:    le.Uint32(m[0:]),
		version:  le.Uint32(m[4:]),
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		pgid:     le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	mp.valid = mp.magic == metaMagic && mp.version == metaVersion && h.Sum64() == le.Uint64(m[56:])
	return mp
}

// validateFile checks, before bbolt maps the file, what bbolt would otherwise
// trust blindly: a valid meta page whose high-water mark, root and freelist
// pages lie inside the file. bbolt faults (SIGSEGV/SIGBUS, not a recoverable
// panic) on a truncated file; this turns those cases into ErrCorrupt.
func validateFile(f *os.File, path string, size int64) error {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s (%d bytes): %s", ErrCorrupt, path, size, fmt.Sprintf(format, args...))
	}
	buf := make([]byte, metaOff+metaLen)
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("journal: read %s: %w", path, err)
	}
	m0 := parseMeta(buf)
	var m1 metaPage
	if m0.valid {
		m1 = readMetaAt(f, int64(m0.pageSize))
	} else {
		for ps := int64(512); ps <= 1<<16; ps *= 2 {
			if m := readMetaAt(f, ps); m.valid && int64(m.pageSize) == ps {
				m1 = m
				break
			}
		}
	}
	if !m0.valid && !m1.valid {
		return corrupt("no valid bbolt meta page")
	}
	// bbolt uses the valid meta page with the highest transaction id.
	m := m0
	if !m0.valid || (m1.valid && m1.txid > m0.txid) {
		m = m1
	}
	ps := uint64(m.pageSize)
	if ps < 512 || ps > 1<<16 || ps&(ps-1) != 0 {
		return corrupt("page size %d", ps)
	}
	if m.pgid < 4 || m.pgid > uint64(size)/ps {
		return corrupt("meta high-water mark %d pages of %d bytes exceeds the file", m.pgid, ps)
	}
	if m.root < 2 || m.root >= m.pgid {
		return corrupt("root page %d outside [2,%d)", m.root, m.pgid)
	}
	if m.freelist != pgidNoFreelist {
		if m.freelist < 2 || m.freelist >= m.pgid {
			return corrupt("freelist page %d outside [2,%d)", m.freelist, m.pgid)
		}
		if err := validateFreelist(f, m, corrupt); err != nil {
			return err
		}
	}
	return nil
}

func readMetaAt(f *os.File, off int64) metaPage {
	buf := make([]byte, metaOff+metaLen)
	if n, _ := f.ReadAt(buf, off); n < len(buf) {
		return metaPage{}
	}
	return parseMeta(buf)
}

// validateFreelist bounds the freelist page's element count by its page span,
// so bbolt does not allocate or read a garbage-sized list.
func validateFreelist(f *os.File, m metaPage, corrupt func(string, ...any) error) error {
	ps := int64(m.pageSize)
	hdr := make([]byte, pageHeaderLen+8)
	if n, _ := f.ReadAt(hdr, int64(m.freelist)*ps); n < len(hdr) {
		return corrupt("freelist page unreadable")
	}
	le := binary.LittleEndian
	count := uint64(le.Uint16(hdr[10:]))
	overflow := uint64(le.Uint32(hdr[12:]))
	if m.freelist+overflow >= m.pgid {
		return corrupt("freelist overflow %d past the high-water mark", overflow)
	}
	span := (overflow + 1) * uint64(ps)
	if count == 0xFFFF {
		count = le.Uint64(hdr[16:]) + 1
	}
	if count > span/8 || pageHeaderLen+count*8 > span {
		return corrupt("freelist count %d does not fit its %d bytes", count, span)
	}
	// bbolt writes the free page ids sorted; garbage would hand live pages
	// out for reuse.
	buf := make([]byte, span)
	if n, _ := f.ReadAt(buf, int64(m.freelist)*ps); uint64(n) < span {
		return corrupt("freelist pages unreadable")
	}
	ids := buf[pageHeaderLen:]
	if le.Uint16(hdr[10:]) == 0xFFFF {
		ids = ids[8:] // the first element held the count
		count--
	}
	prev := uint64(1)
	for i := range count {
		id := le.Uint64(ids[i*8:])
		if id <= prev || id >= m.pgid {
			return corrupt("freelist entry %d is page %d (previous %d, high-water mark %d)", i, id, prev, m.pgid)
		}
		prev = id
	}
	return nil
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
