package main

// The journal subcommand: look into a stopped publisher's journal and act on parked messages: what
// is still pending, what was parked and why, re-drive parked messages once their cause is fixed,
// drop them for good, compact the file.
//
// The journal is locked by the publisher that uses it: stop the publisher (or the service) first;
// the command says so and exits 1 when the file is locked. A re-driven message gets a new journal
// ID and keeps its stream and sequence number; the next publisher started on the journal sends it
// (in journal order, after what was pending), so the consumer applies it once, as a late arrival if
// later messages of its stream went first. It never creates a journal.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

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

const journalUsage = `Usage:
  rabbitkit journal [-json] stats FILE             counts, sizes, oldest pending, next seq per stream
  rabbitkit journal [-json] [-limit N] pending FILE   pending entries, oldest first
  rabbitkit journal [-json] parked FILE            parked entries with the reason
  rabbitkit journal [-json] show FILE ID           one entry, pending or parked, with its headers and body
  rabbitkit journal redrive FILE ID... | all       move parked entries back to pending
  rabbitkit journal -yes drop FILE ID... | all     delete parked entries for good
  rabbitkit journal compact FILE                   rewrite the file without its free pages

Stop the publisher that uses the journal first: it holds the file's lock (its metrics endpoint
reports the journal's pending and parked counts while it runs).
`

// journalMain parses the journal subcommand's command line and runs it.
func journalMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("rabbitkit journal", flag.ContinueOnError)
	fs.BoolVar(&o.asJSON, "json", false, "print JSON (one object per line for pending and parked)")
	fs.IntVar(&o.limit, "limit", 100, "pending: print at most this many entries (0: all)")
	fs.BoolVar(&o.yes, "yes", false, "drop: really delete (parked messages dropped are gone for good)")
	pos, err := parseFlags(fs, journalUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		fs.Usage()
		return usageErr("journal: want COMMAND FILE")
	}
	o.command, o.path, o.args = pos[0], pos[1], pos[2:]
	return run(ctx, stdout, o)
}

func run(ctx context.Context, w io.Writer, o options) error {
	if o.path == "" {
		return usageErr("journal: no FILE")
	}
	switch o.command {
	case "stats", "pending", "parked", "show", "redrive", "drop", "compact":
	case "":
		return usageErr("no command: stats, pending, parked, show, redrive, drop or compact (-h for help)")
	default:
		return usageErr("unknown command %q: stats, pending, parked, show, redrive, drop or compact", o.command)
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
		return nil, fmt.Errorf("%w: a running publisher holds %s (the lock wait is 1s): stop it first, or read its pending and parked counts on its metrics endpoint", err, path)
	}
	return j, err
}
