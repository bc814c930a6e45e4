package dedup

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// stateVersion is the first byte of an encoded stream state: 1, or 2 when the stream has parked
// stamps or handler start counts. A stream without either is written as version 1, which releases
// before they existed still read.
const (
	stateVersion       = 1
	stateVersionParked = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Encoding of one stream's state, version 1 (all varints are encoding/binary's):
//
//	byte    version (1)
//	uvarint number of epochs, then per epoch, most recently active first:
//	    8 bytes epoch (little endian), uvarint W, uvarint H-W, varint last commit (unix ns),
//	    uvarint W-floor,
//	    uvarint number of gaps, then per gap: uvarint lo-prev (prev = W, then the previous gap's hi),
//	        uvarint hi-lo, varint first noticed (unix ns), byte reported (0 or 1),
//	    uvarint number of lost ranges, then per range: uvarint lo-prev (prev = 0, then the previous
//	        range's hi), uvarint hi-lo
//	uvarint number of retired epochs, then per epoch, oldest first: 8 bytes epoch, varint retired at
//	version 2 only: uvarint number of parked stamps, then per stamp, in (epoch, seq) order:
//	    uvarint epoch-prev epoch (prev = 0), uvarint seq (seq-prev seq when the epoch is the
//	    previous stamp's), varint parked at (unix seconds) - prev parked at (prev = 0);
//	    then uvarint number of start counts, then per stamp, in (epoch, seq) order: epoch and seq
//	    as for parked stamps, uvarint count (at least 1). At least one of the two lists is not empty.
//	4 bytes CRC-32C (Castagnoli, little endian) of everything before
//
// The body-hash history is not persisted.

// AppendState appends the encoded state of k to dst and returns the extended slice, or dst and
// false when k has no state (it was forgotten, or never committed): delete k from the store then.
// The encoding is versioned, compact (a stream without open gaps takes about 30 bytes) and ends
// with a CRC-32C.
func (t *Tracker) AppendState(dst []byte, k Key) ([]byte, bool) {
	st := t.streams[k]
	if st == nil {
		return dst, false
	}
	start := len(dst)
	if len(st.parked) > 0 || len(st.starts) > 0 {
		dst = append(dst, stateVersionParked)
	} else {
		dst = append(dst, stateVersion)
	}
	dst = binary.AppendUvarint(dst, uint64(len(st.wins)))
	for _, x := range st.wins {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(x.epoch))
		dst = binary.AppendUvarint(dst, uint64(x.w))
		dst = binary.AppendUvarint(dst, uint64(x.h-x.w))
		dst = binary.AppendVarint(dst, x.active)
		dst = binary.AppendUvarint(dst, uint64(x.w-x.floor))
		dst = binary.AppendUvarint(dst, uint64(len(x.missing)))
		prev := x.w
		for _, g := range x.missing {
			dst = binary.AppendUvarint(dst, uint64(g.lo-prev))
			dst = binary.AppendUvarint(dst, uint64(g.hi-g.lo))
			dst = binary.AppendVarint(dst, g.since)
			if g.reported {
				dst = append(dst, 1)
			} else {
				dst = append(dst, 0)
			}
			prev = g.hi
		}
		dst = binary.AppendUvarint(dst, uint64(len(x.lost)))
		prev = 0
		for _, s := range x.lost {
			dst = binary.AppendUvarint(dst, uint64(s.lo-prev))
			dst = binary.AppendUvarint(dst, uint64(s.hi-s.lo))
			prev = s.hi
		}
	}
	dst = binary.AppendUvarint(dst, uint64(len(st.retired)))
	for _, r := range st.retired {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(r.epoch))
		dst = binary.AppendVarint(dst, r.at)
	}
	if len(st.parked) > 0 || len(st.starts) > 0 {
		dst = binary.AppendUvarint(dst, uint64(len(st.parked)))
		var pe, ps, pa int64
		for _, p := range st.parked {
			dst = appendStampDelta(dst, p.epoch, p.seq, pe, ps)
			dst = binary.AppendVarint(dst, p.at-pa)
			pe, ps, pa = p.epoch, p.seq, p.at
		}
		dst = binary.AppendUvarint(dst, uint64(len(st.starts)))
		pe, ps = 0, 0
		for _, c := range st.starts {
			dst = appendStampDelta(dst, c.epoch, c.seq, pe, ps)
			dst = binary.AppendUvarint(dst, uint64(c.n))
			pe, ps = c.epoch, c.seq
		}
	}
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), true
}

