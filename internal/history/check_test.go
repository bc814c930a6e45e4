package history

import (
	"strings"
	"testing"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/stretchr/testify/require"
)

func st(src string, seq int64) protocol.Stamp {
	return protocol.Stamp{Source: src, Epoch: 1, Stream: "x/k", Seq: seq}
}

func seqs(src string, from, to int64) []protocol.Stamp {
	var out []protocol.Stamp
	for i := from; i <= to; i++ {
		out = append(out, st(src, i))
	}
	return out
}

func ledger(src string, from, to int64, count int64) []Applied {
	var out []Applied
	for i := from; i <= to; i++ {
		out = append(out, Applied{Stamp: st(src, i), Count: count})
	}
	return out
}

func cat[T any](parts ...[]T) []T {
	var out []T
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		h    History
		want Result // Samples ignored
		ok   bool
	}{
		{
			name: "empty history is fine",
			h:    History{},
			ok:   true,
		},
		{
			name: "every accepted message applied once",
			h: History{
				Runs:   []Run{{Source: "a", Accepted: seqs("a", 1, 10)}, {Source: "b", Accepted: seqs("b", 1, 5)}},
				Ledger: cat(ledger("a", 1, 10, 1), ledger("b", 1, 5, 1)),
			},
			want: Result{Accepted: 15, Applied: 15, ExactlyOnce: 15},
			ok:   true,
		},
		{
			name: "a lost message fails",
			h: History{
				Runs:   []Run{{Source: "a", Accepted: seqs("a", 1, 10)}},
				Ledger: cat(ledger("a", 1, 4, 1), ledger("a", 6, 10, 1)),
			},
			want: Result{Accepted: 10, Applied: 9, ExactlyOnce: 9, Lost: 1},
		},
		{
			name: "a ledger count of zero is lost, not applied",
			h: History{
				Runs:   []Run{{Source: "a", Accepted: seqs("a", 1, 2)}},
				Ledger: cat(ledger("a", 1, 1, 1), ledger("a", 2, 2, 0)),
			},
			want: Result{Accepted: 2, Applied: 1, ExactlyOnce: 1, Lost: 1},
		},
		{
			name: "a message applied twice fails",
			h: History{
				Runs:   []Run{{Source: "a", Accepted: seqs("a", 1, 3)}},
				Ledger: cat(ledger("a", 1, 2, 1), ledger("a", 3, 3, 2)),
			},
			want: Result{Accepted: 3, Applied: 3, ExactlyOnce: 2, AppliedTwice: 1},
		},
		{
			name: "the same stamp listed twice in the ledger adds up",
			h: History{
				Runs:   []Run{{Source: "a", Accepted: seqs("a", 1, 1)}},
				Ledger: cat(ledger("a", 1, 1, 1), ledger("a", 1, 1, 1)),
			},
			want: Result{Accepted: 1, Applied: 1, AppliedTwice: 1},
		},
		{
			name: "a reused sequence number fails",
			h: History{
				Runs:   []Run{{Source: "a", Killed: true, Accepted: seqs("a", 1, 5)}, {Source: "a", Accepted: seqs("a", 5, 8)}},
				Ledger: ledger("a", 1, 8, 1),
			},
			want: Result{Accepted: 8, Applied: 8, ExactlyOnce: 8, AcceptedTwice: 1},
		},
		{
			name: "unprinted messages of a killed run between its neighbours are allowed",
			h: History{
				Runs: []Run{
					{Source: "a", Accepted: seqs("a", 1, 5)},
					{Source: "a", Killed: true, Accepted: cat(seqs("a", 6, 8), seqs("a", 10, 10))},
					{Source: "a", Accepted: seqs("a", 13, 20)},
				},
				Ledger: ledger("a", 1, 20, 1),
			},
			want: Result{Accepted: 17, Applied: 20, ExactlyOnce: 17, Unprinted: 3}, // 9, 11, 12
			ok:   true,
		},
		{
			name: "unaccepted messages without a kill are phantoms",
			h: History{
				Runs: []Run{
					{Source: "a", Accepted: seqs("a", 1, 5)},
					{Source: "a", Accepted: seqs("a", 8, 10)},
				},
				Ledger: ledger("a", 1, 10, 1),
			},
			want: Result{Accepted: 8, Applied: 10, ExactlyOnce: 8, Phantom: 2},
		},
		{
			name: "a kill of one source does not explain another source",
			h: History{
				Runs: []Run{
					{Source: "a", Killed: true, Accepted: seqs("a", 1, 5)},
					{Source: "b", Accepted: seqs("b", 1, 5)},
				},
				Ledger: cat(ledger("a", 1, 6, 1), ledger("b", 1, 6, 1)),
			},
			want: Result{Accepted: 10, Applied: 12, ExactlyOnce: 10, Unprinted: 1, Phantom: 1},
		},
		{
			name: "below the killed run's predecessors is not explained",
			h: History{
				Runs: []Run{
					{Source: "a", Accepted: cat(seqs("a", 1, 3), seqs("a", 5, 6))},
					{Source: "a", Killed: true, Accepted: seqs("a", 7, 8)},
				},
				Ledger: ledger("a", 1, 10, 1),
			},
			want: Result{Accepted: 7, Applied: 10, ExactlyOnce: 7, Unprinted: 2, Phantom: 1}, // 9,10 ok; 4 not
		},
		{
			name: "a killed run that printed nothing explains a stream nobody printed",
			h: History{
				Runs:   []Run{{Source: "a", Killed: true}},
				Ledger: ledger("a", 1, 2, 1),
			},
			want: Result{Applied: 2, Unprinted: 2},
			ok:   true,
		},
		{
			name: "unprinted but applied twice still fails",
			h: History{
				Runs:   []Run{{Source: "a", Killed: true, Accepted: seqs("a", 1, 2)}},
				Ledger: cat(ledger("a", 1, 2, 1), ledger("a", 3, 3, 2)),
			},
			want: Result{Accepted: 2, Applied: 3, ExactlyOnce: 2, Unprinted: 1, AppliedTwice: 1},
		},
		{
			name: "other epochs and streams are separate keys",
			h: History{
				Runs: []Run{{Source: "a", Accepted: []protocol.Stamp{
					{Source: "a", Epoch: 1, Stream: "s", Seq: 1}, {Source: "a", Epoch: 2, Stream: "s", Seq: 1},
				}}},
				Ledger: []Applied{
					{Stamp: protocol.Stamp{Source: "a", Epoch: 1, Stream: "s", Seq: 1}, Count: 1},
					{Stamp: protocol.Stamp{Source: "a", Epoch: 1, Stream: "t", Seq: 1}, Count: 1},
				},
			},
			want: Result{Accepted: 2, Applied: 2, ExactlyOnce: 1, Lost: 1, Phantom: 1},
		},
		{
			name: "a true gap is counted and allowed",
			h: History{
				Runs:   []Run{{Source: "a", Killed: true, Accepted: seqs("a", 1, 3)}},
				Ledger: cat(ledger("a", 1, 3, 1), ledger("a", 6, 6, 1)),
				Gaps:   []Gap{{Source: "a", Epoch: 1, Stream: "x/k", From: 4, To: 5}},
			},
			want: Result{Accepted: 3, Applied: 4, ExactlyOnce: 3, Unprinted: 1, Gaps: 1},
			ok:   true,
		},
		{
			name: "a gap for a message that arrived fails",
			h: History{
				Runs:   []Run{{Source: "a", Accepted: seqs("a", 1, 10)}},
				Ledger: ledger("a", 1, 10, 1),
				Gaps: []Gap{
					{Source: "a", Epoch: 1, Stream: "x/k", From: 4, To: 5},
					{Source: "a", Epoch: 1, Stream: "x/k", From: 11, To: 1 << 62}, // above: fine
					{Source: "a", Epoch: 2, Stream: "x/k", From: 1, To: 3},        // other epoch: fine
					{Source: "a", Epoch: 1, Stream: "x/k", From: 10, To: 10},
				},
			},
			want: Result{Accepted: 10, Applied: 10, ExactlyOnce: 10, Gaps: 4, FalseGaps: 2},
		},
		{
			name: "a conflict line fails though the ledger looks exactly-once",
			h: History{
				Runs:      []Run{{Source: "a", Killed: true, Accepted: seqs("a", 1, 3)}, {Source: "a", Accepted: seqs("a", 4, 5)}},
				Ledger:    ledger("a", 1, 5, 1),
				Conflicts: []protocol.Stamp{st("a", 3)},
			},
			want: Result{Accepted: 5, Applied: 5, ExactlyOnce: 5, Conflicts: 1},
		},
		{
			name: "a gap over parked messages the operator re-drove is allowed: they arrive late",
			h: History{
				Runs:     []Run{{Source: "a", Accepted: seqs("a", 1, 10)}},
				Ledger:   ledger("a", 1, 10, 1),
				Gaps:     []Gap{{Source: "a", Epoch: 1, Stream: "x/k", From: 4, To: 6}},
				Redriven: seqs("a", 4, 6),
			},
			want: Result{Accepted: 10, Applied: 10, ExactlyOnce: 10, Gaps: 1, RedrivenGaps: 1},
			ok:   true,
		},
		{
			name: "a gap is false when one message in it arrived that was not re-driven",
			h: History{
				Runs:     []Run{{Source: "a", Accepted: seqs("a", 1, 10)}},
				Ledger:   ledger("a", 1, 10, 1),
				Gaps:     []Gap{{Source: "a", Epoch: 1, Stream: "x/k", From: 4, To: 6}},
				Redriven: seqs("a", 4, 5),
			},
			want: Result{Accepted: 10, Applied: 10, ExactlyOnce: 10, Gaps: 1, FalseGaps: 1},
		},
		{
			name: "a re-driven message that never arrives is lost",
			h: History{
				Runs:     []Run{{Source: "a", Accepted: seqs("a", 1, 10)}},
				Ledger:   cat(ledger("a", 1, 4, 1), ledger("a", 6, 10, 1)),
				Gaps:     []Gap{{Source: "a", Epoch: 1, Stream: "x/k", From: 5, To: 5}},
				Redriven: seqs("a", 5, 5),
			},
			want: Result{Accepted: 10, Applied: 9, ExactlyOnce: 9, Lost: 1, Gaps: 1},
		},
		{
			name: "conflicts are counted one per line",
			h: History{
				Runs:      []Run{{Source: "a", Accepted: seqs("a", 1, 2)}},
				Ledger:    ledger("a", 1, 2, 1),
				Conflicts: []protocol.Stamp{st("a", 1), st("a", 2), st("a", 2)},
			},
			want: Result{Accepted: 2, Applied: 2, ExactlyOnce: 2, Conflicts: 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(tt.h)
			require.Equal(t, tt.ok, got.OK(), "samples: %v", got.Samples)
			if !tt.ok {
				require.NotEmpty(t, got.Samples)
			}
			got.Samples = nil
			require.Equal(t, tt.want, got)
			tbl := Check(tt.h).Table().String()
			require.Equal(t, !tt.ok, strings.Contains(tbl, "FAIL"), tbl)
		})
	}
}

func TestTableAligned(t *testing.T) {
	tb := Table{Header: []string{"a", "long header"}, Rows: [][]string{{"x|y", "1"}, {"short"}}}
	want := "" +
		"| a     | long header |\n" +
		"|-------|-------------|\n" +
		"| x\\|y  | 1           |\n" +
		"| short |             |\n"
	require.Equal(t, want, tb.String())
}
