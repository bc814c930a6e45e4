// Package protocol is rabbitkit's wire contract: the four AMQP headers that identify every message a
// rabbitkit publisher sends, so that any consumer can deduplicate it and detect gaps.
//
//	rk-source  long string   stable name of the publishing service instance
//	rk-epoch   int64 (>= 1)  incarnation of the publisher's journal; a new epoch starts a new sequence space
//	rk-stream  long string   sequence space; by default DefaultStream(exchange, routingKey)
//	rk-seq     int64 (>= 1)  1, 2, 3, ... per (source, epoch, stream), never reused
//
// docs/PROTOCOL.md describes the contract for implementers in other languages.
//
// # Guarantees
//
// Decode never panics on any header table; it tells "not a rabbitkit message" (ErrNoStamp) apart from
// "a broken rabbitkit message" (ErrMalformed).
//
// # Concurrency
//
// Everything here is a pure function or a value type; safe for concurrent use.
//
// # Caveats
//
// Stamp.Apply writes into the given table; give each message its own table.
package protocol
