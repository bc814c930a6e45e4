package dedup_test

import (
	"fmt"
	"time"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// The consumer's cycle: classify each delivery, handle the new ones, commit, persist the touched
// streams, and let Expire report what stayed missing.
func Example() {
	tr, err := dedup.New(dedup.Config{GapGrace: 30 * time.Second})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	store := map[string][]byte{}

	deliver := func(seq int64, body string) {
		s := protocol.Stamp{Source: "billing", Epoch: 7, Stream: "invoices", Seq: seq}
		v := tr.Classify(s)
		fmt.Printf("seq %d: %v\n", seq, v)
		switch v.Kind {
		case dedup.KindNew:
			// ... run the handler; on success (or after parking) mark it:
			_, evs := tr.Commit(s, dedup.BodyHash([]byte(body)), now)
			for _, e := range evs {
				fmt.Println("  event:", e)
			}
		case dedup.KindDuplicate:
			if v.StoredHash != 0 && v.StoredHash != dedup.BodyHash([]byte(body)) {
				fmt.Println("  same stamp, different body!")
			}
			// ack and skip
		default:
			// KindSuspicious, KindStaleEpoch: park with a reason
		}
	}
	persist := func() {
		for _, k := range tr.TakeDirty(nil) {
			b, _ := tr.AppendState(nil, k)
			store[string(dedup.AppendKey(nil, k))] = b
			fmt.Printf("persisted %v (%d bytes)\n", k, len(b))
		}
	}

	deliver(1, "a")
	deliver(2, "b")
	deliver(2, "b")     // a resend: duplicate
	deliver(2, "other") // same stamp, another body
	deliver(4, "d")     // 3 is missing
	persist()
	now = now.Add(30 * time.Second)
	for _, e := range tr.Expire(now) {
		fmt.Println("expire:", e)
	}
	deliver(3, "c")     // late, still handled once
	deliver(1<<62, "x") // an absurd jump: park it, it changes nothing
	deliver(5, "e")
	persist()

	// Output:
	// seq 1: new+new-stream
	// seq 2: new
	// seq 2: duplicate
	// seq 2: duplicate
	//   same stamp, different body!
	// seq 4: new
	// persisted billing/invoices (41 bytes)
	// expire: gap-detected billing/invoices epoch 7 seq 3..3
	// seq 3: new+late
	//   event: late-arrival billing/invoices epoch 7 seq 3..3
	// seq 4611686018427387904: suspicious
	// seq 5: new
	// persisted billing/invoices (29 bytes)
}
