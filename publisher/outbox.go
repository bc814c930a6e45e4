package publisher

import (
	"context"

	"github.com/rabbitkit/rabbitkit/journal"
)

// Outbox is what the sender needs from the store that holds accepted messages until the broker
// confirms them. *journal.Journal (the local bbolt file) implements it; a PostgreSQL outbox shared
// by a service's replicas will implement it too, so that both are sent by the same sender: the
// same confirms, in-flight window, resends after a reconnect, parking and alarm handling.
//
// An implementation is used by the sender goroutine and its deleter goroutine at the same time:
// every method must be safe for concurrent use. Entries are journal.Entry values: an entry's ID
// orders the whole outbox (resends go oldest first), and (Source, Epoch, Stream, Seq) is its stamp.
type Outbox interface {
	// Source and Epoch name the sequence authority; together with an entry's Stream and Seq they
	// are its stamp (docs/PROTOCOL.md).
	Source() string
	Epoch() int64
	// Read returns up to max pending (not parked) entries with ID > after, in ID order. The
	// sender treats the entries as read-only.
	Read(ctx context.Context, after uint64, max int) ([]*journal.Entry, error)
	// LastID is the highest ID ever assigned; every ID at or below it that Read does not return is
	// settled (confirmed and deleted, or parked).
	LastID() uint64
	// Changed returns a channel that is closed at the next commit that adds or re-drives entries.
	// Take it before Read, so that a commit after the Read still wakes the sender.
	Changed() <-chan struct{}
	// Delete removes confirmed entries. IDs that are no longer pending are ignored. Make one
	// attempt: the sender's deleter retries a failed Delete, with backoff, with the same IDs.
	Delete(ctx context.Context, ids ...uint64) error
	// RecordAttempt counts one failed attempt (a nack, a channel error charged to the entry) on
	// each of ids, with the outcome and its reason, durably.
	RecordAttempt(ctx context.Context, ids []uint64, o journal.Outcome, reason string) error
	// Park moves a pending entry to the parked set, with the reason, for an operator to inspect
	// and re-drive. It is never sent again until re-driven.
	Park(ctx context.Context, id uint64, reason string) error
	// Backlog returns the gauges (pending and parked counts and bytes, the oldest pending entry).
	// It is called once a second on the sender goroutine and must be cheap.
	Backlog() journal.Backlog
}

var _ Outbox = (*journal.Journal)(nil)
