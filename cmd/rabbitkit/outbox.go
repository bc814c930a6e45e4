package main

// The outbox subcommand: a PostgreSQL outbox's backlog (publisher/pgoutbox), and re-driving its
// parked rows.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

const outboxUsage = `Usage:
  rabbitkit outbox [-json] stats -pg DSN [-table NAME]             counts, oldest pending, next seq per stream
  rabbitkit outbox [-json] [-limit N] pending -pg DSN [-table NAME]   pending rows, oldest first
  rabbitkit outbox [-json] parked -pg DSN [-table NAME]            parked rows with the reason
  rabbitkit outbox redrive -pg DSN [-table NAME] ID... | all       make parked rows pending again

The outbox is shared by the service's replicas: these commands run while they do (no need to stop
them). Rows are named by their id (the ID column). A re-driven row keeps its epoch, stream and seq:
the relay sends it next. The commands open the outbox as the source recorded in its table (they
never create a table); opening it checks the database's identity as a publisher does, so on a
restored database it starts the new epoch the next publisher would.
`

// outboxStatsOut is what outbox stats prints.
type outboxStatsOut struct {
	Table         string           `json:"table"`
	Source        string           `json:"source"`
	Epoch         int64            `json:"epoch"`
	Pending       int              `json:"pending"`
	PendingBytes  int64            `json:"pending_bytes"`
	Parked        int              `json:"parked"`
	ParkedBytes   int64            `json:"parked_bytes"`
	OldestPending *time.Time       `json:"oldest_pending,omitempty"`
	NextSeq       map[string]int64 `json:"next_seq"`
}

// outboxMain parses the outbox subcommand's command line and runs it.
func outboxMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rabbitkit outbox", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON (one object per line for pending and parked)")
	dsn := fs.String("pg", "", "PostgreSQL DSN of the outbox's database; required")
	table := fs.String("table", pgoutbox.DefaultTable, "the outbox table (Options.Table), may be schema.table")
	limit := fs.Int("limit", 100, "pending: print at most this many rows (0: all)")
	pos, err := parseFlags(fs, outboxUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 || *dsn == "" {
		fs.Usage()
		return usageErr("outbox: want COMMAND -pg DSN")
	}
	cmd, rest := pos[0], pos[1:]
	switch cmd {
	case "stats", "pending", "parked":
		if len(rest) > 0 {
			return usageErr("outbox %s takes no arguments", cmd)
		}
	case "redrive":
		if len(rest) == 0 {
			return usageErr("outbox redrive: name the parked rows: IDs (from `rabbitkit outbox parked`) or all")
		}
	default:
		return usageErr("unknown command %q: stats, pending, parked or redrive", cmd)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pool, err := openPool(ctx, *dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	src, _, err := pgoutbox.SourceOf(ctx, pool, *table)
	if err != nil {
		return redactErr(err, *dsn)
	}
	o, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Table: *table, Source: src})
	if err != nil {
		return redactErr(err, *dsn)
	}
	switch cmd {
	case "stats":
		err = outboxStats(ctx, stdout, o, *table, *asJSON)
	case "pending":
		err = outboxPending(ctx, stdout, o, *limit, *asJSON)
	case "parked":
		err = outboxParked(ctx, stdout, o, *asJSON)
	default:
		err = outboxRedrive(ctx, stdout, o, rest)
	}
	return redactErr(err, *dsn)
}

