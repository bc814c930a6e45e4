package integration

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/rabbitkit/rabbitkit/internal/history"
)

// fault is one kind of failure the scheduler injects. inject runs on the test goroutine: it breaks
// something, holds the fault (through cluster.sleep, so processes are still supervised) and heals
// it before returning.
type fault struct {
	name   string
	inject func(t testing.TB)
}

// faultStat is what the table reports per kind.
type faultStat struct {
	name  string
	count int
	total time.Duration // time spent inside inject (breaking, holding, healing)
}

// plan returns every kind perKind times, shuffled, such that no kind runs twice in a row when
// avoidable (a broker restart right after a broker kill tests less than a mix).
func plan(kinds []fault, perKind int, rng *rand.Rand) []fault {
	var out []fault
	for range perKind {
		round := append([]fault(nil), kinds...)
		rng.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
		if len(out) > 0 && len(round) > 1 && round[0].name == out[len(out)-1].name {
			round[0], round[1] = round[1], round[0]
		}
		out = append(out, round...)
	}
	return out
}

// runFaults injects the plan, pausing between faults for pause ± 50%, and returns the stats in the
// order of kinds. sleep must keep supervising processes while it waits.
func runFaults(t testing.TB, kinds []fault, steps []fault, pause time.Duration, rng *rand.Rand, sleep func(time.Duration)) []faultStat {
	t.Helper()
	stats := make(map[string]*faultStat, len(kinds))
	for _, k := range kinds {
		stats[k.name] = &faultStat{name: k.name}
	}
	for i, f := range steps {
		sleep(pause/2 + time.Duration(rng.Int64N(int64(pause)+1)))
		start := time.Now()
		f.inject(t)
		d := time.Since(start)
		st := stats[f.name]
		st.count++
		st.total += d
		t.Logf("fault %d/%d: %s (%v)", i+1, len(steps), f.name, d.Round(time.Millisecond))
	}
	out := make([]faultStat, 0, len(kinds))
	for _, k := range kinds {
		out = append(out, *stats[k.name])
	}
	return out
}

// faultTable formats the stats.
func faultTable(stats []faultStat) history.Table {
	tb := history.Table{Header: []string{"fault injected", "times", "total time under fault"}}
	n := 0
	for _, s := range stats {
		n += s.count
		tb.Rows = append(tb.Rows, []string{s.name, strconv.Itoa(s.count), s.total.Round(100 * time.Millisecond).String()})
	}
	tb.Rows = append(tb.Rows, []string{"all", strconv.Itoa(n), ""})
	return tb
}

func TestPlan(t *testing.T) {
	kinds := []fault{{name: "a"}, {name: "b"}, {name: "c"}}
	for seed := range uint64(50) {
		p := plan(kinds, 3, rand.New(rand.NewPCG(seed, 1)))
		if len(p) != 9 {
			t.Fatalf("plan has %d steps, want 9", len(p))
		}
		count := map[string]int{}
		for i, f := range p {
			count[f.name]++
			if i > 0 && p[i-1].name == f.name {
				t.Fatalf("seed %d: %s twice in a row: %v", seed, f.name, p)
			}
		}
		for _, k := range kinds {
			if count[k.name] != 3 {
				t.Fatalf("seed %d: %s planned %d times, want 3", seed, k.name, count[k.name])
			}
		}
	}
}
