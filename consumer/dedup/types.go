package dedup

import (
	"fmt"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// Key names one stream: the sequence space of one source. Every epoch of the source's stream
// shares the key.
type Key struct {
	Source string
	Stream string
}

// KeyOf returns the key of the stream s belongs to.
func KeyOf(s protocol.Stamp) Key { return Key{Source: s.Source, Stream: s.Stream} }

// String formats the key for logs as "source/stream".
func (k Key) String() string { return k.Source + "/" + k.Stream }

// Kind is what Classify decided about a stamp.
type Kind uint8

// Kinds returned by Classify.
const (
	// KindNew: not committed yet. Run the handler, then Commit.
	KindNew Kind = iota + 1
	// KindDuplicate: already committed (or below W and not in a given-up range). Ack it, skip the
	// handler, count it. Do not Commit (it would be a no-op).
	KindDuplicate
	// KindSuspicious: the sequence number is more than Config.MaxAhead above W, or the stamp is
	// invalid (empty source or stream, epoch or seq below 1). It must not be handled: park it with
	// a reason. Commit ignores it, so it never moves W and never hides a later real message.
	KindSuspicious
	// KindStaleEpoch: the epoch was retired (EpochRetention elapsed after its last commit, or
	// MaxEpochs pushed it out), so this tracker can no longer tell a straggler from a duplicate.
	// Park it with a reason: running the handler could apply an effect twice, dropping it could lose
	// one; parking keeps the message for an operator. Commit ignores it.
	KindStaleEpoch
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case KindNew:
		return "new"
	case KindDuplicate:
		return "duplicate"
	case KindSuspicious:
		return "suspicious"
	case KindStaleEpoch:
		return "stale-epoch"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Flags qualify a Verdict.
type Flags uint8

// Flags set by Classify.
const (
	// FlagLate: the number was in a gap already reported (EventGapDetected) or given up
	// (EventGapGivenUp). With KindNew: handle it; Commit emits EventLateArrival.
	FlagLate Flags = 1 << iota
	// FlagNewEpoch: the stream is known but this epoch is not: committing it emits
	// EventEpochChanged.
	FlagNewEpoch
	// FlagOldEpoch: the epoch is known and retained but is not the stream's most recently active
	// one (a straggler after an epoch change).
	FlagOldEpoch
	// FlagNewStream: no state exists for the stream yet.
	FlagNewStream
)

// Verdict is the result of Classify.
type Verdict struct {
	Kind  Kind
	Flags Flags
	// StoredHash is set for KindDuplicate when the duplicate's sequence number is still in the body
	// hash history (Config.HashHistory) and was committed with a non-zero hash; otherwise 0. When it
	// differs from BodyHash of the delivered body, the same stamp carried two different bodies:
	// report it.
	StoredHash uint64
}

// Has reports whether all of f are set.
func (v Verdict) Has(f Flags) bool { return v.Flags&f == f }

// String formats the verdict for logs, e.g. "new+late".
func (v Verdict) String() string {
	s := v.Kind.String()
	for _, f := range [...]struct {
		f    Flags
		name string
	}{{FlagLate, "late"}, {FlagNewEpoch, "new-epoch"}, {FlagOldEpoch, "old-epoch"}, {FlagNewStream, "new-stream"}} {
		if v.Flags&f.f != 0 {
			s += "+" + f.name
		}
	}
	return s
}

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds.
const (
	// EventGapDetected: From..To of Epoch stayed missing for Config.GapGrace while later numbers
	// arrived. Reported once per range; numbers from it that arrive later are still handled once.
	EventGapDetected EventKind = iota + 1
	// EventGapGivenUp: From..To of Epoch is no longer waited for: W moved past it (Config.MaxSeen
	// was exceeded, the stream was compacted after Config.IdleRetention, or the epoch was retired).
	// Numbers from it that arrive later are handled once and flagged late, unless the epoch was
	// retired (then they are KindStaleEpoch).
	EventGapGivenUp
	// EventLateArrival: From (== To) arrived and was committed after its gap had been reported or
	// given up.
	EventLateArrival
	// EventEpochChanged: the first message of Epoch was committed for a stream whose most
	// recently active epoch was OldEpoch.
	EventEpochChanged
	// EventEpochRetired: Epoch's state was dropped; its stragglers are now KindStaleEpoch.
	EventEpochRetired
	// EventLostForgotten: the given-up range From..To was forgotten (Config.MaxLostRanges); a
	// number from it arriving later will be classified KindDuplicate.
	EventLostForgotten
	// EventStreamForgotten: the stream's state was deleted after Config.ForgetAfter without commits.
	EventStreamForgotten
	// EventParkedForgotten: the parked stamp From (== To) of Epoch was forgotten to stay within
	// Config.MaxParked: a re-driven copy of it is now a duplicate, and must be applied by hand.
	EventParkedForgotten
)

// String returns the event kind's name.
func (k EventKind) String() string {
	switch k {
	case EventGapDetected:
		return "gap-detected"
	case EventGapGivenUp:
		return "gap-given-up"
	case EventLateArrival:
		return "late-arrival"
	case EventEpochChanged:
		return "epoch-changed"
	case EventEpochRetired:
		return "epoch-retired"
	case EventLostForgotten:
		return "lost-forgotten"
	case EventStreamForgotten:
		return "stream-forgotten"
	case EventParkedForgotten:
		return "parked-forgotten"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event reports something the consumer must log, count or pass to a callback.
type Event struct {
	Kind  EventKind
	Key   Key
	Epoch int64
	// From and To bound the sequence range, inclusive (gap and lost events; LateArrival has From == To).
	From, To int64
	// OldEpoch is set for EventEpochChanged.
	OldEpoch int64
	// Since is when a gap was first noticed (EventGapDetected, EventGapGivenUp), else zero.
	Since time.Time
}

// String formats the event for logs.
func (e Event) String() string {
	switch e.Kind {
	case EventEpochChanged:
		return fmt.Sprintf("%s %s epoch %d -> %d", e.Kind, e.Key, e.OldEpoch, e.Epoch)
	case EventEpochRetired, EventStreamForgotten:
		return fmt.Sprintf("%s %s epoch %d", e.Kind, e.Key, e.Epoch)
	}
	return fmt.Sprintf("%s %s epoch %d seq %d..%d", e.Kind, e.Key, e.Epoch, e.From, e.To)
}

// Range is an inclusive range of sequence numbers.
type Range struct{ From, To int64 }
