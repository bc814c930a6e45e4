package pgoutbox

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/rabbitkit/rabbitkit/journal"
)

// The props column: the AMQP properties of an entry, version byte 1, then the nine strings
// (uvarint length and bytes), delivery mode, priority, and the timestamp (varint unix seconds,
// uvarint nanoseconds; absent when zero). NULL when every property is zero.

var errProps = errors.New("pgoutbox: malformed props")

func encodeProps(p *journal.Properties) []byte {
	if *p == (journal.Properties{}) {
		return nil
	}
	b := make([]byte, 0, 64)
	b = append(b, 1)
	for _, s := range [...]string{p.ContentType, p.ContentEncoding, p.CorrelationID, p.ReplyTo, p.Expiration,
		p.MessageID, p.Type, p.UserID, p.AppID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = append(b, p.DeliveryMode, p.Priority)
	if !p.Timestamp.IsZero() {
		b = binary.AppendVarint(b, p.Timestamp.Unix())
		b = binary.AppendUvarint(b, uint64(p.Timestamp.Nanosecond()))
	}
	return b
}

func decodeProps(b []byte, p *journal.Properties) error {
	if len(b) == 0 {
		*p = journal.Properties{}
		return nil
	}
	if b[0] != 1 {
		return errProps
	}
	b = b[1:]
	for _, s := range [...]*string{&p.ContentType, &p.ContentEncoding, &p.CorrelationID, &p.ReplyTo, &p.Expiration,
		&p.MessageID, &p.Type, &p.UserID, &p.AppID} {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return errProps
		}
		*s = string(b[k : k+int(n)])
		b = b[k+int(n):]
	}
	if len(b) < 2 {
		return errProps
	}
	p.DeliveryMode, p.Priority = b[0], b[1]
	b = b[2:]
	if len(b) > 0 {
		sec, k := binary.Varint(b)
		if k <= 0 {
			return errProps
		}
		ns, k2 := binary.Uvarint(b[k:])
		if k2 <= 0 || ns >= 1e9 || k+k2 != len(b) {
			return errProps
		}
		p.Timestamp = time.Unix(sec, int64(ns)).UTC()
	}
	return nil
}
