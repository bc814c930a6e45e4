package main

// The commands: what each one reads from or does to the journal (format.go prints it).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/rabbitkit/rabbitkit/journal"
)

func stats(w io.Writer, j *journal.Journal, asJSON bool) error {
	st := j.Stats()
	out := statsOut{
		Path: j.Path(), Source: j.Source(), Epoch: j.Epoch(), Pending: st.Pending, PendingBytes: st.PendingBytes,
		Parked: st.Parked, ParkedBytes: st.ParkedBytes, FileSize: st.FileSize, FreeBytes: st.FreeBytes, NextSeq: st.NextSeq,
	}
	if !st.OldestPending.IsZero() {
		out.OldestPending = &st.OldestPending
	}
	return printStats(w, out, asJSON)
}

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
		return errors.New("name the parked entries: IDs (from `rabbitkit journal parked FILE`) or all")
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

// show prints one entry, pending or parked, with its properties, headers and body.
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
	return printShown(w, found, asJSON)
}

// errStop ends a walk over the parked entries once show found its entry.
var errStop = errors.New("stop")
