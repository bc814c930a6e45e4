package dedup

import "errors"

// Sentinel errors. Errors returned by this package wrap one of them.
var (
	// ErrInvalidConfig means a Config field is out of range. New wraps it with the field name.
	ErrInvalidConfig = errors.New("dedup: invalid config")
	// ErrCorrupt means persisted stream state failed its checksum or its invariants. Load wraps it
	// with the reason and leaves the tracker unchanged.
	ErrCorrupt = errors.New("dedup: corrupt state")
	// ErrVersion means persisted stream state was written by a newer, unknown encoding version.
	ErrVersion = errors.New("dedup: unsupported state version")
)
