package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Entry encoding, version 1 (all integers big endian unless varint):
//
//	[0]      format version (1)
//	[1:5]    crc32c (Castagnoli) of bytes [5:]
//	[5:13]   ID
//	[13:21]  Seq
//	[21]     flags (bit 0: mandatory, bit 1: headers present, bit 2: timestamp present)
//	then     created (varint seconds, uvarint nanoseconds), attempts (uvarint),
//	         last outcome (byte), last error, stream, exchange, routing key,
//	         content type, content encoding, delivery mode (byte), priority (byte),
//	         correlation id, reply to, expiration, message id,
//	         [timestamp (varint seconds, uvarint nanoseconds)], type, user id, app id,
//	         [headers table], body
//
// Strings and the body are a uvarint length followed by the bytes. The decoder
// rejects unknown versions, checksum mismatches, lengths past the end and
// trailing bytes.
const (
	entryVersion   = 1
	offCRC         = 1
	offID          = 5
	offSeq         = 13
	offFlags       = 21
	offVar         = 22
	flagMandatory  = 1 << 0
	flagHeaders    = 1 << 1
	flagTimestamp  = 1 << 2
	knownFlags     = flagMandatory | flagHeaders | flagTimestamp
	parkedVersion  = 1
	parkedFixedLen = 5 // version + crc
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errDecode is wrapped by every decoding failure; callers turn it into ErrCorrupt.
var errDecode = errors.New("malformed entry")

// encodeEntry appends the encoding of e to dst with ID and Seq left zero (see
// sealEntry). It returns the encoding and the encoded size of the headers.
func encodeEntry(dst []byte, e *Entry, created time.Time) ([]byte, int, error) {
	var flags byte
	if e.Mandatory {
		flags |= flagMandatory
	}
	if e.Headers != nil {
		flags |= flagHeaders
	}
	p := &e.Properties
	if !p.Timestamp.IsZero() {
		flags |= flagTimestamp
	}
	dst = append(dst, entryVersion, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, e.ID)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Seq))
	dst = append(dst, flags)
	dst = appendTime(dst, created)
	dst = binary.AppendUvarint(dst, uint64(e.Attempts))
	dst = append(dst, byte(e.LastOutcome))
	dst = appendString(dst, e.LastError)
	dst = appendString(dst, e.Stream)
	dst = appendString(dst, e.Exchange)
	dst = appendString(dst, e.RoutingKey)
	dst = appendString(dst, p.ContentType)
	dst = appendString(dst, p.ContentEncoding)
	dst = append(dst, p.DeliveryMode, p.Priority)
	dst = appendString(dst, p.CorrelationID)
	dst = appendString(dst, p.ReplyTo)
	dst = appendString(dst, p.Expiration)
	dst = appendString(dst, p.MessageID)
	if flags&flagTimestamp != 0 {
		dst = appendTime(dst, p.Timestamp)
	}
	dst = appendString(dst, p.Type)
	dst = appendString(dst, p.UserID)
	dst = appendString(dst, p.AppID)
	hdrLen := 0
	if e.Headers != nil {
		before := len(dst)
		var err error
		if dst, err = appendTable(dst, e.Headers, 0); err != nil {
			return nil, 0, err
		}
		hdrLen = len(dst) - before
	}
	dst = binary.AppendUvarint(dst, uint64(len(e.Body)))
	dst = append(dst, e.Body...)
	sealEntry(dst, e.ID, e.Seq)
	return dst, hdrLen, nil
}

// sealEntry writes id and seq into an encoded entry and recomputes its checksum.
func sealEntry(b []byte, id uint64, seq int64) {
	binary.BigEndian.PutUint64(b[offID:], id)
	binary.BigEndian.PutUint64(b[offSeq:], uint64(seq))
	binary.BigEndian.PutUint32(b[offCRC:], crc32.Checksum(b[offID:], castagnoli))
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = binary.AppendVarint(dst, t.Unix())
	return binary.AppendUvarint(dst, uint64(t.Nanosecond()))
}

// checkEntry validates version and checksum of an encoded entry.
func checkEntry(b []byte) error {
	if len(b) < offVar {
		return fmt.Errorf("%w: %d bytes is shorter than the fixed header", errDecode, len(b))
	}
	if b[0] != entryVersion {
		return fmt.Errorf("%w: unknown format version %d", errDecode, b[0])
	}
	if want, got := binary.BigEndian.Uint32(b[offCRC:]), crc32.Checksum(b[offID:], castagnoli); want != got {
		return fmt.Errorf("%w: checksum %08x, want %08x", errDecode, got, want)
	}
	return nil
}

// entryID returns the ID of an encoded entry (no validation beyond length).
func entryID(b []byte) uint64 {
	if len(b) < offVar {
		return 0
	}
	return binary.BigEndian.Uint64(b[offID:])
}

// entryCreated decodes only the creation time of a checked entry.
func entryCreated(b []byte) (time.Time, error) {
	if err := checkEntry(b); err != nil {
		return time.Time{}, err
	}
	d := decoder{b: b[offVar:]}
	t := d.time()
	return t, d.err
}

