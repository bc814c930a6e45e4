package journal

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"
)

func TestHeadersCodecRoundTrip(t *testing.T) {
	at := time.Unix(1700000000, 123456789).UTC()
	for _, tc := range []struct {
		name string
		in   map[string]any
		want map[string]any // nil: the same as in
	}{
		{"nil", nil, nil},
		{"scalars", map[string]any{
			"nil": nil, "f": false, "t": true, "i8": int8(-8), "i16": int16(math.MinInt16), "i32": int32(math.MaxInt32),
			"i64": int64(math.MinInt64), "int": int(-1 << 31), "u8": uint8(255), "u16": uint16(math.MaxUint16),
			"u32": uint32(math.MaxUint32), "f32": float32(1.5), "f64": math.Inf(-1), "s": "héllo", "empty": "",
			"b": []byte{0, 1, 2}, "nob": []byte{}, "time": at, "zero time": time.Time{},
		}, nil},
		{"nested", map[string]any{"t": map[string]any{"a": []any{int64(1), "x", map[string]any{"deep": true}}}, "arr": []any{}}, nil},
		{"named types", map[string]any{"t": namedTable{"k": "v"}}, map[string]any{"t": map[string]any{"k": "v"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeHeaders(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.in) == 0 && b != nil {
				t.Fatalf("empty headers encode to %x, want nil", b)
			}
			got, err := DecodeHeaders(b)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == nil {
				want = tc.in
			}
			if len(want) == 0 {
				if got != nil {
					t.Fatalf("decoded %v, want nil", got)
				}
				return
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded\n %#v\nwant\n %#v", got, want)
			}
		})
	}
}

func TestHeadersCodecRefusals(t *testing.T) {
	deep := map[string]any{}
	cur := deep
	for range maxHeaderDepth + 1 {
		next := map[string]any{}
		cur["n"] = next
		cur = next
	}
	for _, tc := range []struct {
		name string
		in   map[string]any
	}{
		{"unsupported type", map[string]any{"u64": uint64(1)}},
		{"unsupported in an array", map[string]any{"a": []any{struct{}{}}}},
		{"too deep", deep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := EncodeHeaders(tc.in); !errors.Is(err, ErrInvalidEntry) {
				t.Fatalf("EncodeHeaders: %v, want ErrInvalidEntry", err)
			}
		})
	}
	good, err := EncodeHeaders(map[string]any{"s": "value", "f": 1.5})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"trailing bytes", append(append([]byte{}, good...), 0)},
		{"truncated", good[:len(good)-1]},
		{"unknown tag", []byte{1, 1, 'k', 0xff}},
		{"count beyond the input", []byte{100}},
		{"int16 out of range", []byte{1, 1, 'k', tagInt16, 0x80, 0x80, 0x08}},
		{"nanoseconds out of range", []byte{1, 1, 'k', tagTime, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h, err := DecodeHeaders(tc.b); !errors.Is(err, errDecode) {
				t.Fatalf("DecodeHeaders(%x) = %v, %v; want errDecode", tc.b, h, err)
			}
		})
	}
}

// FuzzDecodeHeaders: any input decodes without panicking; what decodes re-encodes to headers that
// decode to the same values.
func FuzzDecodeHeaders(f *testing.F) {
	for _, h := range []map[string]any{
		{"s": "x", "n": int64(-3), "b": []byte("raw")},
		{"t": map[string]any{"a": []any{int32(7), 2.5, nil, true}}, "time": time.Unix(5, 6).UTC()},
		{"u": uint32(9), "f": float32(-0.5), "i": int(42)},
	} {
		b, err := EncodeHeaders(h)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 'k', tagArray, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeaders(b)
		if err != nil {
			return
		}
		again, err := EncodeHeaders(h)
		if err != nil {
			t.Fatalf("decoded headers do not encode: %v (%#v)", err, h)
		}
		h2, err := DecodeHeaders(again)
		if err != nil {
			t.Fatalf("re-encoded headers do not decode: %v", err)
		}
		if len(h) == 0 && len(h2) == 0 {
			return // an empty table (a count of 0) encodes to nil: the same headers
		}
		// %#v prints maps in key order and NaN as NaN, where DeepEqual would fail on NaN.
		if a, b := fmt.Sprintf("%#v", h), fmt.Sprintf("%#v", h2); a != b {
			t.Fatalf("round trip changed the headers:\n %s\n %s", a, b)
		}
	})
}
