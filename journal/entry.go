package journal

import (
	"fmt"
	"time"

	"github.com/rabbitkit/rabbitkit/props"
)

// Properties are the AMQP basic properties stored with an entry (the kit's one properties type,
// props.Properties). Headers are kept in Entry.Headers.
type Properties = props.Properties

// Outcome records what happened to the last attempt to send an entry.
type Outcome uint8

// Outcomes recorded by RecordAttempt.
const (
	OutcomeNone         Outcome = iota // never attempted
	OutcomeNacked                      // the broker answered basic.nack
	OutcomeUnknown                     // connection or channel lost before the confirm
	OutcomeReturned                    // returned as unroutable (mandatory)
	OutcomeChannelError                // the channel was closed by the broker
	OutcomeRefused                     // refused before sending (e.g. too large for the broker)
)

// String returns the outcome's name, as used in logs.
func (o Outcome) String() string {
	switch o {
	case OutcomeNone:
		return "none"
	case OutcomeNacked:
		return "nacked"
	case OutcomeUnknown:
		return "unknown"
	case OutcomeReturned:
		return "returned"
	case OutcomeChannelError:
		return "channel-error"
	case OutcomeRefused:
		return "refused"
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Entry is one journaled message: everything needed to (re)send it.
//
// Entries returned by Read and Parked are owned by the caller, except that the
// Body of an entry from Read may share memory with the journal's cache of
// recent appends and must not be modified. Append copies what it needs before
// returning; the caller may reuse the Body and Headers afterwards.
type Entry struct {
	ID          uint64 // journal position: global append order, assigned by Append, never reused
	Stream      string // caller-chosen sequence space, required
	Seq         int64  // assigned by Append: next of Stream, from 1, +1, never reused
	Exchange    string
	RoutingKey  string
	Mandatory   bool
	Properties  Properties
	Headers     map[string]any // nil,bool,int8..int64,int,uint8..uint32,float32/64,string,[]byte,time.Time,map[string]any,[]any
	Body        []byte
	Created     time.Time // set by Append when zero
	Attempts    uint32
	LastOutcome Outcome
	LastError   string
}

// ParkedEntry is an entry that was moved out of the pending set because it
// can never be delivered; it stays until Redrive or DropParked.
type ParkedEntry struct {
	Entry
	Reason   string
	ParkedAt time.Time
}
