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
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rabbitkit/rabbitkit/examples/internal/cli"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
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

type statsOut struct {
	Path          string           `json:"path"`
	Source        string           `json:"source"`
	Epoch         int64            `json:"epoch"`
	Pending       int              `json:"pending"`
	PendingBytes  int64            `json:"pending_bytes"`
	Parked        int              `json:"parked"`
	ParkedBytes   int64            `json:"parked_bytes"`
	OldestPending *time.Time       `json:"oldest_pending,omitempty"`
	FileSize      int64            `json:"file_size"`
	FreeBytes     int64            `json:"free_bytes"`
	NextSeq       map[string]int64 `json:"next_seq"`
}

func stats(w io.Writer, j *journal.Journal, asJSON bool) error {
	st := j.Stats()
	out := statsOut{
		Path: j.Path(), Source: j.Source(), Epoch: j.Epoch(), Pending: st.Pending, PendingBytes: st.PendingBytes,
		Parked: st.Parked, ParkedBytes: st.ParkedBytes, FileSize: st.FileSize, FreeBytes: st.FreeBytes, NextSeq: st.NextSeq,
	}
	if !st.OldestPending.IsZero() {
		out.OldestPending = &st.OldestPending
	}
	if asJSON {
		return json.NewEncoder(w).Encode(out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "journal\t%s\n", out.Path)
	fmt.Fprintf(tw, "source\t%s\n", out.Source)
	fmt.Fprintf(tw, "epoch\t%d\n", out.Epoch)
	fmt.Fprintf(tw, "pending\t%d (%d bytes)\n", out.Pending, out.PendingBytes)
	if out.OldestPending != nil {
		fmt.Fprintf(tw, "oldest pending\t%s (%s ago)\n", out.OldestPending.UTC().Format(time.RFC3339), time.Since(*out.OldestPending).Round(time.Second))
	}
	fmt.Fprintf(tw, "parked\t%d (%d bytes)\n", out.Parked, out.ParkedBytes)
	fmt.Fprintf(tw, "file\t%d bytes, %d free\n", out.FileSize, out.FreeBytes)
	for _, s := range slices.Sorted(maps.Keys(out.NextSeq)) {
		fmt.Fprintf(tw, "next seq\t%s\t%d\n", s, out.NextSeq[s])
	}
	return tw.Flush()
}

// entryOut is one entry as printed: everything an operator needs to decide, not the body.
type entryOut struct {
	ID          uint64     `json:"id"`
	Stamp       string     `json:"stamp"` // as it travels: the message-id, or rk-stamp with the caller's message-id
	Stream      string     `json:"stream"`
	Seq         int64      `json:"seq"`
	Exchange    string     `json:"exchange"`
	RoutingKey  string     `json:"routing_key"`
	MessageID   string     `json:"message_id,omitempty"`
	BodyBytes   int        `json:"body_bytes"`
	Created     time.Time  `json:"created"`
	Attempts    uint32     `json:"attempts"`
	LastOutcome string     `json:"last_outcome"`
	LastError   string     `json:"last_error,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	ParkedAt    *time.Time `json:"parked_at,omitempty"`
}

func toOut(j *journal.Journal, e *journal.Entry) entryOut {
	st := protocol.Stamp{Source: j.Source(), Epoch: j.Epoch(), Stream: e.Stream, Seq: e.Seq}
	return entryOut{
		ID: e.ID, Stamp: st.String(), Stream: e.Stream, Seq: e.Seq, Exchange: e.Exchange, RoutingKey: e.RoutingKey,
		MessageID: e.Properties.MessageID, BodyBytes: len(e.Body), Created: e.Created, Attempts: e.Attempts,
		LastOutcome: e.LastOutcome.String(), LastError: e.LastError,
	}
}

// printer prints entries as a table or as JSON lines.
type printer struct {
	json   *json.Encoder
	tw     *tabwriter.Writer
	parked bool
}

func newPrinter(w io.Writer, asJSON, parked bool) *printer {
	if asJSON {
		return &printer{json: json.NewEncoder(w)}
	}
	p := &printer{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), parked: parked}
	if parked {
		fmt.Fprintln(p.tw, "ID\tSTREAM\tSEQ\tEXCHANGE\tROUTING KEY\tATTEMPTS\tPARKED AT\tREASON")
	} else {
		fmt.Fprintln(p.tw, "ID\tSTREAM\tSEQ\tEXCHANGE\tROUTING KEY\tATTEMPTS\tLAST OUTCOME\tCREATED")
	}
	return p
}

func (p *printer) print(e entryOut) error {
	if p.json != nil {
		return p.json.Encode(e)
	}
	last := e.LastOutcome
	if e.LastError != "" {
		last += ": " + e.LastError
	}
	if p.parked {
		_, err := fmt.Fprintf(p.tw, "%d\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Stream, e.Seq, e.Exchange, e.RoutingKey,
			e.Attempts, e.ParkedAt.UTC().Format(time.RFC3339), oneLine(e.Reason))
		return err
	}
	_, err := fmt.Fprintf(p.tw, "%d\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Stream, e.Seq, e.Exchange, e.RoutingKey,
		e.Attempts, oneLine(last), e.Created.UTC().Format(time.RFC3339))
	return err
}

func (p *printer) flush() error {
	if p.tw != nil {
		return p.tw.Flush()
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func pending(ctx context.Context, w io.Writer, j *journal.Journal, limit int, asJSON bool) error {
	p := newPrinter(w, asJSON, false)
	var after uint64
	n := 0
	for limit <= 0 || n < limit {
		page, err := j.Read(ctx, after, 256)
		if err != nil {
			return err
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			if limit > 0 && n >= limit {
				break
			}
			if err := p.print(toOut(j, e)); err != nil {
				return err
			}
			n++
		}
		after = page[len(page)-1].ID
	}
	if err := p.flush(); err != nil {
		return err
	}
	if total := j.Stats().Pending; !asJSON && n < total {
		fmt.Fprintf(w, "... %d more (-limit 0 prints all)\n", total-n)
	}
	return nil
}

func parked(ctx context.Context, w io.Writer, j *journal.Journal, asJSON bool) error {
	p := newPrinter(w, asJSON, true)
	err := j.Parked(ctx, func(pe journal.ParkedEntry) error {
		e := toOut(j, &pe.Entry)
		e.Reason, e.ParkedAt = pe.Reason, &pe.ParkedAt
		return p.print(e)
	})
	if err != nil {
		return err
	}
	return p.flush()
}

// act applies fn (Redrive or DropParked) to the parked entries named by args: IDs, or "all".
func act(ctx context.Context, w io.Writer, j *journal.Journal, args []string, done string, fn func(context.Context, uint64) error) error {
	if len(args) == 0 {
		return errors.New("name the parked entries: IDs (from `rkjournal parked`) or all")
	}
	var ids []uint64
	if len(args) == 1 && args[0] == "all" {
		err := j.Parked(ctx, func(pe journal.ParkedEntry) error {
			ids = append(ids, pe.ID)
			return nil
		})
		if err != nil {
			return err
		}
	} else {
		for _, a := range args {
			id, err := strconv.ParseUint(a, 10, 64)
			if err != nil || id == 0 {
				return fmt.Errorf("%q is not an entry ID (a positive integer)", a)
			}
			ids = append(ids, id)
		}
	}
	for i, id := range ids {
		if err := fn(ctx, id); err != nil {
			return fmt.Errorf("entry %d: %w (%d of %d %s before it)", id, err, i, len(ids), done)
		}
	}
	_, err := fmt.Fprintf(w, "%s %d parked entries\n", done, len(ids))
	return err
}

// shown is one entry in full, for show.
type shown struct {
	entryOut
	Properties journal.Properties `json:"properties"`
	Headers    map[string]any     `json:"headers,omitempty"`
	Body       []byte             `json:"body"` // base64 in JSON
}

// show prints one entry, pending or parked, with its properties, headers and body. The text form
// prints the body as is when it is printable UTF-8 text, else as a quoted Go string.
func show(ctx context.Context, w io.Writer, j *journal.Journal, args []string, asJSON bool) error {
	if len(args) != 1 {
		return errors.New("show takes one entry ID")
	}
	id, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil || id == 0 {
		return fmt.Errorf("%q is not an entry ID (a positive integer)", args[0])
	}
	var found *shown
	page, err := j.Read(ctx, id-1, 1)
	if err != nil {
		return err
	}
	if len(page) == 1 && page[0].ID == id {
		e := page[0]
		found = &shown{entryOut: toOut(j, e), Properties: e.Properties, Headers: e.Headers, Body: e.Body}
	} else {
		err = j.Parked(ctx, func(pe journal.ParkedEntry) error {
			if pe.ID == id {
				e := toOut(j, &pe.Entry)
				e.Reason, e.ParkedAt = pe.Reason, &pe.ParkedAt
				found = &shown{entryOut: e, Properties: pe.Properties, Headers: pe.Headers, Body: pe.Body}
				return errStop
			}
			return nil
		})
		if err != nil && !errors.Is(err, errStop) {
			return err
		}
	}
	if found == nil {
		return fmt.Errorf("entry %d: %w (neither pending nor parked: confirmed and deleted, dropped, or never journaled)", id, journal.ErrNotFound)
	}
	if asJSON {
		return json.NewEncoder(w).Encode(found)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "pending"
	if found.ParkedAt != nil {
		state = "parked " + found.ParkedAt.UTC().Format(time.RFC3339) + ": " + oneLine(found.Reason)
	}
	fmt.Fprintf(tw, "id\t%d (%s)\n", found.ID, state)
	fmt.Fprintf(tw, "stamp\t%s\n", found.Stamp)
	fmt.Fprintf(tw, "stream, seq\t%s %d\n", found.Stream, found.Seq)
	fmt.Fprintf(tw, "exchange, key\t%q %q\n", found.Exchange, found.RoutingKey)
	fmt.Fprintf(tw, "created\t%s\n", found.Created.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "attempts\t%d (last: %s)\n", found.Attempts, oneLine(found.LastOutcome+" "+found.LastError))
	pr := found.Properties
	for _, f := range [...]struct{ name, v string }{
		{"content-type", pr.ContentType}, {"content-encoding", pr.ContentEncoding},
		{"delivery-mode", strconv.Itoa(int(pr.DeliveryMode))}, {"priority", strconv.Itoa(int(pr.Priority))},
		{"correlation-id", pr.CorrelationID}, {"reply-to", pr.ReplyTo}, {"expiration", pr.Expiration},
		{"message-id", pr.MessageID}, {"type", pr.Type}, {"user-id", pr.UserID}, {"app-id", pr.AppID},
	} {
		if f.v != "" && f.v != "0" {
			fmt.Fprintf(tw, "%s\t%s\n", f.name, f.v)
		}
	}
	if !pr.Timestamp.IsZero() {
		fmt.Fprintf(tw, "timestamp\t%s\n", pr.Timestamp.UTC().Format(time.RFC3339))
	}
	for _, k := range slices.Sorted(maps.Keys(found.Headers)) {
		fmt.Fprintf(tw, "header\t%s = %v\n", k, found.Headers[k])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if text(found.Body) {
		_, err = fmt.Fprintf(w, "body (%d bytes):\n%s\n", len(found.Body), found.Body)
	} else {
		_, err = fmt.Fprintf(w, "body (%d bytes, not text):\n%q\n", len(found.Body), found.Body)
	}
	return err
}

// text reports whether b is UTF-8 made of printable characters and line breaks and tabs.
func text(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && r != '\n' && r != '\r' && r != '\t' {
			return false
		}
	}
	return true
}

var errStop = errors.New("stop")
