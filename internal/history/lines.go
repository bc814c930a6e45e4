package history

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// ErrSyntax is returned by the Parse functions for a line that is not in the expected format.
var ErrSyntax = errors.New("history: malformed line")

// Gap is a range of sequence numbers the consumer reported as missing: the line
// "gap <source> <epoch> <stream> <from> <to>" on the consumer's stderr.
type Gap struct {
	Source string
	Epoch  int64
	Stream string
	From   int64 // first missing sequence number
	To     int64 // last missing sequence number, >= From
}

// Applied is one line of the consumer's ledger: how many times the handler's effect was committed
// for a message. Exactly-once means Count == 1 for every accepted message.
type Applied struct {
	protocol.Stamp
	Count int64
}

// FormatAccepted returns "accepted <source> <epoch> <stream> <seq>", the line the example publisher
// prints once Publish returned (the message is journaled).
func FormatAccepted(s protocol.Stamp) string {
	return "accepted " + stampFields(s)
}

// ParseAccepted parses a line written by FormatAccepted.
func ParseAccepted(line string) (protocol.Stamp, error) {
	f, err := fields(line, "accepted", 4)
	if err != nil {
		return protocol.Stamp{}, err
	}
	return parseStamp(f, line)
}

// FormatApplied returns "<source> <epoch> <stream> <seq> <count>", one line of the consumer's
// -dump output.
func FormatApplied(a Applied) string {
	return stampFields(a.Stamp) + " " + strconv.FormatInt(a.Count, 10)
}

// ParseApplied parses a line written by FormatApplied.
func ParseApplied(line string) (Applied, error) {
	f, err := fields(line, "", 5)
	if err != nil {
		return Applied{}, err
	}
	s, err := parseStamp(f[:4], line)
	if err != nil {
		return Applied{}, err
	}
	n, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil || n < 0 {
		return Applied{}, fmt.Errorf("%w: bad count in %q", ErrSyntax, line)
	}
	return Applied{Stamp: s, Count: n}, nil
}

// FormatGap returns "gap <source> <epoch> <stream> <from> <to>".
func FormatGap(g Gap) string {
	return "gap " + Escape(g.Source) + " " + strconv.FormatInt(g.Epoch, 10) + " " + Escape(g.Stream) +
		" " + strconv.FormatInt(g.From, 10) + " " + strconv.FormatInt(g.To, 10)
}

// ParseGap parses a line written by FormatGap.
func ParseGap(line string) (Gap, error) {
	f, err := fields(line, "gap", 5)
	if err != nil {
		return Gap{}, err
	}
	s, err := parseStamp(f[:4], line)
	if err != nil {
		return Gap{}, err
	}
	to, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil || to < s.Seq {
		return Gap{}, fmt.Errorf("%w: bad range end in %q", ErrSyntax, line)
	}
	return Gap{Source: s.Source, Epoch: s.Epoch, Stream: s.Stream, From: s.Seq, To: to}, nil
}

// FormatConflict returns "conflict <source> <epoch> <stream> <seq>", the line the example consumer
// prints when a duplicate of an already handled message arrives with a different body: the
// publisher reused a sequence number for another message, which the ledger alone cannot see.
func FormatConflict(s protocol.Stamp) string {
	return "conflict " + stampFields(s)
}

// ParseConflict parses a line written by FormatConflict.
func ParseConflict(line string) (protocol.Stamp, error) {
	f, err := fields(line, "conflict", 4)
	if err != nil {
		return protocol.Stamp{}, err
	}
	return parseStamp(f, line)
}

// Escape makes a name safe to print as one whitespace-free field: '%', whitespace and control
// characters become %XX (their UTF-8 bytes in hex). Unescape reverses it.
func Escape(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if escapable(c) {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Unescape reverses Escape.
func Unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w: truncated escape in %q", ErrSyntax, s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("%w: bad escape in %q", ErrSyntax, s)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if escapable(s[i]) {
			return true
		}
	}
	return false
}

// escapable: '%', ASCII whitespace and control characters, DEL. Bytes >= 0x80 pass through (UTF-8
// names stay readable); the Unicode spaces among them are rare enough to live with in a test tool,
// and strings.Fields is not used to split, so they cannot break parsing.
func escapable(c byte) bool { return c == '%' || c <= ' ' || c == 0x7f }

func stampFields(s protocol.Stamp) string {
	return Escape(s.Source) + " " + strconv.FormatInt(s.Epoch, 10) + " " + Escape(s.Stream) + " " +
		strconv.FormatInt(s.Seq, 10)
}

// fields splits line on single spaces after checking the leading keyword (if any) and the count.
func fields(line, keyword string, n int) ([]string, error) {
	line = strings.TrimRight(line, "\r\n")
	if keyword != "" {
		rest, ok := strings.CutPrefix(line, keyword+" ")
		if !ok {
			return nil, fmt.Errorf("%w: %q does not start with %q", ErrSyntax, line, keyword)
		}
		line = rest
	}
	f := strings.Split(line, " ")
	if len(f) != n {
		return nil, fmt.Errorf("%w: %q has %d fields, want %d", ErrSyntax, line, len(f), n)
	}
	return f, nil
}

func parseStamp(f []string, line string) (protocol.Stamp, error) {
	var s protocol.Stamp
	var err error
	if s.Source, err = Unescape(f[0]); err != nil {
		return s, err
	}
	if s.Stream, err = Unescape(f[2]); err != nil {
		return s, err
	}
	if s.Epoch, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return s, fmt.Errorf("%w: bad epoch in %q", ErrSyntax, line)
	}
	if s.Seq, err = strconv.ParseInt(f[3], 10, 64); err != nil {
		return s, fmt.Errorf("%w: bad seq in %q", ErrSyntax, line)
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("%w: %q: %w", ErrSyntax, line, err)
	}
	return s, nil
}
