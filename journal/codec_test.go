package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// namedTable has the shape of amqp091's Table.
type namedTable map[string]interface{}

func fullEntry() *Entry {
	ts := time.Date(2026, 11, 26, 12, 0, 1, 5, time.UTC)
	return &Entry{
		ID: 42, Stream: "orders/eu", Seq: 7, Exchange: "ex", RoutingKey: "rk", Mandatory: true,
		Properties: Properties{
			ContentType: "application/json", ContentEncoding: "gzip", DeliveryMode: 2, Priority: 9,
			CorrelationID: "c", ReplyTo: "r", Expiration: "60000", MessageID: "m", Timestamp: ts,
			Type: "t", UserID: "u", AppID: "a",
		},
		Headers: map[string]any{
			"nil": nil, "t": true, "f": false, "i8": int8(-8), "i16": int16(-16), "i32": int32(-32),
			"i64": int64(math.MinInt64), "int": 12345, "u8": uint8(200), "u16": uint16(65535), "u32": uint32(math.MaxUint32),
			"f32": float32(1.5), "f64": math.Inf(-1), "s": "str", "b": []byte{0, 1, 2}, "time": ts,
			"table": map[string]any{"x": int32(1), "nested": []any{"a", int64(2), map[string]any{}}},
			"arr":   []any{}, "empty-bytes": []byte{},
		},
		Body:        []byte(`{"k":"v"}`),
		Created:     ts.Add(time.Second),
		Attempts:    3,
		LastOutcome: OutcomeUnknown,
		LastError:   "connection lost",
	}
}

func TestEntryRoundTrip(t *testing.T) {
	cases := map[string]*Entry{
		"full":           fullEntry(),
		"minimal":        {Stream: "s"},
		"empty headers":  {Stream: "s", Headers: map[string]any{}, Body: []byte{}},
		"zero timestamp": {Stream: "s", Created: time.Unix(0, 0).UTC()},
		"far future":     {Stream: "s", Created: time.Date(9999, 1, 1, 0, 0, 0, 999999999, time.UTC)},
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			enc, _, err := encodeEntry(nil, e, e.Created)
			require.NoError(t, err)
			sealEntry(enc, e.ID, e.Seq)
			got, err := decodeEntry(enc)
			require.NoError(t, err)
			want := *e
			if len(want.Body) == 0 {
				want.Body = nil
			}
			assert.Equal(t, &want, got)
		})
	}
}

func TestNamedTableStoredAsMap(t *testing.T) {
	e := &Entry{Stream: "s", Headers: map[string]any{"t": namedTable{"k": "v"}, "a": []interface{}{namedTable{}}}}
	enc, _, err := encodeEntry(nil, e, time.Time{})
	require.NoError(t, err)
	got, err := decodeEntry(enc)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"k": "v"}, got.Headers["t"])
	assert.Equal(t, []any{map[string]any{}}, got.Headers["a"])
}

func TestEncodeRejectsBadHeaders(t *testing.T) {
	deep := map[string]any{}
	cur := deep
	for range 40 {
		next := map[string]any{}
		cur["n"] = next
		cur = next
	}
	cases := map[string]map[string]any{
		"uint64":   {"x": uint64(1)},
		"struct":   {"x": struct{}{}},
		"pointer":  {"x": new(int)},
		"too deep": deep,
		"in array": {"x": []any{complex(1, 2)}},
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := encodeEntry(nil, &Entry{Stream: "s", Headers: h}, time.Time{})
			assert.ErrorIs(t, err, ErrInvalidEntry)
		})
	}
}

// TestDecodeRejectsDamage: every truncation and every single-bit flip of a
// valid encoding is an error, never a panic or a silently different entry.
func TestDecodeRejectsDamage(t *testing.T) {
	e := fullEntry()
	enc, _, err := encodeEntry(nil, e, e.Created)
	require.NoError(t, err)
	for n := 0; n < len(enc); n++ {
		_, err := decodeEntry(enc[:n])
		require.Error(t, err, "truncated to %d", n)
		require.True(t, errors.Is(err, errDecode))
	}
	for i := range enc {
		for bit := range 8 {
			b := append([]byte(nil), enc...)
			b[i] ^= 1 << bit
			_, err := decodeEntry(b)
			require.Error(t, err, "flip byte %d bit %d", i, bit)
		}
	}
	_, err = decodeEntry(append(append([]byte(nil), enc...), 0))
	assert.Error(t, err, "trailing byte")
}

