package consumer

import "time"

// boltTunables are the store's knobs that only tests change, through BoltOptions.tune (there are no
// package variables for that). A zero field takes its default.
type boltTunables struct {
	// foldMinBytes: the log is folded once it holds this many bytes, or a quarter of the streams
	// bucket's leaf pages if that is more: a fold rewrites at most every leaf, so a logged byte
	// costs at most about four bytes of folding, and Load never merges more log than that.
	// Default 1 MiB.
	foldMinBytes int64
	// foldEvery, when > 0, replaces that rule: fold once the log holds this many bytes.
	foldEvery int64
	// chunkBytes: a commit's states are cut into records of at most this size (unless one state is
	// larger): four fill a 4 KiB leaf page (16 bytes of page header, 24 per element beside the
	// value). Default 996.
	chunkBytes int
	// foldRetryAfter: after a failed fold (disk full), the writer waits this long to try again.
	// Default 10 s.
	foldRetryAfter time.Duration
	// maxSize, when > 0, caps the file's size: a commit that would grow it further fails with
	// bbolt's ErrMaxSizeReached, as a full disk would.
	maxSize int
	// hook, when set, is called by the writer at "record" (a commit that makes the log due for a
	// fold is durable; its callers not answered yet) and "fold" (inside the fold's transaction,
	// after its writes, before it commits: an error fails the fold).
	hook func(point string) error
}

// withDefaults fills in the zero fields.
func (t boltTunables) withDefaults() boltTunables {
	if t.foldMinBytes == 0 {
		t.foldMinBytes = 1 << 20
	}
	if t.chunkBytes == 0 {
		t.chunkBytes = 996
	}
	if t.foldRetryAfter == 0 {
		t.foldRetryAfter = 10 * time.Second
	}
	return t
}
