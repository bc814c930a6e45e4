package journal

import (
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Defaults applied by Open to zero-valued Options fields.
const (
	DefaultLockTimeout        = 5 * time.Second
	DefaultMaxEntries         = 10_000_000
	DefaultMaxBytes           = int64(1 << 30)  // 1 GiB
	DefaultMaxMessageSize     = 128 << 20       // RabbitMQ's default max_message_size
	DefaultAutoCompactMinSize = int64(64 << 20) // 64 MiB
	DefaultTailCacheBytes     = 16 << 20        // 16 MiB
	DefaultPageSize           = 16 << 10        // bbolt page size of a new journal file
	maxBBoltValue             = (1 << 31) - 2   // bbolt.MaxValueSize
	maxHeaderDepth            = 32
)

// Options configure Open. Only Source is required; every other zero field takes
// the documented default.
type Options struct {
	// Source names the publishing application instance. It is recorded when
	// the journal is created and checked on every open (ErrSourceMismatch).
	Source string
	// LockTimeout bounds the wait for the file lock. Default 5s. A journal
	// held by another process or another Journal value gives ErrLocked.
	LockTimeout time.Duration
	// MaxEntries bounds pending+parked entries. Default 10,000,000.
	MaxEntries int
	// MaxBytes bounds the encoded size of pending+parked entries. Default 1 GiB.
	MaxBytes int64
	// MaxMessageSize bounds len(Body) plus the encoded size of Headers of one
	// entry. Default 128 MiB (RabbitMQ's max_message_size). Larger entries are
	// refused at append with ErrTooLarge.
	MaxMessageSize int
	// MaxFileSize caps the bbolt file (bbolt Options.MaxSize). 0 = unlimited.
	// Reaching it makes appends fail with ErrNoSpace, like a full disk.
	MaxFileSize int64
	// AllowNewEpoch: when the marker file says a journal existed but the file
	// is lost or empty, start a fresh journal with a new epoch (logged at
	// ERROR level) instead of failing with ErrTruncated.
	AllowNewEpoch bool
	// AutoCompactMinSize: the file is compacted when it is larger than this
	// and more than half of it is free space: at Open, and by the writer
	// after deletes (checked at most once a minute, and only while the live
	// data is under 256 MiB since writes wait during the copy). Default
	// 64 MiB; negative disables automatic compaction.
	AutoCompactMinSize int64
	// TailCacheBytes bounds the in-memory copy of recently appended entries
	// that serves Read without touching bbolt. Default 16 MiB; negative
	// disables the cache.
	TailCacheBytes int
	// PageSize is the bbolt page size of a newly created file, a power of two from 4 KiB to
	// 1 MiB. Default DefaultPageSize (16 KiB): a 4 KiB message then shares a page with others
	// instead of taking two 4 KiB pages of its own, which halves the journal's CPU per 4 KiB
	// message and costs 256-byte messages nothing (BenchmarkLifecycle). An existing file keeps
	// the page size it was created with; compaction keeps it too.
	PageSize int
	// Logger receives the journal's logs. Default: discard.
	Logger *slog.Logger

	seqFoldMinBytes int64 // tests only; default defaultSeqFoldMinBytes
}

func (o Options) withDefaults() (Options, error) {
	if o.Source == "" {
		return o, fmt.Errorf("%w: Source is required", ErrInvalidOptions)
	}
	if o.LockTimeout < 0 || o.MaxEntries < 0 || o.MaxBytes < 0 || o.MaxMessageSize < 0 || o.MaxFileSize < 0 {
		return o, fmt.Errorf("%w: negative limit", ErrInvalidOptions)
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxMessageSize > maxBBoltValue/2 {
		return o, fmt.Errorf("%w: MaxMessageSize %d above the %d bbolt can store", ErrInvalidOptions, o.MaxMessageSize, maxBBoltValue/2)
	}
	if o.AutoCompactMinSize == 0 {
		o.AutoCompactMinSize = DefaultAutoCompactMinSize
	}
	if o.PageSize != 0 && (o.PageSize < 4096 || o.PageSize > 1<<20 || o.PageSize&(o.PageSize-1) != 0) {
		return o, fmt.Errorf("%w: PageSize %d is not a power of two from 4096 to 1048576", ErrInvalidOptions, o.PageSize)
	}
	if o.PageSize == 0 {
		o.PageSize = DefaultPageSize
	}
	if o.TailCacheBytes == 0 {
		o.TailCacheBytes = DefaultTailCacheBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.seqFoldMinBytes <= 0 {
		o.seqFoldMinBytes = defaultSeqFoldMinBytes
	}
	return o, nil
}
