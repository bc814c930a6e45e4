package protocol

import (
	"errors"
	"fmt"
)

// Sentinel errors of the package.
var (
	// ErrNoStamp means the message carries no stamp in any version: it was not published through
	// rabbitkit (or an implementation of docs/PROTOCOL.md).
	ErrNoStamp = errors.New("protocol: message carries no rabbitkit stamp")
	// ErrMalformed means the message carries a stamp that cannot be decoded: rk- headers missing,
	// ill-typed, empty or out of range, a message-id with the rk2: prefix that is not a canonical
	// encoding, an unsupported version, or two forms of the stamp that disagree.
	ErrMalformed = errors.New("protocol: malformed stamp")
	// ErrTooLong means a source or stream is too long for the stamp to fit in an AMQP short string
	// (MaxSourceLen, MaxStreamLen).
	ErrTooLong = errors.New("protocol: stamp too long")
)

// Stamp identifies one message of one stream of one publisher incarnation.
// (Source, Stream, Epoch, Seq) is unique for every message a publisher accepted.
type Stamp struct {
	Source string // stable name of the sequence authority (a journal file, or an outbox shared by replicas)
	Epoch  int64  // outbox incarnation, >= 1; changes when the journal is recreated
	Stream string // sequence space, by default DefaultStream(exchange, routingKey)
	Seq    int64  // position in the stream, from 1, +1 per accepted message
}

// Version is a version of the wire contract.
type Version int

// The versions of the wire contract a consumer accepts.
const (
	V1 Version = 1 // legacy: four rk- headers
	V2 Version = 2 // the rk2: string in message-id, or in the rk-stamp header
)

// Validate reports whether the stamp satisfies the contract: non-empty source and stream, epoch and
// seq >= 1. The error wraps ErrMalformed. It does not check lengths (see CheckSource, CheckStream).
func (s Stamp) Validate() error {
	switch {
	case s.Source == "":
		return fmt.Errorf("%w: source is empty", ErrMalformed)
	case s.Stream == "":
		return fmt.Errorf("%w: stream is empty", ErrMalformed)
	case s.Epoch < 1:
		return fmt.Errorf("%w: epoch is %d, want >= 1", ErrMalformed, s.Epoch)
	case s.Seq < 1:
		return fmt.Errorf("%w: seq is %d, want >= 1", ErrMalformed, s.Seq)
	}
	return nil
}

// String returns the stamp's v2 encoding, the same string its message carries, so that a log line
// can be matched against the management UI. Unlike MessageID it never fails: an invalid or
// over-long stamp is still written out in full.
func (s Stamp) String() string { return string(s.AppendEncoded(nil)) }
