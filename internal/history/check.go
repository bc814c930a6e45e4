package history

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// Run is one process lifetime of a publisher: what it printed as accepted, and how it ended.
type Run struct {
	Source   string
	Killed   bool             // ended abruptly (SIGKILL): it may have journaled messages it never printed
	Accepted []protocol.Stamp // its accepted lines, in the order printed
}

// History is everything a test run observed: the publishers' runs, the consumer's ledger and the
// gaps and conflicts it reported.
type History struct {
	Runs      []Run            // every publisher run; the runs of one source in the order they ran
	Ledger    []Applied        // the consumer's ledger (-dump)
	Gaps      []Gap            // the consumer's gap lines
	Conflicts []protocol.Stamp // the consumer's conflict lines: duplicates with a different body
	// Redriven are messages a publisher parked (returned as unroutable, e.g. their classic queue's
	// node was down) and the operator re-drove afterwards: the consumer reports a gap over them,
	// which they then fill, late.
	Redriven []protocol.Stamp
}

// Result is the verdict of Check. The guarantee holds when OK returns true.
type Result struct {
	Accepted      int // distinct messages with an accepted line
	Applied       int // distinct messages in the ledger
	ExactlyOnce   int // accepted messages applied exactly once
	Lost          int // accepted, never applied: must be 0
	AppliedTwice  int // applied more than once (accepted or not): must be 0
	AcceptedTwice int // the same stamp accepted twice, i.e. a sequence number reused: must be 0
	Unprinted     int // applied, no accepted line, journaled by a publisher killed before it printed: allowed
	Phantom       int // applied, no accepted line and no killed publisher explains it: must be 0
	Gaps          int // gap lines reported
	FalseGaps     int // gap lines naming a message that was applied, not re-driven: must be 0
	RedrivenGaps  int // gap lines over messages parked and re-driven, which then arrived late: allowed
	Conflicts     int // duplicates with a different body, i.e. a sequence number reused: must be 0

	Samples []string // a few examples of each failure, for the report
}

// OK reports whether the guarantee held: nothing lost, nothing applied twice, no sequence number
// reused (neither printed twice nor seen by the consumer with two bodies), nothing applied that no
// publisher journaled, no gap reported for a message that arrived.
func (r Result) OK() bool {
	return r.Lost == 0 && r.AppliedTwice == 0 && r.AcceptedTwice == 0 && r.Phantom == 0 &&
		r.FalseGaps == 0 && r.Conflicts == 0
}

const maxSamples = 5

type key struct {
	source, stream string
	epoch          int64
}

func keyOf(s protocol.Stamp) key { return key{source: s.Source, stream: s.Stream, epoch: s.Epoch} }

// window is an open interval of sequence numbers of one key in which a killed run may have
// journaled messages it never printed.
type window struct{ lo, hi int64 }

// Check compares what publishers accepted with what the consumer applied, the way Jepsen's
// total-queue checker does: every accepted message must be applied exactly once.
//
// A ledger entry without an accepted line is allowed only when a publisher run of its source was
// killed and the entry's sequence number lies above every number that source's earlier runs
// printed and below every number its later runs printed for the same stream and epoch: exactly the
// messages that run journaled but died before printing. Such entries are counted as Unprinted.
func Check(h History) Result {
	var r Result
	sample := func(n *int, format string, args ...any) {
		*n++
		if len(r.Samples) < 4*maxSamples {
			r.Samples = append(r.Samples, fmt.Sprintf(format, args...))
		}
	}

	accepted := make(map[protocol.Stamp]bool)
	printed := make(map[key]bool)
	for _, run := range h.Runs {
		for _, s := range run.Accepted {
			printed[keyOf(s)] = true
			if accepted[s] {
				sample(&r.AcceptedTwice, "accepted twice: %s", s)
				continue
			}
			accepted[s] = true
		}
	}
	r.Accepted = len(accepted)

	counts := make(map[protocol.Stamp]int64, len(h.Ledger))
	appliedSeqs := make(map[key][]int64)
	for _, a := range h.Ledger {
		if a.Count <= 0 {
			continue
		}
		if counts[a.Stamp] == 0 {
			appliedSeqs[keyOf(a.Stamp)] = append(appliedSeqs[keyOf(a.Stamp)], a.Seq)
		}
		counts[a.Stamp] += a.Count
	}
	r.Applied = len(counts)

	for s := range accepted {
		switch n := counts[s]; {
		case n == 0:
			sample(&r.Lost, "lost: %s", s)
		case n == 1:
			r.ExactlyOnce++
		}
	}

	windows := killWindows(h.Runs)
	for _, s := range sortedStamps(counts) {
		n := counts[s]
		if n > 1 {
			sample(&r.AppliedTwice, "applied %d times: %s", n, s)
		}
		if accepted[s] {
			continue
		}
		k := keyOf(s)
		if inWindow(windows[k], s.Seq) || (!printed[k] && inWindow(windows[key{source: s.Source}], s.Seq)) {
			r.Unprinted++
			continue
		}
		sample(&r.Phantom, "applied but never accepted: %s", s)
	}

	for _, seqs := range appliedSeqs {
		slices.Sort(seqs)
	}
	redriven := make(map[protocol.Stamp]bool, len(h.Redriven))
	for _, s := range h.Redriven {
		redriven[s] = true
	}
	for _, g := range h.Gaps {
		r.Gaps++
		k := key{source: g.Source, stream: g.Stream, epoch: g.Epoch}
		seqs := appliedSeqs[k]
		i, _ := slices.BinarySearch(seqs, g.From)
		// A gap is false when a message in it arrived that was not parked and re-driven; one whose
		// arrivals were all re-driven was a real gap, filled late by the operator.
		arrived, late := 0, 0
		for ; i < len(seqs) && seqs[i] <= g.To; i++ {
			arrived++
			if redriven[protocol.Stamp{Source: g.Source, Epoch: g.Epoch, Stream: g.Stream, Seq: seqs[i]}] {
				late++
				continue
			}
			if arrived-late == 1 {
				sample(&r.FalseGaps, "gap %d-%d of %s/%d/%s reported, but %d arrived", g.From, g.To, g.Source, g.Epoch, g.Stream, seqs[i])
			}
		}
		if arrived > 0 && late == arrived {
			r.RedrivenGaps++
		}
	}
	// The ledger counts by stamp, so a reused sequence number shows up as "applied once" there;
	// only the consumer's body comparison sees that the second message was a different one.
	for _, s := range h.Conflicts {
		sample(&r.Conflicts, "duplicate with a different body (sequence number reused): %s", s)
	}
	return r
}

