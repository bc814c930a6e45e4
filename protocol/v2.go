package protocol

import (
	"fmt"
	"strconv"
)

// The v2 form of the stamp. See docs/PROTOCOL.md, section 1.
const (
	// Prefix starts every v2 stamp. A message-id that starts with "rk", decimal digits and ':' is a
	// stamp of that version; rabbitkit decodes version 2 and parks any other.
	Prefix = "rk2:"
	// HeaderStamp is the header (long string) that carries the v2 stamp when the application set
	// its own message-id, which then travels unchanged.
	HeaderStamp = "rk-stamp"
	// MaxLen is the longest stamp: an AMQP short string.
	MaxLen = 255
	// MaxSourceLen is the longest source, counted after escaping.
	MaxSourceLen = 80
	// MaxStreamLen is the longest stream, counted after escaping. With MaxSourceLen and two
	// 19-digit numbers the stamp is exactly MaxLen bytes: 4 + 80 + 1 + 19 + 1 + 130 + 1 + 19.
	MaxStreamLen = 130
)

// MessageID returns the stamp's v2 encoding, "rk2:<source>:<epoch>:<stream>:<seq>", the AMQP
// message-id a rabbitkit publisher sends. It fails, wrapping ErrMalformed or ErrTooLong, when the
// stamp is invalid or does not fit (MaxSourceLen, MaxStreamLen).
func (s Stamp) MessageID() (string, error) {
	if err := s.Validate(); err != nil {
		return "", err
	}
	if err := CheckSource(s.Source); err != nil {
		return "", err
	}
	if err := CheckStream(s.Stream); err != nil {
		return "", err
	}
	return string(s.AppendEncoded(make([]byte, 0, 24+len(s.Source)+len(s.Stream)+22))), nil
}

// AppendEncoded appends the stamp's v2 encoding to b, without checking it.
func (s Stamp) AppendEncoded(b []byte) []byte {
	b = append(b, Prefix...)
	b = appendEscaped(b, s.Source)
	b = append(b, ':')
	b = strconv.AppendInt(b, s.Epoch, 10)
	b = append(b, ':')
	b = appendEscaped(b, s.Stream)
	b = append(b, ':')
	return strconv.AppendInt(b, s.Seq, 10)
}

// EncodedLen returns the length of the stamp's v2 encoding, without building it.
func (s Stamp) EncodedLen() int {
	return len(Prefix) + EscapedLen(s.Source) + 1 + digits(s.Epoch) + 1 + EscapedLen(s.Stream) + 1 + digits(s.Seq)
}

func digits(n int64) int {
	d := 1
	for n >= 10 || n <= -10 {
		n /= 10
		d++
	}
	if n < 0 {
		d++
	}
	return d
}

// EscapedLen returns the length of s once escaped for a stamp.
func EscapedLen(s string) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if !literal(s[i]) {
			n += 2
		}
	}
	return n
}

// CheckSource reports whether src can be a stamp's source: non-empty and at most MaxSourceLen
// bytes once escaped. The error wraps ErrMalformed or ErrTooLong.
func CheckSource(src string) error {
	if src == "" {
		return fmt.Errorf("%w: source is empty", ErrMalformed)
	}
	if n := EscapedLen(src); n > MaxSourceLen {
		return fmt.Errorf("%w: source %.40q… is %d bytes escaped; the limit is %d (protocol.MaxSourceLen)", ErrTooLong, src, n, MaxSourceLen)
	}
	return nil
}

// CheckStream reports whether stream can be a stamp's stream: non-empty and at most MaxStreamLen
// bytes once escaped. The error wraps ErrMalformed or ErrTooLong.
func CheckStream(stream string) error {
	if stream == "" {
		return fmt.Errorf("%w: stream is empty", ErrMalformed)
	}
	if n := EscapedLen(stream); n > MaxStreamLen {
		return fmt.Errorf("%w: stream %.40q… is %d bytes escaped; the limit is %d (protocol.MaxStreamLen): set a shorter Message.Stream", ErrTooLong, stream, n, MaxStreamLen)
	}
	return nil
}

