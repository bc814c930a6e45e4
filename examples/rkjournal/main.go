// Command rkjournal lets an operator look into a publisher's journal and act on parked messages:
// what is still pending, what was parked and why, re-drive parked messages once their cause is
// fixed, drop them for good, compact the file.
//
// Usage:
//
//	rkjournal -journal FILE [-json] stats
//	rkjournal -journal FILE [-json] [-limit N] pending
//	rkjournal -journal FILE [-json] parked
//	rkjournal -journal FILE [-json] show ID
//	rkjournal -journal FILE redrive ID... | all
//	rkjournal -journal FILE -yes drop ID... | all
//	rkjournal -journal FILE compact
//
// The journal is locked by the publisher that uses it: stop the publisher (or the service) first;
// rkjournal says so and exits 1 when the file is locked. A re-driven message gets a new journal ID
// and keeps its stream and sequence number; the next publisher started on the journal sends it (in
// journal order, after what was pending), so the consumer applies it once, as a late arrival if
// later messages of its stream went first. rkjournal never creates a journal.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rabbitkit/rabbitkit/examples/internal/cli"
	"github.com/rabbitkit/rabbitkit/journal"
)

type options struct {
	path    string
	asJSON  bool
	limit   int
	yes     bool
	command string
	args    []string
}

const usage = `Usage:
  rkjournal -journal FILE [-json] stats            counts, sizes, oldest pending, next seq per stream
  rkjournal -journal FILE [-json] [-limit N] pending   pending entries, oldest first
  rkjournal -journal FILE [-json] parked           parked entries with the reason
  rkjournal -journal FILE [-json] show ID          one entry, pending or parked, with its headers and body
  rkjournal -journal FILE redrive ID... | all      move parked entries back to pending
  rkjournal -journal FILE -yes drop ID... | all    delete parked entries for good
  rkjournal -journal FILE compact                  rewrite the file without its free pages

Stop the publisher that uses the journal first: it holds the file's lock.
`

func main() {
	var o options
	fs := flag.NewFlagSet("rkjournal", flag.ContinueOnError)
	fs.StringVar(&o.path, "journal", "", "journal file of a publisher; required")
	fs.BoolVar(&o.asJSON, "json", false, "print JSON (one object per line for pending and parked)")
	fs.IntVar(&o.limit, "limit", 100, "pending: print at most this many entries (0: all)")
	fs.BoolVar(&o.yes, "yes", false, "drop: really delete (parked messages dropped are gone for good)")
	cli.Parse(fs, usage, os.Args[1:])
	if fs.NArg() > 0 {
		o.command, o.args = fs.Arg(0), fs.Args()[1:]
	}
	cli.Exit("rkjournal", run(context.Background(), os.Stdout, o), 1)
}

func run(ctx context.Context, w io.Writer, o options) error {
	if o.path == "" {
		return errors.New("-journal is required")
	}
	switch o.command {
	case "stats", "pending", "parked", "show", "redrive", "drop", "compact":
	case "":
		return errors.New("no command: stats, pending, parked, show, redrive, drop or compact (-h for help)")
	default:
		return fmt.Errorf("unknown command %q: stats, pending, parked, show, redrive, drop or compact", o.command)
	}
	j, err := open(o.path)
	if err != nil {
		return err
	}
	defer j.Close()
	switch o.command {
	case "stats":
		return stats(w, j, o.asJSON)
	case "pending":
		return pending(ctx, w, j, o.limit, o.asJSON)
	case "parked":
		return parked(ctx, w, j, o.asJSON)
	case "show":
		return show(ctx, w, j, o.args, o.asJSON)
	case "redrive":
		return act(ctx, w, j, o.args, "re-driven", j.Redrive)
	case "drop":
		if !o.yes {
			return errors.New("drop deletes parked messages for good: add -yes")
		}
		return act(ctx, w, j, o.args, "dropped", j.DropParked)
	default:
		before := j.Stats().FileSize
		if err := j.Compact(ctx); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "compacted: %d -> %d bytes\n", before, j.Stats().FileSize)
		return err
	}
}

// open opens an existing journal as its own source, with a short lock wait and no automatic
// compaction (an inspection must not rewrite the file).
func open(path string) (*journal.Journal, error) {
	src, err := journal.SourceOf(path)
	if err != nil {
		return nil, err
	}
	j, err := journal.Open(path, journal.Options{Source: src, LockTimeout: time.Second, AutoCompactMinSize: -1})
	if errors.Is(err, journal.ErrLocked) {
		return nil, fmt.Errorf("%w: stop the publisher that uses %s first", err, path)
	}
	return j, err
}
