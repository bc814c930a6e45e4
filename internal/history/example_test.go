package history_test

import (
	"fmt"

	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// A publisher run was killed after journaling seq 3 but before printing it; its restart printed
// seq 4. The consumer applied 1..4 once each: nothing lost, nothing applied twice, and the one
// unprinted message is explained by the kill.
func ExampleCheck() {
	stamp := func(seq int64) protocol.Stamp {
		return protocol.Stamp{Source: "orders", Epoch: 1, Stream: "x/new", Seq: seq}
	}
	h := history.History{
		Runs: []history.Run{
			{Source: "orders", Killed: true, Accepted: []protocol.Stamp{stamp(1), stamp(2)}},
			{Source: "orders", Accepted: []protocol.Stamp{stamp(4)}},
		},
	}
	for seq := int64(1); seq <= 4; seq++ {
		line := history.FormatApplied(history.Applied{Stamp: stamp(seq), Count: 1}) // as consumer -dump prints it
		a, _ := history.ParseApplied(line)
		h.Ledger = append(h.Ledger, a)
	}
	r := history.Check(h)
	fmt.Println("ok:", r.OK(), "lost:", r.Lost, "twice:", r.AppliedTwice, "unprinted:", r.Unprinted)
	fmt.Print(r.Table())
	// Output:
	// ok: true lost: 0 twice: 0 unprinted: 1
	// | check                                                      | count | verdict           |
	// |------------------------------------------------------------|-------|-------------------|
	// | accepted by a publisher (journaled)                        | 3     |                   |
	// | applied by the consumer (ledger)                           | 4     |                   |
	// | accepted and applied exactly once                          | 3     | ok (all accepted) |
	// | lost (accepted, never applied)                             | 0     | ok (must be 0)    |
	// | applied twice                                              | 0     | ok (must be 0)    |
	// | sequence number accepted twice                             | 0     | ok (must be 0)    |
	// | applied, journaled by a killed publisher before it printed | 1     | allowed           |
	// | applied, never journaled                                   | 0     | ok (must be 0)    |
	// | gaps reported                                              | 0     |                   |
	// | gaps reported for messages that arrived                    | 0     | ok (must be 0)    |
	// | sequence number reused with another body                   | 0     | ok (must be 0)    |
}