// ParseMessageID decodes a v2 stamp. It returns ErrNoStamp when id is not a stamp at all (it does
// not start with "rk", digits and ':'), and an error wrapping ErrMalformed, naming the problem,
// when it is one but not a canonical v2 encoding of a valid stamp: another version, a bad escape,
// an escaped byte that must be literal, a literal byte that must be escaped, an empty field, a
// number that is not decimal, is signed, has a leading zero, is 0 or overflows int64, a missing
// field, trailing bytes, or more than MaxLen bytes. Limits on the source and stream lengths are
// the publisher's; the decoder takes any stamp within MaxLen.
func ParseMessageID(id string) (Stamp, error) {
	v, rest, ok := versionOf(id)
	if !ok {
		return Stamp{}, ErrNoStamp
	}
	if v != "2" {
		return Stamp{}, fmt.Errorf("%w: stamp version rk%s is not supported (this consumer reads rk2)", ErrMalformed, v)
	}
	if len(id) > MaxLen {
		return Stamp{}, fmt.Errorf("%w: stamp is %d bytes, over %d", ErrMalformed, len(id), MaxLen)
	}
	var s Stamp
	var err error
	var field string
	if field, rest, err = cut(rest, "source"); err != nil {
		return Stamp{}, err
	}
	if s.Source, err = unescape(field, "source"); err != nil {
		return Stamp{}, err
	}
	if field, rest, err = cut(rest, "epoch"); err != nil {
		return Stamp{}, err
	}
	if s.Epoch, err = parseNumber(field, "epoch"); err != nil {
		return Stamp{}, err
	}
	if field, rest, err = cut(rest, "stream"); err != nil {
		return Stamp{}, err
	}
	if s.Stream, err = unescape(field, "stream"); err != nil {
		return Stamp{}, err
	}
	if s.Seq, err = parseNumber(rest, "seq"); err != nil {
		return Stamp{}, err
	}
	return s, nil
}

// LooksLikeStamp reports whether id starts like a stamp of some version ("rk", decimal digits, ':'),
// valid or not. A publisher refuses such an application message-id: it would be read as a stamp.
func LooksLikeStamp(id string) bool {
	_, _, ok := versionOf(id)
	return ok
}

// versionOf splits "rk<digits>:rest"; ok is false when id does not start so.
func versionOf(id string) (v, rest string, ok bool) {
	if len(id) < 4 || id[0] != 'r' || id[1] != 'k' {
		return "", "", false
	}
	i := 2
	for i < len(id) && id[i] >= '0' && id[i] <= '9' {
		i++
	}
	if i == 2 || i >= len(id) || id[i] != ':' {
		return "", "", false
	}
	return id[2:i], id[i+1:], true
}

// cut returns the text before the next ':' and the text after it.
func cut(s, name string) (field, rest string, err error) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i], s[i+1:], nil
		}
	}
	return "", "", fmt.Errorf("%w: stamp ends before its %s field is closed by ':'", ErrMalformed, name)
}

// parseNumber reads a canonical positive decimal int64: digits only, no leading zero, >= 1.
func parseNumber(s, name string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: %s is empty", ErrMalformed, name)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%w: %s %.30q is not a decimal number (byte %d)", ErrMalformed, name, s, i)
		}
	}
	if s[0] == '0' {
		return 0, fmt.Errorf("%w: %s %.30q has a leading zero or is 0; want >= 1 without leading zeros", ErrMalformed, name, s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s %.30q overflows a signed 64-bit integer", ErrMalformed, name, s)
	}
	return n, nil
}

// literal reports whether byte c stands for itself in an escaped field: printable ASCII except
// '%' (the escape) and ':' (the separator). Every other byte is written %XX.
func literal(c byte) bool { return c > ' ' && c < 0x7f && c != '%' && c != ':' }

const upperHex = "0123456789ABCDEF"

func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if literal(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', upperHex[c>>4], upperHex[c&15])
		}
	}
	return b
}

func unescape(s, name string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrMalformed, name)
	}
	plain := true
	for i := 0; i < len(s); i++ {
		if !literal(s[i]) {
			plain = false
			break
		}
	}
	if plain {
		return s, nil
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if literal(c) {
			out = append(out, c)
			continue
		}
		if c != '%' {
			return "", fmt.Errorf("%w: %s has byte 0x%02X at %d unescaped; it must be written %%%02X", ErrMalformed, name, c, i, c)
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w: %s ends in a truncated escape at %d", ErrMalformed, name, i)
		}
		hi, lo := unhex(s[i+1]), unhex(s[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: %s has a bad escape %q at %d (want %%XX, upper-case hex)", ErrMalformed, name, s[i:i+3], i)
		}
		d := byte(hi<<4 | lo)
		if literal(d) {
			return "", fmt.Errorf("%w: %s escapes %q at %d, which must be written as itself", ErrMalformed, name, d, i)
		}
		out = append(out, d)
		i += 2
	}
	return string(out), nil
}

// unhex decodes an upper-case hex digit, -1 for anything else.
func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
