// Package protocol is rabbitkit's wire contract: the stamp that identifies every message a rabbitkit
// publisher sends, so that any consumer can deduplicate it and detect gaps.
//
// A stamp is four values: the publisher's source, its outbox's epoch, the stream (sequence space)
// and the sequence number within it. Contract v2 carries it as one short string, in the AMQP
// message-id property:
//
//	rk2:<source>:<epoch>:<stream>:<seq>        e.g. rk2:billing-1:4087423915:payments/captured:17
//
// Source and stream are escaped (every byte outside '!'..'~', and '%' and ':', becomes %XX with
// upper-case hex); epoch and seq are decimal without sign or leading zeros. When the application
// sets its own message-id, the same string travels in the header HeaderStamp ("rk-stamp") instead.
// RabbitMQ 3.x decodes the headers table of every message it routes but not the message-id, so the
// usual case costs the broker nothing beyond a longer property.
//
// Contract v1 (legacy) carried the stamp as four headers, rk-source, rk-epoch, rk-stream and
// rk-seq. Consumers still accept it (see Decode for the precedence rule); ApplyV1 writes it, for
// tests and tools only.
//
// docs/PROTOCOL.md describes the contract for implementers in other languages, and
// testdata/v2-vectors.json holds test vectors that any implementation can check itself against.
//
// # Guarantees
//
// The encoding is exact and canonical: every valid stamp has exactly one encoding, and
// ParseMessageID accepts only that encoding (no lower-case hex, no escaped safe bytes, no leading
// zeros), so that two strings never name the same stamp. Decode never panics on any input; it tells
// "not a rabbitkit message" (ErrNoStamp) apart from "a broken rabbitkit message" (ErrMalformed).
//
// # Concurrency
//
// Everything here is a pure function or a value type; safe for concurrent use.
//
// # Caveats
//
// ApplyV1 writes into the given table; give each message its own table.
package protocol