// decodeEntry decodes a complete encoded entry into a fresh Entry that shares
// no memory with b.
func decodeEntry(b []byte) (*Entry, error) { return decodeEntryFrom(b, false) }

// decodeCached decodes an encoding held by the tail cache, which never left
// this process's memory: the checksum (a guard against the disk) is not
// recomputed, and Body aliases b, which is immutable (see tailCache).
func decodeCached(b []byte) (*Entry, error) { return decodeEntryFrom(b, true) }

func decodeEntryFrom(b []byte, cached bool) (*Entry, error) {
	if cached {
		if len(b) < offVar || b[0] != entryVersion {
			return nil, fmt.Errorf("%w: cached entry of %d bytes is not a version %d encoding", errDecode, len(b), entryVersion)
		}
	} else if err := checkEntry(b); err != nil {
		return nil, err
	}
	e := &Entry{
		ID:  binary.BigEndian.Uint64(b[offID:]),
		Seq: int64(binary.BigEndian.Uint64(b[offSeq:])),
	}
	flags := b[offFlags]
	if flags&^knownFlags != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", errDecode, flags)
	}
	e.Mandatory = flags&flagMandatory != 0
	d := decoder{b: b[offVar:]}
	e.Created = d.time()
	attempts := d.uvarint()
	if attempts > 1<<32-1 {
		d.fail("attempts overflow")
	}
	e.Attempts = uint32(attempts)
	e.LastOutcome = Outcome(d.byte())
	e.LastError = d.string()
	e.Stream = d.string()
	e.Exchange = d.string()
	e.RoutingKey = d.string()
	p := &e.Properties
	p.ContentType = d.string()
	p.ContentEncoding = d.string()
	p.DeliveryMode = d.byte()
	p.Priority = d.byte()
	p.CorrelationID = d.string()
	p.ReplyTo = d.string()
	p.Expiration = d.string()
	p.MessageID = d.string()
	if flags&flagTimestamp != 0 {
		p.Timestamp = d.time()
	}
	p.Type = d.string()
	p.UserID = d.string()
	p.AppID = d.string()
	if flags&flagHeaders != 0 {
		e.Headers = d.table(0)
	}
	if cached {
		if r := d.raw(); len(r) > 0 {
			e.Body = r[:len(r):len(r)] // an append reallocates instead of writing into b
		}
	} else {
		e.Body = d.bytes()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	if d.err != nil {
		return nil, d.err
	}
	return e, nil
}

// encodeParked encodes a parked record: version, crc32c of the rest, parked
// time, reason, then the entry's own encoding (with its own checksum).
func encodeParked(entry []byte, reason string, at time.Time) []byte {
	b := make([]byte, parkedFixedLen, parkedFixedLen+20+len(reason)+len(entry))
	b[0] = parkedVersion
	b = appendTime(b, at)
	b = appendString(b, reason)
	b = append(b, entry...)
	binary.BigEndian.PutUint32(b[offCRC:], crc32.Checksum(b[parkedFixedLen:], castagnoli))
	return b
}

// splitParked validates a parked record and returns its parts; entry aliases b.
func splitParked(b []byte) (entry []byte, reason string, at time.Time, err error) {
	if len(b) < parkedFixedLen || b[0] != parkedVersion {
		return nil, "", time.Time{}, fmt.Errorf("%w: bad parked record header", errDecode)
	}
	if want, got := binary.BigEndian.Uint32(b[offCRC:]), crc32.Checksum(b[parkedFixedLen:], castagnoli); want != got {
		return nil, "", time.Time{}, fmt.Errorf("%w: parked checksum %08x, want %08x", errDecode, got, want)
	}
	d := decoder{b: b[parkedFixedLen:]}
	at = d.time()
	reason = d.string()
	if d.err != nil {
		return nil, "", time.Time{}, d.err
	}
	return d.b, reason, at, nil
}

func decodeParked(b []byte) (ParkedEntry, error) {
	entry, reason, at, err := splitParked(b)
	if err != nil {
		return ParkedEntry{}, err
	}
	e, err := decodeEntry(entry)
	if err != nil {
		return ParkedEntry{}, err
	}
	return ParkedEntry{Entry: *e, Reason: reason, ParkedAt: at}, nil
}

// decoder reads from b; the first failure sticks in err and every later read
// returns zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errDecode, why)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail("unexpected end")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) fixed(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.fail("unexpected end")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// raw returns a length-prefixed byte run aliasing the input.
func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length past the end")
		return nil
	}
	return d.fixed(int(n))
}

func (d *decoder) string() string { return string(d.raw()) }

func (d *decoder) bytes() []byte {
	r := d.raw()
	if len(r) == 0 {
		return nil
	}
	return append([]byte(nil), r...)
}

func (d *decoder) time() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		d.fail("nanoseconds out of range")
		return time.Time{}
	}
	if sec == zeroTimeUnix && nsec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// zeroTimeUnix is time.Time{}.Unix(): the zero time round-trips as zero.
var zeroTimeUnix = time.Time{}.Unix()
