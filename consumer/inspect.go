package consumer

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/boltfile"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// StreamInfo is one stream of a consumer store, as InspectBoltFile reads it: its key, the state
// of each of its epochs, most recently active first (dedup.Tracker.Info), its retired epochs
// (Tracker.Retired) and the stamps parked after a handler failure that a re-drive would still
// apply (Tracker.Parked).
type StreamInfo struct {
	Key     dedup.Key
	Windows []dedup.WindowInfo
	Retired []dedup.RetiredInfo
	Parked  []dedup.ParkedInfo
}

// InspectBoltFile reads the dedup state of every stream of the consumer store at path, read-only,
// in key order, for operator tools (cmd/rabbitkit). A store held by a running consumer is locked:
// InspectBoltFile waits at most lockTimeout (1s when <= 0) and then returns an error wrapping
// ErrLocked. A file that is not a consumer store is ErrNotStore, a damaged one ErrCorrupt.
func InspectBoltFile(path string, lockTimeout time.Duration) ([]StreamInfo, error) {
	if lockTimeout <= 0 {
		lockTimeout = time.Second
	}
	if _, err := readStoreMarker(path); errors.Is(err, ErrNotStore) {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("consumer: open %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = boltfile.Validate(f, path, fi.Size(), ErrCorrupt, "consumer")
	}
	_ = f.Close()
	if err != nil {
		return nil, err
	}
	db, err := func() (db *bolt.DB, err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if p := recover(); p != nil {
				db, err = nil, fmt.Errorf("%w: %s: bbolt failed opening it: %v", ErrCorrupt, path, p)
			}
		}()
		return bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	}()
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s (waited %s)", ErrLocked, path, lockTimeout)
	case errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrChecksum) || errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	case err != nil:
		return nil, fmt.Errorf("consumer: open %s: %w", path, err)
	}
	defer db.Close()
	var states []StreamState
	err = boltTx(db, false, true, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil && tx.Bucket(bucketStreams) == nil {
			return fmt.Errorf("%w: %s has no bucket %s", ErrNotStore, path, bucketMeta)
		}
		if tx.Bucket(bucketStreams) == nil || tx.Bucket(bucketLog) == nil {
			return fmt.Errorf("%w: %s: a store without its buckets", ErrCorrupt, path)
		}
		var err error
		states, err = loadStates(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return InspectStates(states)
}

// InspectStates decodes stored stream states (as a Store's Load returns them) into StreamInfo,
// for operator tools reading a store's rows themselves (pginbox.Inspect). A state that does not
// decode is an error wrapping ErrCorrupt.
func InspectStates(states []StreamState) ([]StreamInfo, error) {
	t, err := dedup.New(dedup.Config{})
	if err != nil {
		return nil, err
	}
	out := make([]StreamInfo, 0, len(states))
	for _, s := range states {
		if err := t.Load(s.Key, s.State); err != nil {
			return nil, fmt.Errorf("%w: stream %s: %w", ErrCorrupt, s.Key, err)
		}
		wins, _ := t.Info(s.Key)
		out = append(out, StreamInfo{Key: s.Key, Windows: wins, Retired: t.Retired(s.Key), Parked: t.Parked(s.Key)})
		t.Drop(s.Key)
	}
	return out, nil
}