// appendStampDelta appends (epoch, seq) after (pe, ps): the epoch's delta, then seq's delta when
// the epoch is the same, else seq.
func appendStampDelta(dst []byte, epoch, seq, pe, ps int64) []byte {
	dst = binary.AppendUvarint(dst, uint64(epoch-pe))
	if epoch == pe {
		return binary.AppendUvarint(dst, uint64(seq-ps))
	}
	return binary.AppendUvarint(dst, uint64(seq))
}

// stampDelta reads what appendStampDelta wrote; i is the element's index (0: no previous).
func (d *decoder) stampDelta(what string, i int, pe, ps int64) (epoch, seq int64) {
	de := d.pos(what + " epoch")
	epoch = d.add(pe, de, what+" epoch")
	if de == 0 && i > 0 {
		seq = d.add(ps, d.pos(what+" seq"), what+" seq")
	} else {
		seq = d.pos(what + " seq")
	}
	return epoch, seq
}

// Load replaces k's in-memory state with the decoded data (as written by AppendState), for startup
// and for rolling back after a failed store transaction. The stream is not marked dirty. On error
// (wrapping ErrCorrupt or ErrVersion) the tracker is unchanged. State that exceeds the current
// Config bounds is accepted and brought within them by the next Commit or Expire.
func (t *Tracker) Load(k Key, data []byte) error {
	st, err := decodeState(k, data)
	if err != nil {
		return fmt.Errorf("%w (stream %s)", err, k)
	}
	t.Drop(k)
	t.streams[k] = st
	delete(t.forgotten, k)
	t.updateWatch(st)
	return nil
}