func outboxStats(ctx context.Context, w io.Writer, o *pgoutbox.Outbox, table string, asJSON bool) error {
	b, err := o.Backlog(ctx)
	if err != nil {
		return err
	}
	next, err := o.NextSeqs(ctx)
	if err != nil {
		return err
	}
	out := outboxStatsOut{Table: table, Source: o.Source(), Epoch: o.Epoch(), Pending: b.Pending, PendingBytes: b.PendingBytes,
		Parked: b.Parked, ParkedBytes: b.ParkedBytes, NextSeq: next}
	if !b.OldestPending.IsZero() {
		t := b.OldestPending.UTC()
		out.OldestPending = &t
	}
	if asJSON {
		return json.NewEncoder(w).Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "outbox\t%s\n", out.Table)
	fmt.Fprintf(tw, "source\t%s\n", out.Source)
	fmt.Fprintf(tw, "epoch\t%d\n", out.Epoch)
	fmt.Fprintf(tw, "pending\t%d (%d bytes)\n", out.Pending, out.PendingBytes)
	if out.OldestPending != nil {
		fmt.Fprintf(tw, "oldest pending\t%s\n", out.OldestPending.Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "parked\t%d (%d bytes)\n", out.Parked, out.ParkedBytes)
	for _, s := range slices.Sorted(maps.Keys(out.NextSeq)) {
		fmt.Fprintf(tw, "next seq\t%s\t%d\n", s, out.NextSeq[s])
	}
	return tw.Flush()
}

// rowOut converts an outbox row into the journal commands' entryOut.
func rowOut(o *pgoutbox.Outbox, p pgoutbox.ParkedEntry) entryOut {
	e := p.Entry
	st := protocol.Stamp{Source: o.Source(), Epoch: p.Epoch, Stream: e.Stream, Seq: e.Seq}
	out := entryOut{
		ID: e.ID, Stamp: st.String(), Stream: e.Stream, Seq: e.Seq, Exchange: e.Exchange, RoutingKey: e.RoutingKey,
		MessageID: e.Properties.MessageID, BodyBytes: len(e.Body), Created: e.Created.UTC(), Attempts: e.Attempts,
		LastOutcome: e.LastOutcome.String(), LastError: e.LastError,
	}
	if !p.ParkedAt.IsZero() {
		t := p.ParkedAt.UTC()
		out.Reason, out.ParkedAt = p.Reason, &t
	}
	return out
}

func outboxPending(ctx context.Context, w io.Writer, o *pgoutbox.Outbox, limit int, asJSON bool) error {
	rows, err := o.ListPending(ctx, 0, limit)
	if err != nil {
		return err
	}
	p := newPrinter(w, asJSON, false)
	for _, r := range rows {
		if err := p.print(rowOut(o, r.ParkedEntry)); err != nil {
			return err
		}
	}
	if err := p.flush(); err != nil {
		return err
	}
	if b, err := o.Backlog(ctx); err == nil && !asJSON && len(rows) < b.Pending {
		fmt.Fprintf(w, "... %d more (-limit 0 prints all)\n", b.Pending-len(rows))
	}
	return nil
}

func outboxParked(ctx context.Context, w io.Writer, o *pgoutbox.Outbox, asJSON bool) error {
	rows, err := o.Parked(ctx)
	if err != nil {
		return err
	}
	p := newPrinter(w, asJSON, true)
	for _, r := range rows {
		if err := p.print(rowOut(o, r)); err != nil {
			return err
		}
	}
	return p.flush()
}

func outboxRedrive(ctx context.Context, w io.Writer, o *pgoutbox.Outbox, args []string) error {
	var ids []uint64
	if len(args) == 1 && args[0] == "all" {
		rows, err := o.Parked(ctx)
		if err != nil {
			return err
		}
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
	} else {
		for _, a := range args {
			id, err := strconv.ParseUint(a, 10, 64)
			if err != nil || id == 0 {
				return usageErr("%q is not a row ID (a positive integer)", a)
			}
			ids = append(ids, id)
		}
	}
	n, err := o.Redrive(ctx, ids...)
	if err != nil {
		return err
	}
	if n < len(ids) {
		_, err = fmt.Fprintf(w, "re-driven %d parked rows (%d of the IDs named were not parked)\n", n, len(ids)-n)
		return err
	}
	_, err = fmt.Fprintf(w, "re-driven %d parked rows\n", n)
	return err
}
