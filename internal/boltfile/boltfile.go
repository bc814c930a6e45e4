// Package boltfile holds what the bbolt-backed stores of rabbitkit (journal, consumer) do to a file
// before bbolt maps it: an exclusive lock on a descriptor bbolt later adopts (Options.OpenFile), and
// a validation of the meta and freelist pages that bbolt would otherwise trust blindly and fault
// on (SIGSEGV/SIGBUS, not a recoverable panic) when they are corrupt or the file is truncated.
package boltfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"syscall"
	"time"
)

// Lock opens (creating if needed, mode 0600) and exclusively flocks path, waiting at most timeout.
// existed reports whether the file was there before. errLocked is wrapped when the lock is not
// acquired in time; pkg prefixes the other errors ("journal", "consumer").
func Lock(path string, timeout time.Duration, errLocked error, pkg string) (f *os.File, existed bool, err error) {
	deadline := time.Now().Add(timeout)
	for {
		_, statErr := os.Stat(path)
		existed = statErr == nil
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, existed, fmt.Errorf("%s: open %s: %w", pkg, path, err)
		}
		for {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if err == nil {
				break
			}
			if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
				_ = f.Close()
				return nil, existed, fmt.Errorf("%s: lock %s: %w", pkg, path, err)
			}
			if time.Now().After(deadline) {
				_ = f.Close()
				return nil, existed, fmt.Errorf("%w: %s: flock not acquired within %v", errLocked, path, timeout)
			}
			time.Sleep(25 * time.Millisecond)
		}
		// The holder may have replaced the file while we waited (a compaction renames a new file
		// over path, then closes the old one). Keep the lock only if it is on the file at path.
		if same, serr := sameFile(f, path); serr == nil && same {
			return f, existed, nil
		}
		_ = f.Close()
		if time.Now().After(deadline) {
			return nil, existed, fmt.Errorf("%w: %s: the file was replaced while waiting for its lock", errLocked, path)
		}
	}
}

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

// bbolt meta page layout (see go.etcd.io/bbolt/internal/common/meta.go): a 16-byte page header
// followed by the meta fields, little endian.
const (
	MetaOff       = 16
	MetaMagic     = 0xED0CDAED
	MetaVersion   = 2
	MetaLen       = 64 // magic..checksum
	NoFreelist    = ^uint64(0)
	PageHeaderLen = 16
)

// Meta is a parsed bbolt meta page.
type Meta struct {
	Magic, Version, PageSize uint32
	Root, Freelist, Pgid     uint64
	TxID                     uint64
	Valid                    bool
}

// ParseMeta parses the meta page at the start of b.
func ParseMeta(b []byte) Meta {
	if len(b) < MetaOff+MetaLen {
		return Meta{}
	}
	m := b[MetaOff : MetaOff+MetaLen]
	le := binary.LittleEndian
	mp := Meta{
		Magic:    le.Uint32(m[0:]),
		Version:  le.Uint32(m[4:]),
		PageSize: le.Uint32(m[8:]),
		Root:     le.Uint64(m[16:]),
		Freelist: le.Uint64(m[32:]),
		Pgid:     le.Uint64(m[40:]),
		TxID:     le.Uint64(m[48:]),
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	mp.Valid = mp.Magic == MetaMagic && mp.Version == MetaVersion && h.Sum64() == le.Uint64(m[56:])
	return mp
}

// Validate checks, before bbolt maps the file, a valid meta page whose page size is sane, whose
// high-water mark, root and freelist pages lie inside the file, and a freelist that fits its pages
// and holds sorted ids below the high-water mark. A failed check wraps errCorrupt with the path,
// the size and what is wrong; pkg prefixes I/O errors.
func Validate(f *os.File, path string, size int64, errCorrupt error, pkg string) error {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s (%d bytes): %s", errCorrupt, path, size, fmt.Sprintf(format, args...))
	}
	buf := make([]byte, MetaOff+MetaLen)
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: read %s: %w", pkg, path, err)
	}
	m0 := ParseMeta(buf)
	var m1 Meta
	if m0.Valid {
		m1 = readMetaAt(f, int64(m0.PageSize))
	} else {
		for ps := int64(512); ps <= 1<<16; ps *= 2 {
			if m := readMetaAt(f, ps); m.Valid && int64(m.PageSize) == ps {
				m1 = m
				break
			}
		}
	}
	if !m0.Valid && !m1.Valid {
		return corrupt("no valid bbolt meta page")
	}
	// bbolt uses the valid meta page with the highest transaction id.
	m := m0
	if !m0.Valid || (m1.Valid && m1.TxID > m0.TxID) {
		m = m1
	}
	ps := uint64(m.PageSize)
	if ps < 512 || ps > 1<<16 || ps&(ps-1) != 0 {
		return corrupt("page size %d", ps)
	}
	if m.Pgid < 4 || m.Pgid > uint64(size)/ps {
		return corrupt("meta high-water mark %d pages of %d bytes exceeds the file", m.Pgid, ps)
	}
	if m.Root < 2 || m.Root >= m.Pgid {
		return corrupt("root page %d outside [2,%d)", m.Root, m.Pgid)
	}
	if m.Freelist != NoFreelist {
		if m.Freelist < 2 || m.Freelist >= m.Pgid {
			return corrupt("freelist page %d outside [2,%d)", m.Freelist, m.Pgid)
		}
		if err := validateFreelist(f, m, corrupt); err != nil {
			return err
		}
	}
	return nil
}

func readMetaAt(f *os.File, off int64) Meta {
	buf := make([]byte, MetaOff+MetaLen)
	if n, _ := f.ReadAt(buf, off); n < len(buf) {
		return Meta{}
	}
	return ParseMeta(buf)
}

// validateFreelist bounds the freelist page's element count by its page span, so bbolt does not
// allocate or read a garbage-sized list, and checks its ids.
func validateFreelist(f *os.File, m Meta, corrupt func(string, ...any) error) error {
	ps := int64(m.PageSize)
	hdr := make([]byte, PageHeaderLen+8)
	if n, _ := f.ReadAt(hdr, int64(m.Freelist)*ps); n < len(hdr) {
		return corrupt("freelist page unreadable")
	}
	le := binary.LittleEndian
	count := uint64(le.Uint16(hdr[10:]))
	overflow := uint64(le.Uint32(hdr[12:]))
	if m.Freelist+overflow >= m.Pgid {
		return corrupt("freelist overflow %d past the high-water mark", overflow)
	}
	span := (overflow + 1) * uint64(ps)
	if count == 0xFFFF {
		count = le.Uint64(hdr[16:]) + 1
	}
	if count > span/8 || PageHeaderLen+count*8 > span {
		return corrupt("freelist count %d does not fit its %d bytes", count, span)
	}
	// bbolt writes the free page ids sorted; garbage would hand live pages out for reuse.
	buf := make([]byte, span)
	if n, _ := f.ReadAt(buf, int64(m.Freelist)*ps); uint64(n) < span {
		return corrupt("freelist pages unreadable")
	}
	ids := buf[PageHeaderLen:]
	if le.Uint16(hdr[10:]) == 0xFFFF {
		ids = ids[8:] // the first element held the count
		count--
	}
	prev := uint64(1)
	for i := range count {
		id := le.Uint64(ids[i*8:])
		if id <= prev || id >= m.Pgid {
			return corrupt("freelist entry %d is page %d (previous %d, high-water mark %d)", i, id, prev, m.Pgid)
		}
		prev = id
	}
	return nil
}