// decoder reads varints and fails sticky.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("truncated or overlong %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// pos reads a uvarint that must fit a non-negative int64.
func (d *decoder) pos(what string) int64 {
	v := d.uvarint(what)
	if v > math.MaxInt64 {
		d.fail("%s %d out of range", what, v)
		return 0
	}
	return int64(v)
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("truncated or overlong %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) fixed64(what string) int64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail("truncated %s", what)
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return int64(v)
}

func (d *decoder) byte(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail("truncated %s", what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// count reads a list length; every element takes at least min bytes, which bounds allocations.
func (d *decoder) count(what string, min int) int {
	v := d.uvarint(what)
	if d.err == nil && v > uint64(len(d.b)/min) {
		d.fail("%s %d exceeds the remaining %d bytes", what, v, len(d.b))
		return 0
	}
	return int(v)
}

// add returns a+b for non-negative a, b, failing on overflow.
func (d *decoder) add(a, b int64, what string) int64 {
	if a > math.MaxInt64-b {
		d.fail("%s overflows", what)
		return 0
	}
	return a + b
}

func decodeState(k Key, data []byte) (*stream, error) {
	if len(data) < 1+4 {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrCorrupt, len(data))
	}
	if data[0] != stateVersion && data[0] != stateVersionParked {
		if data[0] > stateVersionParked {
			return nil, fmt.Errorf("%w: version %d", ErrVersion, data[0])
		}
		return nil, fmt.Errorf("%w: version byte %d", ErrCorrupt, data[0])
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	d := &decoder{b: body[1:]}
	st := &stream{key: k}
	seen := map[int64]bool{}
	nw := d.count("epoch count", 14)
	if d.err == nil && nw == 0 {
		d.fail("no epochs")
	}
	for i := 0; i < nw && d.err == nil; i++ {
		x := &window{epoch: d.fixed64("epoch")}
		if d.err == nil && (x.epoch < 1 || seen[x.epoch]) {
			d.fail("epoch %d invalid or repeated", x.epoch)
		}
		seen[x.epoch] = true
		x.w = d.pos("W")
		x.h = d.add(x.w, d.pos("H-W"), "H")
		x.active = d.varint("last commit")
		if wf := d.pos("W-floor"); d.err == nil {
			if wf > x.w {
				d.fail("floor below 0 (W %d, W-floor %d)", x.w, wf)
			}
			x.floor = x.w - wf
		}
		ng := d.count("gap count", 4)
		prev := x.w
		for j := 0; j < ng && d.err == nil; j++ {
			delta := d.pos("gap offset")
			if d.err == nil && (j == 0 && delta != 1 || j > 0 && delta < 2) {
				d.fail("gap %d offset %d breaks ordering", j, delta)
			}
			g := gap{lo: d.add(prev, delta, "gap start")}
			g.hi = d.add(g.lo, d.pos("gap length"), "gap end")
			g.since = d.varint("gap time")
			switch d.byte("gap flag") {
			case 0:
				x.unreported++
			case 1:
				g.reported = true
			default:
				d.fail("gap flag is not 0 or 1")
			}
			if d.err == nil && g.hi >= x.h {
				d.fail("gap %d..%d reaches H %d", g.lo, g.hi, x.h)
			}
			x.missing = append(x.missing, g)
			x.missingN += g.hi - g.lo + 1
			prev = g.hi
		}
		if d.err == nil && ng == 0 && x.h != x.w {
			d.fail("W %d below H %d with no gap", x.w, x.h)
		}
		nl := d.count("lost count", 2)
		prev = 0
		for j := 0; j < nl && d.err == nil; j++ {
			delta := d.pos("lost offset")
			if d.err == nil && delta < 1 {
				d.fail("lost range %d breaks ordering", j)
			}
			s := span{lo: d.add(prev, delta, "lost start")}
			s.hi = d.add(s.lo, d.pos("lost length"), "lost end")
			if d.err == nil && (s.hi > x.w || s.lo <= x.floor && s.hi > x.floor) {
				d.fail("lost range %d..%d above W %d or across floor %d", s.lo, s.hi, x.w, x.floor)
			}
			x.lost = append(x.lost, s)
			prev = s.hi
		}
		st.wins = append(st.wins, x)
	}
	nr := d.count("retired count", 9)
	for i := 0; i < nr && d.err == nil; i++ {
		r := retired{epoch: d.fixed64("retired epoch"), at: d.varint("retired time")}
		if d.err == nil && (r.epoch < 1 || seen[r.epoch]) {
			d.fail("retired epoch %d invalid or repeated", r.epoch)
		}
		seen[r.epoch] = true
		st.retired = append(st.retired, r)
	}
	if data[0] == stateVersionParked {
		np := d.count("parked count", 3)
		var pe, ps, pa int64
		for i := 0; i < np && d.err == nil; i++ {
			var p parked
			p.epoch, p.seq = d.stampDelta("parked", i, pe, ps)
			if da := d.varint("parked time"); d.err == nil {
				if da > 0 && pa > math.MaxInt64-da || da < 0 && pa < math.MinInt64-da {
					d.fail("parked time overflows")
				}
				p.at = pa + da
			}
			if d.err == nil && (p.epoch < 1 || p.seq < 1 || i > 0 && cmpParked(p, pe, ps) <= 0) {
				d.fail("parked stamp %d (epoch %d, seq %d) invalid or out of order", i, p.epoch, p.seq)
			}
			st.parked = append(st.parked, p)
			pe, ps, pa = p.epoch, p.seq, p.at
		}
		nc := d.count("start count", 3)
		if d.err == nil && np == 0 && nc == 0 {
			d.fail("version 2 with no parked stamps and no start counts")
		}
		pe, ps = 0, 0
		for i := 0; i < nc && d.err == nil; i++ {
			var c started
			c.epoch, c.seq = d.stampDelta("start", i, pe, ps)
			c.n = d.pos("start count")
			if d.err == nil && (c.epoch < 1 || c.seq < 1 || c.n < 1 || i > 0 && cmpStamp(c.epoch, c.seq, pe, ps) <= 0) {
				d.fail("start count %d (epoch %d, seq %d, %d) invalid or out of order", i, c.epoch, c.seq, c.n)
			}
			st.starts = append(st.starts, c)
			pe, ps = c.epoch, c.seq
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return st, nil
}

// AppendKey appends a binary encoding of k to dst, suitable as a store key: uvarint length of the
// source, the source, the stream. Distinct keys encode distinctly.
func AppendKey(dst []byte, k Key) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(k.Source)))
	dst = append(dst, k.Source...)
	return append(dst, k.Stream...)
}

// ParseKey decodes a key written by AppendKey. The error wraps ErrCorrupt.
func ParseKey(b []byte) (Key, error) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return Key{}, fmt.Errorf("%w: key of %d bytes", ErrCorrupt, len(b))
	}
	return Key{Source: string(b[w : w+int(n)]), Stream: string(b[w+int(n):])}, nil
}
