package main

// The consumer subcommand: the dedup state of a consumer's store, per stream and epoch.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
)

const consumerUsage = `Usage:
  rabbitkit consumer [-json] state FILE                       a bbolt consumer store
  rabbitkit consumer [-json] state -pg DSN [-table NAME]      a PostgreSQL inbox (consumer/pginbox)

Per stream and epoch: source, epoch, stream, watermark (every seq up to it is applied or given up),
highest seen, open gaps (the missing ranges between them, and whether each was reported), ranges
given up as lost, and the floor of an adopted stream; the time of the last commit. Then, per open
gap, when it was first noticed and its age; per stream, its retired epochs (their stragglers are
parked as stale) and its parked stamps (parked after a handler failure, applied once by a
re-drive: rabbitkit parked redrive); then totals. Not printed: the body hashes (never persisted).

A bbolt store is locked by the consumer that uses it: stop it first, or read its state on its
metrics endpoint; the lock wait is 1s.
`

// windowOut is one epoch of one stream, as printed.
type windowOut struct {
	Source     string     `json:"source"`
	Stream     string     `json:"stream"`
	Epoch      int64      `json:"epoch"`
	Watermark  int64      `json:"watermark"`
	Highest    int64      `json:"highest"`
	Gaps       []rangeOut `json:"gaps"`
	Lost       [][2]int64 `json:"lost"`
	Floor      int64      `json:"floor"`
	LastCommit time.Time  `json:"last_commit"`
}

// rangeOut is an open gap: lo..hi missing since Since, reported or not yet.
type rangeOut struct {
	Lo       int64     `json:"lo"`
	Hi       int64     `json:"hi"`
	Reported bool      `json:"reported"`
	Since    time.Time `json:"since"`
}

// retiredOut is a retired epoch of a stream.
type retiredOut struct {
	Source    string    `json:"source"`
	Stream    string    `json:"stream"`
	Epoch     int64     `json:"epoch"`
	RetiredAt time.Time `json:"retired_at"`
}

// parkedStampOut is a stamp parked after a handler failure, awaiting a re-drive.
type parkedStampOut struct {
	Source   string    `json:"source"`
	Stream   string    `json:"stream"`
	Epoch    int64     `json:"epoch"`
	Seq      int64     `json:"seq"`
	ParkedAt time.Time `json:"parked_at"`
}

// stateOut is what consumer state prints with -json.
type stateOut struct {
	Store   string           `json:"store"` // the file, or the table (never the DSN)
	Windows []windowOut      `json:"windows"`
	Retired []retiredOut     `json:"retired_epochs"`
	Parked  []parkedStampOut `json:"parked"`
	Totals  struct {
		Streams  int   `json:"streams"`
		Epochs   int   `json:"epochs"`
		Gaps     int   `json:"gaps"`
		Missing  int64 `json:"missing"` // sequence numbers in the open gaps
		Lost     int   `json:"lost_ranges"`
		LostSeqs int64 `json:"lost"` // sequence numbers given up
		Retired  int   `json:"retired_epochs"`
		Parked   int   `json:"parked"`
	} `json:"totals"`
}

// consumerMain parses the consumer subcommand's command line and runs it.
func consumerMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rabbitkit consumer", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object")
	dsn := fs.String("pg", "", "PostgreSQL DSN of a pginbox store (instead of FILE)")
	table := fs.String("table", pginbox.DefaultTable, "pginbox: the inbox table (Options.Table), may be schema.table")
	pos, err := parseFlags(fs, consumerUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 || pos[0] != "state" {
		fs.Usage()
		return usageErr("consumer: want state FILE or state -pg DSN")
	}
	var infos []consumer.StreamInfo
	var where string
	switch {
	case *dsn != "" && len(pos) == 1:
		where = *table
		infos, err = inspectPG(ctx, *dsn, *table)
	case *dsn == "" && len(pos) == 2:
		where = pos[1]
		infos, err = consumer.InspectBoltFile(pos[1], time.Second)
		if errors.Is(err, consumer.ErrLocked) {
			err = fmt.Errorf("%w: a running consumer holds it: stop it first, or read its state on its metrics endpoint", err)
		}
	default:
		fs.Usage()
		return usageErr("consumer state: give FILE or -pg DSN, not both")
	}
	if err != nil {
		return err
	}
	return printState(stdout, where, infos, *asJSON)
}

func inspectPG(ctx context.Context, dsn, table string) ([]consumer.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := openPool(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	infos, err := pginbox.Inspect(ctx, pool, table)
	if err != nil {
		return nil, redactErr(err, dsn)
	}
	return infos, nil
}

// openPool connects to dsn; its errors never carry the password.
func openPool(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("-pg %s: not a PostgreSQL DSN", redactURL(dsn))
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactURL(dsn), redactErr(err, dsn))
	}
	return pool, nil
}