func TestParkedRecordRoundTrip(t *testing.T) {
	e := fullEntry()
	enc, _, err := encodeEntry(nil, e, e.Created)
	require.NoError(t, err)
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	rec := encodeParked(enc, "NO_ROUTE "+strings.Repeat("x", 300), at)
	pe, err := decodeParked(rec)
	require.NoError(t, err)
	assert.Equal(t, at, pe.ParkedAt)
	assert.Equal(t, e.Body, pe.Body)
	rec[len(rec)-1] ^= 1
	_, err = decodeParked(rec)
	assert.Error(t, err)
}

// FuzzDecodeEntry: the decoder never panics, and whatever it accepts
// re-encodes to something that decodes to the same entry.
func FuzzDecodeEntry(f *testing.F) {
	for _, e := range []*Entry{fullEntry(), {Stream: "s"}, {Stream: "s", Headers: map[string]any{"a": []any{int8(1)}}}} {
		enc, _, err := encodeEntry(nil, e, e.Created)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
		f.Add(enc[:len(enc)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Most random inputs fail the checksum; also try with a fixed-up one so
		// the fuzzer exercises the field decoder.
		fixed := append([]byte(nil), b...)
		if len(fixed) >= offVar {
			fixed[0] = entryVersion
			binary.BigEndian.PutUint32(fixed[offCRC:], crc32.Checksum(fixed[offID:], castagnoli))
		}
		for _, in := range [][]byte{b, fixed} {
			// The cache's decoder (no checksum, Body aliased) never panics either, and agrees with
			// the checked decoder on every input that passes the checksum.
			ce, cerr := decodeCached(in)
			if cerr != nil && !errors.Is(cerr, errDecode) {
				t.Fatalf("cached: error not wrapping errDecode: %v", cerr)
			}
			e, err := decodeEntry(in)
			if err == nil && (cerr != nil || fmt.Sprintf("%#v", e) != fmt.Sprintf("%#v", ce)) {
				t.Fatalf("cached decode differs: %v\n%#v\n%#v", cerr, e, ce)
			}
			if err != nil {
				if !errors.Is(err, errDecode) {
					t.Fatalf("error not wrapping errDecode: %v", err)
				}
				continue
			}
			enc, _, err := encodeEntry(nil, e, e.Created)
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			e2, err := decodeEntry(enc)
			if err != nil {
				t.Fatalf("decode re-encoded: %v", err)
			}
			// %#v prints maps sorted and NaN equal to NaN.
			if fmt.Sprintf("%#v", e) != fmt.Sprintf("%#v", e2) {
				t.Fatalf("round trip differs:\n%#v\n%#v", e, e2)
			}
		}
	})
}

// FuzzDecodeParked: parked records never panic the decoder.
func FuzzDecodeParked(f *testing.F) {
	e := fullEntry()
	enc, _, err := encodeEntry(nil, e, e.Created)
	if err != nil {
		f.Fatal(err)
	}
	rec := encodeParked(enc, "reason", e.Created)
	f.Add(rec)
	f.Add(rec[:len(rec)/3])
	f.Add([]byte{parkedVersion, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fixed := append([]byte(nil), b...)
		if len(fixed) >= parkedFixedLen {
			fixed[0] = parkedVersion
			binary.BigEndian.PutUint32(fixed[offCRC:], crc32.Checksum(fixed[parkedFixedLen:], castagnoli))
		}
		for _, in := range [][]byte{b, fixed} {
			if _, err := decodeParked(in); err != nil && !errors.Is(err, errDecode) {
				t.Fatalf("error not wrapping errDecode: %v", err)
			}
		}
	})
}
