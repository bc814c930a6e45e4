package history

import (
	"errors"
	"testing"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/stretchr/testify/require"
)

func TestLines(t *testing.T) {
	s := protocol.Stamp{Source: "svc a", Epoch: 3, Stream: "ex/key%1\tx", Seq: 42}
	line := FormatAccepted(s)
	require.Equal(t, "accepted svc%20a 3 ex/key%251%09x 42", line)
	got, err := ParseAccepted(line + "\n")
	require.NoError(t, err)
	require.Equal(t, s, got)

	a := Applied{Stamp: s, Count: 2}
	require.Equal(t, "svc%20a 3 ex/key%251%09x 42 2", FormatApplied(a))
	ga, err := ParseApplied(FormatApplied(a))
	require.NoError(t, err)
	require.Equal(t, a, ga)

	c := FormatConflict(s)
	require.Equal(t, "conflict svc%20a 3 ex/key%251%09x 42", c)
	gc, err := ParseConflict(c + "\r\n")
	require.NoError(t, err)
	require.Equal(t, s, gc)

	g := Gap{Source: "a", Epoch: 1, Stream: "s", From: 5, To: 9}
	require.Equal(t, "gap a 1 s 5 9", FormatGap(g))
	gg, err := ParseGap(FormatGap(g))
	require.NoError(t, err)
	require.Equal(t, g, gg)
}

func TestConflictLines(t *testing.T) {
	tests := []struct {
		stamp protocol.Stamp
		line  string
	}{
		{protocol.Stamp{Source: "orders", Epoch: 1, Stream: "x/new", Seq: 1}, "conflict orders 1 x/new 1"},
		{protocol.Stamp{Source: "a b", Epoch: 1 << 40, Stream: "%\n", Seq: 1 << 62}, "conflict a%20b 1099511627776 %25%0A 4611686018427387904"},
		{protocol.Stamp{Source: "ü", Epoch: 7, Stream: "\x7f", Seq: 9}, "conflict ü 7 %7F 9"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.line, FormatConflict(tt.stamp))
		got, err := ParseConflict(tt.line)
		require.NoError(t, err, tt.line)
		require.Equal(t, tt.stamp, got)
	}
}

func TestParseErrors(t *testing.T) {
	bad := []struct {
		parse func(string) error
		line  string
	}{
		{pa, ""},
		{pa, "accepted a 1 s"},
		{pa, "accepted a 1 s 1 extra"},
		{pa, "accepted a  1 s 1"},
		{pa, "confirmed 10"},
		{pa, "accepted a x s 1"},
		{pa, "accepted a 1 s 0"},
		{pa, "accepted a 0 s 1"},
		{pa, "accepted  1 s 1"},
		{pa, "accepted a%2 1 s 1"},
		{pa, "accepted a%zz 1 s 1"},
		{pl, "a 1 s 1"},
		{pl, "a 1 s 1 -1"},
		{pl, "a 1 s 1 x"},
		{pg, "gap a 1 s 5 4"},
		{pg, "gap a 1 s 5"},
		{pg, "a 1 s 5 6"},
		{pc, ""},
		{pc, "conflict a 1 s"},
		{pc, "conflict a 1 s 1 2"},
		{pc, "accepted a 1 s 1"},
		{pc, "gap a 1 s 1 2"},
		{pc, "conflict a 1 s 0"},
		{pc, "conflict a x s 1"},
		{pc, "conflict a%g0 1 s 1"},
		{pc, "conflict  1 s 1"},
	}
	for _, b := range bad {
		err := b.parse(b.line)
		require.Error(t, err, b.line)
		require.True(t, errors.Is(err, ErrSyntax), "%q: %v", b.line, err)
	}
}

func pa(l string) error { _, err := ParseAccepted(l); return err }
func pl(l string) error { _, err := ParseApplied(l); return err }
func pg(l string) error { _, err := ParseGap(l); return err }
func pc(l string) error { _, err := ParseConflict(l); return err }

func FuzzLines(f *testing.F) {
	f.Add("src", int64(1), "ex/key", int64(1), int64(1))
	f.Add("a b", int64(7), "%%\n", int64(1<<62), int64(3))
	f.Add("ü", int64(1), "\x00\x7f", int64(9), int64(0))
	f.Fuzz(func(t *testing.T, src string, epoch int64, stream string, seq, count int64) {
		s := protocol.Stamp{Source: src, Epoch: epoch, Stream: stream, Seq: seq}
		line := FormatAccepted(s)
		got, err := ParseAccepted(line)
		if s.Validate() != nil {
			require.Error(t, err)
			return
		}
		require.NoError(t, err, line)
		require.Equal(t, s, got)
		c, err := ParseConflict(FormatConflict(s))
		require.NoError(t, err)
		require.Equal(t, s, c)
		if count >= 0 {
			a, err := ParseApplied(FormatApplied(Applied{Stamp: s, Count: count}))
			require.NoError(t, err)
			require.Equal(t, Applied{Stamp: s, Count: count}, a)
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add("accepted a 1 s 1")
	f.Add("gap a 1 s 1 2")
	f.Add("conflict a 1 s 1")
	f.Add("a 1 s 1 1")
	f.Fuzz(func(t *testing.T, line string) {
		// Never panics; whatever parses formats back to a line that parses to the same value.
		if s, err := ParseAccepted(line); err == nil {
			again, err := ParseAccepted(FormatAccepted(s))
			require.NoError(t, err)
			require.Equal(t, s, again)
		}
		if a, err := ParseApplied(line); err == nil {
			again, err := ParseApplied(FormatApplied(a))
			require.NoError(t, err)
			require.Equal(t, a, again)
		}
		if s, err := ParseConflict(line); err == nil {
			again, err := ParseConflict(FormatConflict(s))
			require.NoError(t, err)
			require.Equal(t, s, again)
		}
		if g, err := ParseGap(line); err == nil {
			again, err := ParseGap(FormatGap(g))
			require.NoError(t, err)
			require.Equal(t, g, again)
		}
	})
}
