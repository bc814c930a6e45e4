package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/journal"
)

// newJournal makes a journal with entries 1..3 on stream "s" and parks entry 2.
func newJournal(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "outbox.db")
	j, err := journal.Open(path, journal.Options{Source: "orders-api-1"})
	require.NoError(t, err)
	ctx := context.Background()
	for i := range 3 {
		require.NoError(t, j.Append(ctx, &journal.Entry{Stream: "s", Exchange: "orders", RoutingKey: "created", Body: []byte{byte(i)}}))
	}
	require.NoError(t, j.Park(ctx, 2, "unroutable: basic.return 312 NO_ROUTE\n(exchange \"orders\")"))
	require.NoError(t, j.Close())
	return path
}

func runCmd(t *testing.T, path string, o options, cmd string, args ...string) (string, error) {
	t.Helper()
	o.path, o.command, o.args = path, cmd, args
	var b bytes.Buffer
	err := run(context.Background(), &b, o)
	return b.String(), err
}

func TestCommands(t *testing.T) {
	path := newJournal(t)

	out, err := runCmd(t, path, options{}, "stats")
	require.NoError(t, err)
	for _, want := range []string{"orders-api-1", "pending         2", "parked          1", "next seq        s  4"} {
		require.Contains(t, strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " "), out)
	}
	out, err = runCmd(t, path, options{asJSON: true}, "stats")
	require.NoError(t, err)
	var st statsOut
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, 2, st.Pending)
	require.Equal(t, 1, st.Parked)
	require.Equal(t, int64(4), st.NextSeq["s"])

	out, err = runCmd(t, path, options{limit: 1}, "pending")
	require.NoError(t, err)
	require.Contains(t, out, "ID")
	require.Contains(t, out, "1 more")
	out, err = runCmd(t, path, options{asJSON: true}, "pending")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2)
	var e entryOut
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &e))
	require.Equal(t, uint64(3), e.ID)
	require.Equal(t, int64(3), e.Seq)
	require.Regexp(t, `^rk2:[^:]+:[1-9][0-9]*:[^:]+:3$`, e.Stamp, "the stamp as it travels")

	out, err = runCmd(t, path, options{}, "parked")
	require.NoError(t, err)
	require.Contains(t, out, `unroutable: basic.return 312 NO_ROUTE (exchange "orders")`, "the reason on one line")

	out, err = runCmd(t, path, options{}, "show", "3")
	require.NoError(t, err)
	require.Contains(t, out, "(pending)")
	require.Regexp(t, `stamp +rk2:\S+:3\n`, out)
	require.Contains(t, out, "body (1 bytes, not text):\n\"\\x02\"")
	out, err = runCmd(t, path, options{asJSON: true}, "show", "2")
	require.NoError(t, err)
	var sh shown
	require.NoError(t, json.Unmarshal([]byte(out), &sh))
	require.Equal(t, []byte{1}, sh.Body)
	require.NotNil(t, sh.ParkedAt)
	require.Contains(t, sh.Reason, "NO_ROUTE")
	_, err = runCmd(t, path, options{}, "show", "99")
	require.ErrorIs(t, err, journal.ErrNotFound)

	_, err = runCmd(t, path, options{}, "drop", "2")
	require.ErrorContains(t, err, "-yes")
	_, err = runCmd(t, path, options{}, "redrive", "x")
	require.ErrorContains(t, err, "not an entry ID")
	_, err = runCmd(t, path, options{}, "redrive", "3")
	require.ErrorIs(t, err, journal.ErrNotFound, "3 is pending, not parked")

	out, err = runCmd(t, path, options{}, "redrive", "all")
	require.NoError(t, err)
	require.Contains(t, out, "re-driven 1 parked entries")
	out, err = runCmd(t, path, options{asJSON: true}, "pending")
	require.NoError(t, err)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3)
	require.NoError(t, json.Unmarshal([]byte(lines[2]), &e))
	require.Equal(t, int64(2), e.Seq, "a re-driven entry keeps its sequence number")
	require.Greater(t, e.ID, uint64(3), "and goes to the end of the journal")

	out, err = runCmd(t, path, options{}, "compact")
	require.NoError(t, err)
	require.Contains(t, out, "compacted")
}

func TestDrop(t *testing.T) {
	path := newJournal(t)
	out, err := runCmd(t, path, options{yes: true}, "drop", "2")
	require.NoError(t, err)
	require.Contains(t, out, "dropped 1")
	out, err = runCmd(t, path, options{asJSON: true}, "stats")
	require.NoError(t, err)
	var st statsOut
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Zero(t, st.Parked)
	require.Equal(t, 2, st.Pending)
}

