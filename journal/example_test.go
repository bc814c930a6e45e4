package journal_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/rabbitkit/rabbitkit/journal"
)

// The publisher's loop in miniature: journal messages durably, read them in
// order, delete them once the broker confirmed them.
func Example() {
	dir, err := os.MkdirTemp("", "journal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	j, err := journal.Open(filepath.Join(dir, "outbox.db"), journal.Options{Source: "billing-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer j.Close()
	ctx := context.Background()

	for _, body := range []string{"invoice 1", "invoice 2", "invoice 3"} {
		e := &journal.Entry{
			Stream:     "billing/invoices",
			Exchange:   "billing",
			RoutingKey: "invoices",
			Properties: journal.Properties{ContentType: "text/plain", DeliveryMode: 2},
			Body:       []byte(body),
		}
		if err := j.Append(ctx, e); err != nil { // durable once it returns
			log.Fatal(err)
		}
	}

	pending, err := j.Read(ctx, 0, 100)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range pending {
		fmt.Printf("id=%d seq=%d %s\n", e.ID, e.Seq, e.Body)
	}

	// The broker confirmed the first two.
	if err := j.Delete(ctx, pending[0].ID, pending[1].ID); err != nil {
		log.Fatal(err)
	}
	st := j.Stats()
	fmt.Println("pending:", st.Pending, "next seq:", st.NextSeq["billing/invoices"])
	// Output:
	// id=1 seq=1 invoice 1
	// id=2 seq=2 invoice 2
	// id=3 seq=3 invoice 3
	// pending: 1 next seq: 4
}

// Undeliverable entries are parked with a reason, listed, and re-driven or
// dropped by an operator.
func ExampleJournal_Park() {
	dir, err := os.MkdirTemp("", "journal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	j, err := journal.Open(filepath.Join(dir, "outbox.db"), journal.Options{Source: "billing-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer j.Close()
	ctx := context.Background()

	e := &journal.Entry{Stream: "s", Exchange: "billing", RoutingKey: "nowhere", Mandatory: true, Body: []byte("x")}
	if err := j.Append(ctx, e); err != nil {
		log.Fatal(err)
	}
	if err := j.Park(ctx, e.ID, "unroutable: NO_ROUTE"); err != nil {
		log.Fatal(err)
	}
	err = j.Parked(ctx, func(p journal.ParkedEntry) error {
		fmt.Printf("parked id=%d seq=%d reason=%q\n", p.ID, p.Seq, p.Reason)
		return j.Redrive(ctx, p.ID) // after the operator added the binding
	})
	if err != nil {
		log.Fatal(err)
	}
	pending, err := j.Read(ctx, 0, 10)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("pending id=%d seq=%d\n", pending[0].ID, pending[0].Seq)
	// Output:
	// parked id=1 seq=1 reason="unroutable: NO_ROUTE"
	// pending id=2 seq=1
}
