package consumer

import (
	"errors"
	"fmt"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrClosed is returned by calls on a closed Consumer or Store.
	ErrClosed = errors.New("consumer: closed")
	// ErrRunning is returned by Run when another Run of the same Consumer has not returned yet.
	ErrRunning = errors.New("consumer: already running")
	// ErrInvalidConfig wraps every configuration problem New reports.
	ErrInvalidConfig = errors.New("consumer: invalid config")
	// ErrLocked is returned by OpenBoltStore when another process holds the file.
	ErrLocked = errors.New("consumer: store file is locked by another process")
	// ErrSkipped is set on an Op that a Store did not apply because an earlier Op of the same
	// stream in the same Batch failed: applying it would reorder effects of the stream.
	ErrSkipped = errors.New("consumer: skipped after an earlier failure of the same stream")
	// ErrPoison, wrapped in a handler's error, says that the message can never be handled (a
	// malformed order, a reference to something that will never exist): it is parked at once,
	// without spending MaxAttempts × RetryBackoff on its stream, like NATS's Term. Use Poison.
	ErrPoison = errors.New("consumer: poison message")
	// ErrPanic wraps a panic recovered from a handler.
	ErrPanic = errors.New("consumer: handler panicked")
	// ErrStore wraps a failure of the store. Run returns it: nothing uncommitted is acked, so every
	// message not yet committed is redelivered to the next Run.
	ErrStore = errors.New("consumer: store failed")
	// ErrStoreUnavailable is wrapped by store errors that leave nothing to assume and are worth
	// retrying: a ScopeShared store's database could not be reached, the connection was lost, a
	// serialization failure or deadlock outlasted the store's own retries; or a BoltStore's disk
	// is full (ErrDiskFull). The Run does not stop:
	// it leaves the batch's deliveries unacked, backs off (Config.StoreRetryBackoff) and commits
	// the same batch again in a fresh transaction, whose dedup check decides what had committed.
	ErrStoreUnavailable = errors.New("consumer: store unavailable")
	// ErrCommitUnknown is wrapped (together with ErrStoreUnavailable) when the connection was lost
	// while COMMIT was in flight, or the server answered 40003: the batch may or may not have
	// committed. It is counted (MetricCommitUnknown), never charged to a handler, and settled by
	// committing the batch again: what had committed comes back as duplicates.
	ErrCommitUnknown = errors.New("consumer: commit outcome unknown")
	// ErrDiskFull is wrapped (with ErrStore) by a BoltStore commit that found the disk full
	// (ENOSPC, EDQUOT, or bbolt's MaxSize): nothing of the batch was applied. It wraps
	// ErrStoreUnavailable, so the Run does not stop: it logs the file at ERROR, leaves the
	// batch's deliveries unacked, backs off (Config.StoreRetryBackoff) and commits the same batch
	// again until there is space.
	ErrDiskFull = fmt.Errorf("%w: disk full", ErrStoreUnavailable)
	// ErrQueueInUse is the connection error (Status.LastError, WaitReady) while another consumer
	// holds the queue and this Consumer's store is exclusive (a BoltStore): a second process with a
	// dedup window of its own would apply messages again, so Run does not consume beside it. Run
	// keeps retrying (the other may be a dying connection of this very process, or a replica on
	// standby); it consumes once the queue is free. Competing consumers need a shared store
	// (consumer/pginbox).
	ErrQueueInUse = errors.New("consumer: queue in use by another consumer (exclusive store)")
	// ErrGaveUp is returned by Run when Config.ReconnectBackoff stopped retrying (the default never does):
	// the broker could not be reached. Messages not acked stay in the queue.
	ErrGaveUp = errors.New("consumer: gave up reconnecting")
	// ErrStoreInUse is returned by Store.Claim, and so by Run, when another Run (of any Consumer)
	// holds the same ScopeExclusive store (a BoltStore): the dedup window lives in the running
	// Run's memory, so two Runs on one store would apply each other's messages again.
	ErrStoreInUse = errors.New("consumer: store is in use by another Run")
)

// Poison wraps err so that the handler's error parks the message at once (errors.Is(err,
// ErrPoison)); the parking reason names err. Poison(nil) is nil.
func Poison(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrPoison, err)
}
