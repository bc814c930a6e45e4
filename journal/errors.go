package journal

import "errors"

// Sentinel errors returned by the journal. Match them with errors.Is; the
// returned errors usually wrap them with more detail (the file, the size, the
// cause).
var (
	// ErrClosed is returned by every operation on a closed journal.
	ErrClosed = errors.New("journal: closed")
	// ErrFull is returned by TryAppend when the journal holds MaxEntries
	// entries or MaxBytes bytes.
	ErrFull = errors.New("journal: full")
	// ErrLocked is returned by Open when another process (or another Journal in
	// this process) holds the file's lock for longer than Options.LockTimeout.
	ErrLocked = errors.New("journal: file is locked by another process")
	// ErrCorrupt is returned when the file or an entry fails validation
	// (bad meta pages, size inconsistent with the meta page, checksum error).
	ErrCorrupt = errors.New("journal: corrupt")
	// ErrTruncated is returned by Open when the marker file says a journal
	// existed at the path but the file is missing, empty or holds no journal.
	ErrTruncated = errors.New("journal: file lost or truncated")
	// ErrNoSpace is returned when the file cannot grow: the disk is full or
	// the file reached Options.MaxFileSize. Nothing already journaled is lost.
	ErrNoSpace = errors.New("journal: no space left")
	// ErrTooLarge is returned at append time for an entry (or batch) that can
	// never be stored or sent: body+headers above MaxMessageSize, or larger
	// than the journal's MaxBytes/MaxEntries bounds.
	ErrTooLarge = errors.New("journal: entry too large")
	// ErrSourceMismatch is returned by Open when the file was created for a
	// different source name.
	ErrSourceMismatch = errors.New("journal: source mismatch")
	// ErrNotFound is returned when an operation names an ID that is not in the
	// expected bucket (pending for Park, parked for Redrive/DropParked).
	ErrNotFound = errors.New("journal: entry not found")
	// ErrInvalidEntry is returned at append time for an entry the journal
	// cannot encode: empty stream, unsupported header value type, or nesting
	// deeper than 32 levels.
	ErrInvalidEntry = errors.New("journal: invalid entry")
	// ErrBroken is returned after a commit failed with an I/O error (or bbolt
	// panicked on a corrupt page) and by every later call: the journal must be
	// reopened. It is the one error after which an append's outcome is
	// unknown: the batch whose commit failed may or may not be on disk.
	ErrBroken = errors.New("journal: broken, reopen it")
	// ErrInvalidOptions is returned by Open when the Options fail validation.
	ErrInvalidOptions = errors.New("journal: invalid options")
)
