package dedup

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// modelConfig is small enough that every mechanism fires in a short run.
var modelConfig = Config{
	GapGrace:       time.Second,
	MaxAhead:       1_000_000,
	MaxSeen:        60,
	MaxLostRanges:  1000,
	EpochRetention: 2 * time.Minute,
	IdleRetention:  10 * time.Minute,
	MaxEpochs:      2,
	HashHistory:    8,
}

// plan builds the deliveries of one stream: every epoch's numbers in a perturbed order, some
// never sent, some delayed far, stragglers of an old epoch after the new one started, absurd jumps.
// With adopt, the first epoch starts at a high number, with a few older numbers mixed in.
func plan(rng *rand.Rand, k Key, adopt bool) []protocol.Stamp {
	var out []protocol.Stamp
	epochs := 1 + rng.IntN(3)
	for e := 0; e < epochs; e++ {
		epoch := rng.Int64N(1<<62) + 1
		first, n := int64(1), int64(40+rng.IntN(250))
		if adopt && e == 0 {
			first = int64(1 + rng.IntN(5000))
			n += first
			first = max(1, first-int64(rng.IntN(12)))
		}
		var seqs []protocol.Stamp
		for seq := first; seq <= n; seq++ {
			switch p := rng.Float64(); {
			case p < 0.03: // lost
				continue
			case p < 0.04: // a lost run
				seq += int64(rng.IntN(5))
				continue
			}
			seqs = append(seqs, protocol.Stamp{Source: k.Source, Stream: k.Stream, Epoch: epoch, Seq: seq})
			if rng.Float64() < 0.01 {
				big := absurdFloor + rng.Int64N(1<<50)
				if rng.IntN(2) == 0 {
					big = 1 << 62
				}
				seqs = append(seqs, protocol.Stamp{Source: k.Source, Stream: k.Stream, Epoch: epoch, Seq: big})
			}
		}
		for i := range seqs { // local reorder
			if j := i + rng.IntN(8); rng.Float64() < 0.3 && j < len(seqs) {
				seqs[i], seqs[j] = seqs[j], seqs[i]
			}
		}
		for i := 0; i < len(seqs); i++ { // a few long delays, beyond MaxSeen
			if rng.Float64() < 0.015 {
				j := min(len(seqs)-1, i+40+rng.IntN(110))
				s := seqs[i]
				copy(seqs[i:j], seqs[i+1:j+1])
				seqs[j] = s
			}
		}
		if len(out) > 0 { // stragglers: move some of the previous epoch's tail into the new epoch
			tail := max(0, len(out)-30)
			for i := len(out) - 1; i >= tail; i-- {
				if rng.Float64() < 0.15 {
					s := out[i]
					out = append(out[:i], out[i+1:]...)
					j := rng.IntN(min(len(seqs), 60) + 1)
					seqs = append(seqs[:j], append([]protocol.Stamp{s}, seqs[j:]...)...)
				}
			}
		}
		out = append(out, seqs...)
	}
	return out
}

func runModel(t *testing.T, seed uint64, cfg Config, steps int) *harness {
	rng := rand.New(rand.NewPCG(seed, 7))
	h := newHarness(t, cfg)
	keys := []Key{{"a", "x"}, {"a", "y"}, {"b", "x"}}
	plans := make([][]protocol.Stamp, len(keys))
	for i, k := range keys {
		plans[i] = plan(rng, k, cfg.AdoptStreams)
	}
	var history []protocol.Stamp
	var redo []protocol.Stamp
	hashOf := func(s protocol.Stamp) uint64 {
		if v, ok := h.hashes[s]; ok {
			return v
		}
		v := rng.Uint64() | 1
		h.hashes[s] = v
		return v
	}
	for i := 0; i < steps; i++ {
		h.now += int64(rng.IntN(300)) * int64(time.Millisecond)
		var s protocol.Stamp
		hash := uint64(0)
		switch p := rng.Float64(); {
		case len(redo) > 0:
			j := rng.IntN(len(redo))
			s = redo[j]
			redo = append(redo[:j], redo[j+1:]...)
			hash = hashOf(s)
		case p < 0.08 && len(history) > 0: // a duplicate, sometimes with another body
			s = history[len(history)-1-rng.IntN(min(len(history), 200))]
			hash = hashOf(s)
			if rng.Float64() < 0.2 {
				hash = rng.Uint64() | 1
			}
		case p < 0.09: // invalid
			s = protocol.Stamp{Source: "a", Stream: "x", Epoch: rng.Int64N(2), Seq: rng.Int64N(3) - 1}
		default:
			j := rng.IntN(len(plans))
			if len(plans[j]) == 0 {
				continue
			}
			s, plans[j] = plans[j][0], plans[j][1:]
			hash = hashOf(s)
		}
		h.deliver(s, hash)
		if s.Validate() == nil {
			history = append(history, s)
		}
		switch p := rng.Float64(); {
		case p < 0.2:
			h.expire(time.Duration(rng.IntN(500)) * time.Millisecond)
		case p < 0.35:
			h.persist()
		case p < 0.36:
			h.restart()
		case p < 0.37:
			redo = append(redo, h.crash()...)
		}
	}
	// Drain what was planned, then let every grace and retention run out.
	for j := range plans {
		for _, s := range plans[j] {
			h.deliver(s, hashOf(s))
		}
	}
	for _, s := range redo {
		h.deliver(s, hashOf(s))
	}
	h.expire(cfg.GapGrace)
	h.restart()
	h.expire(cfg.EpochRetention)
	h.expire(cfg.IdleRetention)
	h.expire(cfg.IdleRetention)
	// Every valid, non-absurd delivery of an epoch that was never retired was handled.
	for _, s := range history {
		mk := mkey{KeyOf(s), s.Epoch}
		if _, ok := h.m.handled[mk][s.Seq]; !ok && s.Seq < absurdFloor && !h.m.retired[mk] {
			t.Fatalf("%v was delivered but never handled", s)
		}
	}
	return h
}

// TestModelRandom drives random interleavings of duplicates, reorders, gaps, epoch changes,
// absurd jumps, restarts and crashes against the model; every answer is checked as it comes.
func TestModelRandom(t *testing.T) {
	seeds := 40
	if testing.Short() {
		seeds = 5
	}
	total := map[string]int{}
	for seed := range seeds {
		h := runModel(t, uint64(seed), modelConfig, 1500)
		for k, v := range h.counts {
			total[k] += v
		}
	}
	t.Logf("verdicts and events over %d runs: %v", seeds, total)
	cfg := modelConfig
	cfg.AdoptStreams = true
	adopted := 0
	for seed := range max(seeds/4, 4) { // enough runs for an adoption even under -short
		adopted += runModel(t, uint64(1000+seed), cfg, 1500).counts["before-adoption"]
	}
	if adopted == 0 {
		t.Error("AdoptStreams runs never delivered a number below a stream's first")
	}
	t.Logf("AdoptStreams: %d numbers below their stream's first handled", adopted)
	// The test is only meaningful if every mechanism fired.
	for _, k := range []string{"new", "duplicate", "suspicious", "new+late", "new+new-epoch", "stale-epoch",
		"gap-detected", "gap-given-up", "epoch-retired", "new+old-epoch"} {
		if total[k] == 0 {
			t.Errorf("no %q in any run: the generator does not exercise it", k)
		}
	}
}
