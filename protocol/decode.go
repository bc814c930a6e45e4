package protocol

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Decode reads the stamp of a delivery from its message-id and headers, in any version, and says
// which version it found. The rule (docs/PROTOCOL.md, "Precedence"):
//
//   - A message can carry up to three forms of a stamp: a v2 string in message-id (it starts with
//     "rk<digits>:"), a v2 string in the rk-stamp header, and the four v1 rk- headers.
//   - None present: ErrNoStamp. A message-id that does not start with "rk<digits>:" is the
//     application's and is ignored.
//   - Every form present must decode, and all of them must name the same stamp; otherwise the
//     error wraps ErrMalformed and says which form is broken or how they disagree.
//   - The version is V2 when a v2 form is present, else V1.
//
// Decode never panics.
func Decode(messageID string, h amqp.Table) (Stamp, Version, error) {
	var (
		found   Stamp
		version Version
		from    string
	)
	take := func(s Stamp, v Version, form string) error {
		if from != "" && s != found {
			return fmt.Errorf("%w: the stamp in %s (%s) and the stamp in %s (%s) disagree", ErrMalformed, from, found, form, s)
		}
		if from == "" {
			found, from = s, form
		}
		version = max(version, v)
		return nil
	}
	if LooksLikeStamp(messageID) {
		s, err := ParseMessageID(messageID)
		if err != nil {
			return Stamp{}, 0, fmt.Errorf("%w (in message-id)", err)
		}
		_ = take(s, V2, "message-id")
	}
	if v, ok := h[HeaderStamp]; ok {
		var str string
		switch x := v.(type) {
		case string:
			str = x
		case []byte:
			str = string(x)
		default:
			return Stamp{}, 0, fmt.Errorf("%w: %s has type %T, want string", ErrMalformed, HeaderStamp, v)
		}
		s, err := ParseMessageID(str)
		if errors.Is(err, ErrNoStamp) {
			return Stamp{}, 0, fmt.Errorf("%w: %s %.40q does not start with %q", ErrMalformed, HeaderStamp, str, Prefix)
		}
		if err != nil {
			return Stamp{}, 0, fmt.Errorf("%w (in %s)", err, HeaderStamp)
		}
		if err := take(s, V2, HeaderStamp); err != nil {
			return Stamp{}, 0, err
		}
	}
	if hasV1(h) {
		s, err := DecodeV1(h)
		if err != nil {
			return Stamp{}, 0, err
		}
		if err := take(s, V1, "the rk- headers"); err != nil {
			return Stamp{}, 0, err
		}
	}
	if from == "" {
		return Stamp{}, 0, ErrNoStamp
	}
	return found, version, nil
}
