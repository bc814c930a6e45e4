// Package ledger is the effect of the example consumer's transactional handler: a counter per
// message, kept in a bucket of the consumer's own bbolt file and incremented inside the same
// transaction that marks the message handled. It stands for "insert a row" in a real service:
// because the effect and the dedup mark commit together, the counter of every message the
// publisher accepted must end at exactly 1, whatever crashed in between.
//
// # Guarantees
//
// Increment adds one to the message's counter in the caller's transaction: it is durable exactly
// when that transaction commits. Read and Dump, in a read transaction (bbolt's DB.View, or
// consumer.Consumer.View while the consumer runs), see only committed counters.
//
// # Concurrency
//
// Increment runs in the caller's write transaction (bbolt allows one at a time); Read and Dump run
// in the caller's read transaction, which may run beside it.
//
// # Caveats
//
// The bucket name is Bucket; do not reuse it for anything else in the same file.
package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// Bucket is the bbolt bucket holding the counters.
var Bucket = []byte("rabbitkit.example.ledger")

// ErrCorrupt is returned when a key or value in Bucket does not decode.
var ErrCorrupt = errors.New("ledger: corrupt entry")

// Increment adds one to the counter of s in tx and returns the new count.
func Increment(tx *bolt.Tx, s protocol.Stamp) (int64, error) {
	b, err := tx.CreateBucketIfNotExists(Bucket)
	if err != nil {
		return 0, fmt.Errorf("ledger: %w", err)
	}
	k := Key(s)
	var n int64
	if v := b.Get(k); v != nil {
		if len(v) != 8 {
			return 0, fmt.Errorf("%w: value of %s has %d bytes", ErrCorrupt, s, len(v))
		}
		n = int64(binary.BigEndian.Uint64(v))
	}
	n++
	if err := b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(n))); err != nil {
		return 0, fmt.Errorf("ledger: %w", err)
	}
	return n, nil
}

// Read returns the counter of s in tx (0 when the message was never applied).
func Read(tx *bolt.Tx, s protocol.Stamp) (int64, error) {
	b := tx.Bucket(Bucket)
	if b == nil {
		return 0, nil
	}
	v := b.Get(Key(s))
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: value of %s has %d bytes", ErrCorrupt, s, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// Dump calls fn for every counter in tx, ordered by key. An error from fn stops it and is returned.
func Dump(tx *bolt.Tx, fn func(s protocol.Stamp, count int64) error) error {
	b := tx.Bucket(Bucket)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		s, err := ParseKey(k)
		if err != nil {
			return err
		}
		if len(v) != 8 {
			return fmt.Errorf("%w: value of %s has %d bytes", ErrCorrupt, s, len(v))
		}
		return fn(s, int64(binary.BigEndian.Uint64(v)))
	})
}

// Key encodes a stamp as a bucket key: uvarint length + source, epoch (8 bytes big-endian),
// uvarint length + stream, seq (8 bytes big-endian).
func Key(s protocol.Stamp) []byte {
	k := make([]byte, 0, len(s.Source)+len(s.Stream)+26)
	k = binary.AppendUvarint(k, uint64(len(s.Source)))
	k = append(k, s.Source...)
	k = binary.BigEndian.AppendUint64(k, uint64(s.Epoch))
	k = binary.AppendUvarint(k, uint64(len(s.Stream)))
	k = append(k, s.Stream...)
	return binary.BigEndian.AppendUint64(k, uint64(s.Seq))
}

// ParseKey decodes a key written by Key.
func ParseKey(k []byte) (protocol.Stamp, error) {
	var s protocol.Stamp
	str := func() (string, bool) {
		n, w := binary.Uvarint(k)
		if w <= 0 || n > uint64(len(k)-w) {
			return "", false
		}
		v := string(k[w : w+int(n)])
		k = k[w+int(n):]
		return v, true
	}
	i64 := func() (int64, bool) {
		if len(k) < 8 {
			return 0, false
		}
		v := int64(binary.BigEndian.Uint64(k))
		k = k[8:]
		return v, true
	}
	var ok1, ok2, ok3, ok4 bool
	s.Source, ok1 = str()
	if ok1 {
		s.Epoch, ok2 = i64()
	}
	if ok2 {
		s.Stream, ok3 = str()
	}
	if ok3 {
		s.Seq, ok4 = i64()
	}
	if !ok4 || len(k) != 0 {
		return protocol.Stamp{}, fmt.Errorf("%w: key %x", ErrCorrupt, k)
	}
	return s, nil
}
