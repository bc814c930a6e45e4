package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Header names of the wire contract. See docs/PROTOCOL.md.
const (
	// HeaderSource carries the publisher's stable source name (AMQP long string).
	HeaderSource = "rk-source"
	// HeaderEpoch carries the journal incarnation (AMQP signed 64-bit integer, >= 1).
	HeaderEpoch = "rk-epoch"
	// HeaderStream carries the name of the sequence space (AMQP long string).
	HeaderStream = "rk-stream"
	// HeaderSeq carries the sequence number within the stream and epoch (AMQP signed 64-bit integer, >= 1).
	HeaderSeq = "rk-seq"
)

// Sentinel errors returned by Decode.
var (
	// ErrNoStamp means the message carries none of the rk- headers: it was not published through
	// rabbitkit (or an implementation of docs/PROTOCOL.md).
	ErrNoStamp = errors.New("protocol: message carries no rk- headers")
	// ErrMalformed means some rk- headers are present but missing, ill-typed, empty or out of range.
	ErrMalformed = errors.New("protocol: malformed rk- headers")
)

// Stamp identifies one message of one stream of one publisher incarnation.
// (Source, Stream, Epoch, Seq) is unique for every message a publisher accepted.
type Stamp struct {
	Source string // stable name of the publishing service instance
	Epoch  int64  // journal incarnation, >= 1; changes when the journal is recreated
	Stream string // sequence space, by default DefaultStream(exchange, routingKey)
	Seq    int64  // position in the stream, from 1, +1 per accepted message
}

// MaxMessageID is the longest message-id AMQP can carry (a short string).
const MaxMessageID = 255

// MaxCutMessageID is the length of a message-id that MessageID had to cut: 200 bytes at most, "~"
// and 32 hex digits.
const MaxCutMessageID = 200 + 1 + 32

// MessageID returns "<source>/<epoch>/<stream>/<seq>", the AMQP message-id rabbitkit sets when the
// caller did not set one. It is informational: consumers identify messages by the headers. When
// that string is longer than MaxMessageID bytes, it is cut to its first 200 bytes (at a UTF-8
// boundary), followed by "~" and the first 32 hex digits of the SHA-256 of the whole string: still
// unique, at most 233 bytes.
func (s Stamp) MessageID() string {
	id := s.String()
	if len(id) <= MaxMessageID {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	cut := 200
	for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(id[cut]); i++ {
		cut-- // back to the start of a valid rune; invalid UTF-8 is cut where it is
	}
	return id[:cut] + "~" + hex.EncodeToString(sum[:16])
}

// String returns "<source>/<epoch>/<stream>/<seq>", for logs; unlike MessageID it is never cut.
func (s Stamp) String() string {
	var b strings.Builder
	b.Grow(len(s.Source) + len(s.Stream) + 44)
	b.WriteString(s.Source)
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(s.Epoch, 10))
	b.WriteByte('/')
	b.WriteString(s.Stream)
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(s.Seq, 10))
	return b.String()
}

// Apply sets the four rk- headers on h and returns it, allocating a table when h is nil.
func (s Stamp) Apply(h amqp.Table) amqp.Table {
	if h == nil {
		h = make(amqp.Table, 4)
	}
	h[HeaderSource] = s.Source
	h[HeaderEpoch] = s.Epoch
	h[HeaderStream] = s.Stream
	h[HeaderSeq] = s.Seq
	return h
}

// Validate reports whether the stamp satisfies the contract: non-empty source and stream, epoch and
// seq >= 1. The error wraps ErrMalformed.
func (s Stamp) Validate() error {
	switch {
	case s.Source == "":
		return fmt.Errorf("%w: %s is empty", ErrMalformed, HeaderSource)
	case s.Stream == "":
		return fmt.Errorf("%w: %s is empty", ErrMalformed, HeaderStream)
	case s.Epoch < 1:
		return fmt.Errorf("%w: %s is %d, want >= 1", ErrMalformed, HeaderEpoch, s.Epoch)
	case s.Seq < 1:
		return fmt.Errorf("%w: %s is %d, want >= 1", ErrMalformed, HeaderSeq, s.Seq)
	}
	return nil
}

// Decode reads the stamp from AMQP headers. It returns ErrNoStamp when none of the four headers is
// present, and an error wrapping ErrMalformed (naming the header and the problem) when some are
// missing, ill-typed, empty or below 1. Integers of any AMQP integer type and strings given as
// string or []byte are accepted.
func Decode(h amqp.Table) (Stamp, error) {
	_, hasSrc := h[HeaderSource]
	_, hasEp := h[HeaderEpoch]
	_, hasStr := h[HeaderStream]
	_, hasSeq := h[HeaderSeq]
	if !hasSrc && !hasEp && !hasStr && !hasSeq {
		return Stamp{}, ErrNoStamp
	}
	var s Stamp
	var err error
	if s.Source, err = stringHeader(h, HeaderSource); err != nil {
		return Stamp{}, err
	}
	if s.Stream, err = stringHeader(h, HeaderStream); err != nil {
		return Stamp{}, err
	}
	if s.Epoch, err = intHeader(h, HeaderEpoch); err != nil {
		return Stamp{}, err
	}
	if s.Seq, err = intHeader(h, HeaderSeq); err != nil {
		return Stamp{}, err
	}
	return s, s.Validate()
}

func stringHeader(h amqp.Table, name string) (string, error) {
	v, ok := h[name]
	if !ok {
		return "", fmt.Errorf("%w: %s is missing", ErrMalformed, name)
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	default:
		return "", fmt.Errorf("%w: %s has type %T, want string", ErrMalformed, name, v)
	}
}

func intHeader(h amqp.Table, name string) (int64, error) {
	v, ok := h[name]
	if !ok {
		return 0, fmt.Errorf("%w: %s is missing", ErrMalformed, name)
	}
	switch x := v.(type) {
	case int64:
		return x, nil
	case int32:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int:
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	default:
		return 0, fmt.Errorf("%w: %s has type %T, want a signed 64-bit integer", ErrMalformed, name, v)
	}
}

// DefaultStream returns the default sequence space for a destination: the escaped exchange name, a
// slash, the escaped routing key. Escaping ('%' -> "%25", '/' -> "%2F") keeps distinct destinations
// distinct even when names contain slashes.
func DefaultStream(exchange, routingKey string) string {
	return escape(exchange) + "/" + escape(routingKey)
}

var escaper = strings.NewReplacer("%", "%25", "/", "%2F")

func escape(s string) string {
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	return escaper.Replace(s)
}