func printState(w io.Writer, where string, infos []consumer.StreamInfo, asJSON bool) error {
	out := stateOut{Store: where, Windows: []windowOut{}, Retired: []retiredOut{}, Parked: []parkedStampOut{}}
	out.Totals.Streams = len(infos)
	for _, si := range infos {
		for _, r := range si.Retired {
			out.Retired = append(out.Retired, retiredOut{Source: si.Key.Source, Stream: si.Key.Stream, Epoch: r.Epoch, RetiredAt: r.At.UTC()})
		}
		for _, p := range si.Parked {
			out.Parked = append(out.Parked, parkedStampOut{Source: si.Key.Source, Stream: si.Key.Stream, Epoch: p.Epoch, Seq: p.Seq, ParkedAt: p.At.UTC()})
		}
		for _, wi := range si.Windows {
			wo := windowOut{Source: si.Key.Source, Stream: si.Key.Stream, Epoch: wi.Epoch, Watermark: wi.W, Highest: wi.H,
				Gaps: []rangeOut{}, Lost: [][2]int64{}, Floor: wi.Floor, LastCommit: wi.Active.UTC()}
			for i, g := range wi.Missing {
				ro := rangeOut{Lo: g.From, Hi: g.To, Reported: i < len(wi.Reported) && wi.Reported[i]}
				if i < len(wi.Since) {
					ro.Since = wi.Since[i].UTC()
				}
				wo.Gaps = append(wo.Gaps, ro)
				out.Totals.Missing += g.To - g.From + 1
			}
			for _, l := range wi.Lost {
				wo.Lost = append(wo.Lost, [2]int64{l.From, l.To})
				out.Totals.LostSeqs += l.To - l.From + 1
			}
			out.Totals.Epochs++
			out.Totals.Gaps += len(wo.Gaps)
			out.Totals.Lost += len(wo.Lost)
			out.Windows = append(out.Windows, wo)
		}
	}
	out.Totals.Retired, out.Totals.Parked = len(out.Retired), len(out.Parked)
	if asJSON {
		return json.NewEncoder(w).Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tEPOCH\tSTREAM\tWATERMARK\tHIGHEST\tOPEN GAPS\tLOST\tLAST COMMIT")
	for _, wo := range out.Windows {
		gaps, lost := "-", "-"
		if len(wo.Gaps) > 0 {
			gaps = ""
			for i, g := range wo.Gaps {
				if i > 0 {
					gaps += ","
				}
				gaps += fmt.Sprintf("%d-%d", g.Lo, g.Hi)
				if g.Reported {
					gaps += "(reported)"
				}
			}
		}
		if len(wo.Lost) > 0 {
			lost = ""
			for i, l := range wo.Lost {
				if i > 0 {
					lost += ","
				}
				lost += fmt.Sprintf("%d-%d", l[0], l[1])
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\t%s\t%s\n", wo.Source, wo.Epoch, wo.Stream, wo.Watermark, wo.Highest, gaps, lost, wo.LastCommit.Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	now := time.Now()
	for _, wo := range out.Windows {
		for _, g := range wo.Gaps {
			state := "not reported yet"
			if g.Reported {
				state = "reported"
			}
			fmt.Fprintf(w, "gap %s/%s epoch %d seq %d-%d: first noticed %s (age %s), %s\n", wo.Source, wo.Stream, wo.Epoch, g.Lo, g.Hi,
				g.Since.Format(time.RFC3339), now.Sub(g.Since).Round(time.Second), state)
		}
	}
	for _, r := range out.Retired {
		fmt.Fprintf(w, "retired %s/%s epoch %d at %s (its stragglers are parked as stale)\n", r.Source, r.Stream, r.Epoch, r.RetiredAt.Format(time.RFC3339))
	}
	for _, p := range out.Parked {
		fmt.Fprintf(w, "parked %s/%s epoch %d seq %d at %s (a re-drive applies it once)\n", p.Source, p.Stream, p.Epoch, p.Seq, p.ParkedAt.Format(time.RFC3339))
	}
	t := out.Totals
	_, err := fmt.Fprintf(w, "%d streams, %d epochs, %d open gaps (%d seqs missing), %d lost ranges (%d seqs), %d retired epochs, %d parked stamps\n",
		t.Streams, t.Epochs, t.Gaps, t.Missing, t.Lost, t.LostSeqs, t.Retired, t.Parked)
	return err
}
