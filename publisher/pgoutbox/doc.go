// Package pgoutbox is the PostgreSQL transactional outbox: a service writes its business rows and
// the messages they cause in one transaction, and a relay sends the messages to RabbitMQ later, with
// the same sender as the bbolt journal's publisher (confirms, resends, parking).
//
//	ob, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "orders-svc"})
//	go ob.Relay(ctx, publisher.Config{URLs: urls, Topology: topo}) // on every replica; one sends
//
//	tx, _ := pool.Begin(ctx)
//	tx.Exec(ctx, `INSERT INTO orders ...`)
//	stamp, err := ob.PublishTx(ctx, tx, publisher.Message{Exchange: "orders", RoutingKey: "created", Body: b})
//	tok, _ := ob.TxID(ctx, tx) // optional: a commit mark, to settle a COMMIT whose outcome is lost
//	err = tx.Commit(ctx)       // accepted now; a rollback sends nothing
//	// on a lost connection during COMMIT: committed, err := ob.Settle(ctx, tok)
//
// Every replica of a service opens the same tables with the same Source: the outbox is one
// sequence authority (docs/PROTOCOL.md). Writers of one stream serialize on the stream's counter
// row until they commit; see PublishTx and docs/DESIGN.md (publisher/pgoutbox) for the design: the
// relay ids assigned at read time, the lease, the epochs.
package pgoutbox