func TestRefusals(t *testing.T) {
	path := newJournal(t)
	_, err := runCmd(t, path, options{}, "")
	require.ErrorContains(t, err, "no command")
	_, err = runCmd(t, path, options{}, "delete")
	require.ErrorContains(t, err, "unknown command")

	// A journal in use by a publisher: locked.
	j, err := journal.Open(path, journal.Options{Source: "orders-api-1"})
	require.NoError(t, err)
	_, err = runCmd(t, path, options{}, "stats")
	require.ErrorIs(t, err, journal.ErrLocked)
	require.ErrorContains(t, err, "a running publisher holds")
	require.NoError(t, j.Close())

	// Never creates a journal.
	missing := filepath.Join(t.TempDir(), "typo.db")
	_, err = runCmd(t, missing, options{}, "stats")
	require.True(t, errors.Is(err, fs.ErrNotExist), "%v", err)
	_, statErr := os.Stat(missing)
	require.True(t, errors.Is(statErr, fs.ErrNotExist), "rabbitkit created %s", missing)
}

func TestText(t *testing.T) {
	for b, want := range map[string]bool{`{"order": 7}`: true, "two\nlines\ttab": true, "é ü": true, "\x00": false, "\xff\xfe": false, "": true} {
		require.Equal(t, want, text([]byte(b)), "%q", b)
	}
}

func TestExitCodes(t *testing.T) {
	path := newJournal(t)
	var out, errb bytes.Buffer
	code := func(args ...string) int {
		out.Reset()
		errb.Reset()
		return runMain(context.Background(), args, &out, &errb)
	}
	require.Equal(t, 0, code("journal", "-json", "stats", path))
	require.Contains(t, out.String(), `"pending":2`)
	require.Equal(t, 0, code("journal", "stats", path, "-json"), "flags after the arguments")
	require.Contains(t, out.String(), `"pending":2`)
	require.Equal(t, 2, code())
	require.Equal(t, 2, code("nope"))
	require.Equal(t, 2, code("journal", "stats"))
	require.Equal(t, 2, code("journal", "-bogus", "stats", path))
	require.Equal(t, 0, code("journal", "-h"))
	require.Equal(t, 1, code("journal", "show", path, "99"))
	require.Contains(t, errb.String(), "rabbitkit: entry 99")

	// Not a journal, and a corrupt one.
	foreign := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(foreign, []byte("hello, not a journal\n"), 0o600))
	require.Equal(t, 1, code("journal", "stats", foreign))
	require.NotEmpty(t, errb.String())
	corrupt := filepath.Join(t.TempDir(), "outbox.db")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	for i := 0; i < len(b) && i < 8192; i++ {
		b[i] ^= 0x5a
	}
	require.NoError(t, os.WriteFile(corrupt, b, 0o600))
	require.Equal(t, 1, code("journal", "stats", corrupt))
	require.NotEmpty(t, errb.String())
}

func TestJournalGolden(t *testing.T) {
	path := newJournal(t)
	mask := func(s string) string {
		s = strings.ReplaceAll(s, path, "FILE")
		s = regexp.MustCompile(`rk2:orders-api-1:[0-9]+:`).ReplaceAllString(s, "rk2:orders-api-1:EPOCH:")
		s = regexp.MustCompile(`epoch +[0-9]+`).ReplaceAllString(s, "epoch EPOCH")
		s = regexp.MustCompile(`\([0-9]+(m[0-9]+)?(\.[0-9]+)?[a-zµ]*s ago\)`).ReplaceAllString(s, "(AGE ago)")
		s = regexp.MustCompile(`\([0-9]+ bytes\)`).ReplaceAllString(s, "(N bytes)")
		return regexp.MustCompile(`[0-9]+ bytes, [0-9]+ free`).ReplaceAllString(s, "SIZE bytes, FREE free")
	}
	for _, c := range []struct{ name, cmd string }{{"journal_stats", "stats"}, {"journal_pending", "pending"}, {"journal_parked", "parked"}} {
		code, out, stderr := cli(t, "journal", c.cmd, path)
		require.Equal(t, 0, code, stderr)
		golden(t, c.name, mask(out))
	}
	code, out, stderr := cli(t, "journal", "show", path, "2")
	require.Equal(t, 0, code, stderr)
	golden(t, "journal_show", mask(out))
}
