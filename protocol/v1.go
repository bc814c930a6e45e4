package protocol

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Header names of contract v1 (legacy): the stamp as four headers. A rabbitkit publisher no longer
// sends them; consumers accept them from older publishers and other languages' implementations.
const (
	// HeaderSource carries the source (AMQP long string).
	HeaderSource = "rk-source"
	// HeaderEpoch carries the epoch (any AMQP integer type, >= 1).
	HeaderEpoch = "rk-epoch"
	// HeaderStream carries the stream (AMQP long string).
	HeaderStream = "rk-stream"
	// HeaderSeq carries the sequence number (any AMQP integer type, >= 1).
	HeaderSeq = "rk-seq"
)

// ApplyV1 sets the four v1 headers on h and returns it, allocating a table when h is nil. It exists
// for tests and tools that must produce legacy messages; publishers send v2 (MessageID).
func (s Stamp) ApplyV1(h amqp.Table) amqp.Table {
	if h == nil {
		h = make(amqp.Table, 4)
	}
	h[HeaderSource] = s.Source
	h[HeaderEpoch] = s.Epoch
	h[HeaderStream] = s.Stream
	h[HeaderSeq] = s.Seq
	return h
}

// hasV1 reports whether any of the four v1 headers is present.
func hasV1(h amqp.Table) bool {
	for _, k := range [...]string{HeaderSource, HeaderEpoch, HeaderStream, HeaderSeq} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// DecodeV1 reads a v1 stamp from AMQP headers. It returns ErrNoStamp when none of the four headers
// is present, and an error wrapping ErrMalformed (naming the header and the problem) when some are
// missing, ill-typed, empty or below 1. Integers of any AMQP integer type and strings given as
// string or []byte are accepted.
func DecodeV1(h amqp.Table) (Stamp, error) {
	if !hasV1(h) {
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
	if err := s.Validate(); err != nil {
		return Stamp{}, fmt.Errorf("%w (rk- headers)", err)
	}
	return s, nil
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