// killWindows returns, per key, the windows in which killed runs may have journaled unprinted
// messages.
func killWindows(runs []Run) map[key][]window {
	bySource := make(map[string][]int)
	for i, run := range runs {
		bySource[run.Source] = append(bySource[run.Source], i)
	}
	out := make(map[key][]window)
	for _, idx := range bySource {
		// min and max printed seq per run and key
		type span struct{ lo, hi int64 }
		spans := make([]map[key]span, len(idx))
		keys := make(map[key]bool)
		for j, i := range idx {
			spans[j] = make(map[key]span)
			for _, s := range runs[i].Accepted {
				k := keyOf(s)
				keys[k] = true
				sp, ok := spans[j][k]
				if !ok {
					sp = span{lo: s.Seq, hi: s.Seq}
				}
				sp.lo, sp.hi = min(sp.lo, s.Seq), max(sp.hi, s.Seq)
				spans[j][k] = sp
			}
		}
		for j, i := range idx {
			if !runs[i].Killed {
				continue
			}
			src := runs[i].Source
			for k := range keys {
				if k.source != src {
					continue
				}
				w := window{lo: 0, hi: math.MaxInt64}
				for jj := range idx {
					sp, ok := spans[jj][k]
					switch {
					case !ok || jj == j:
					case jj < j:
						w.lo = max(w.lo, sp.hi)
					default:
						w.hi = min(w.hi, sp.lo)
					}
				}
				out[k] = append(out[k], w)
			}
			// A killed run that printed nothing for any key can still have journaled messages
			// of a stream no run ever printed: the wildcard window covers them.
			out[key{source: src}] = append(out[key{source: src}], window{lo: 0, hi: math.MaxInt64})
		}
	}
	return out
}

func inWindow(ws []window, seq int64) bool {
	for _, w := range ws {
		if seq > w.lo && seq < w.hi {
			return true
		}
	}
	return false
}

func sortedStamps(m map[protocol.Stamp]int64) []protocol.Stamp {
	out := make([]protocol.Stamp, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b protocol.Stamp) int {
		return cmp.Or(cmp.Compare(a.Source, b.Source), cmp.Compare(a.Epoch, b.Epoch),
			cmp.Compare(a.Stream, b.Stream), cmp.Compare(a.Seq, b.Seq))
	})
	return out
}

// Table returns the verdict as a table: check, count, and what it must be.
func (r Result) Table() Table {
	must0 := func(n int) string {
		if n == 0 {
			return "ok (must be 0)"
		}
		return "FAIL (must be 0)"
	}
	itoa := strconv.Itoa
	tb := Table{
		Header: []string{"check", "count", "verdict"},
		Rows: [][]string{
			{"accepted by a publisher (journaled)", itoa(r.Accepted), ""},
			{"applied by the consumer (ledger)", itoa(r.Applied), ""},
			{"accepted and applied exactly once", itoa(r.ExactlyOnce), okIf(r.ExactlyOnce == r.Accepted, "ok (all accepted)", "FAIL (must be all accepted)")},
			{"lost (accepted, never applied)", itoa(r.Lost), must0(r.Lost)},
			{"applied twice", itoa(r.AppliedTwice), must0(r.AppliedTwice)},
			{"sequence number accepted twice", itoa(r.AcceptedTwice), must0(r.AcceptedTwice)},
			{"applied, journaled by a killed publisher before it printed", itoa(r.Unprinted), "allowed"},
			{"applied, never journaled", itoa(r.Phantom), must0(r.Phantom)},
			{"gaps reported", itoa(r.Gaps), ""},
			{"gaps reported for messages that arrived", itoa(r.FalseGaps), must0(r.FalseGaps)},
			{"sequence number reused with another body", itoa(r.Conflicts), must0(r.Conflicts)},
		},
	}
	if r.RedrivenGaps > 0 { // only runs with re-driven messages have the row
		tb.Rows = slices.Insert(tb.Rows, len(tb.Rows)-1, []string{"gaps over parked messages, re-driven (arrived late)", itoa(r.RedrivenGaps), "allowed"})
	}
	return tb
}

func okIf(ok bool, yes, no string) string {
	if ok {
		return yes
	}
	return no
}
