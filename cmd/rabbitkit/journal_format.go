package main

// How entries and stats are printed: tables for people, JSON for scripts.

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// statsOut is what stats prints.
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

// printStats prints the stats as a table or as one JSON object.
func printStats(w io.Writer, out statsOut, asJSON bool) error {
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

// shown is one entry in full, for show.
type shown struct {
	entryOut
	Properties journal.Properties `json:"properties"`
	Headers    map[string]any     `json:"headers,omitempty"`
	Body       []byte             `json:"body"` // base64 in JSON
}

// printShown prints one entry in full. The text form prints the body as is when it is printable
// UTF-8 text, else as a quoted Go string.
func printShown(w io.Writer, found *shown, asJSON bool) error {
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
	var err error
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
