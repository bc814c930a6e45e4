package protocol

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// vectors is testdata/v2-vectors.json.
type vectors struct {
	Valid []struct {
		Note      string `json:"note"`
		SourceHex string `json:"source_hex"`
		StreamHex string `json:"stream_hex"`
		Epoch     string `json:"epoch"`
		Seq       string `json:"seq"`
		Wire      string `json:"wire"`
	} `json:"valid"`
	Invalid []struct {
		Wire string `json:"wire"`
		Why  string `json:"why"`
	} `json:"invalid"`
	NotStamps []string `json:"not_stamps"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	b, err := os.ReadFile("testdata/v2-vectors.json")
	require.NoError(t, err)
	var v vectors
	require.NoError(t, json.Unmarshal(b, &v))
	require.NotEmpty(t, v.Valid)
	require.NotEmpty(t, v.Invalid)
	return v
}

// The Go encoder and decoder agree byte for byte with testdata/v2-vectors.json, which an
// independent implementation (testdata/gen-v2-vectors.py) wrote from docs/PROTOCOL.md.
func TestVectors(t *testing.T) {
	v := loadVectors(t)
	for _, tc := range v.Valid {
		t.Run("valid/"+tc.Note, func(t *testing.T) {
			src, err := hex.DecodeString(tc.SourceHex)
			require.NoError(t, err)
			stream, err := hex.DecodeString(tc.StreamHex)
			require.NoError(t, err)
			epoch, err := strconv.ParseInt(tc.Epoch, 10, 64)
			require.NoError(t, err)
			seq, err := strconv.ParseInt(tc.Seq, 10, 64)
			require.NoError(t, err)
			s := Stamp{Source: string(src), Epoch: epoch, Stream: string(stream), Seq: seq}
			id, err := s.MessageID()
			require.NoError(t, err)
			require.Equal(t, tc.Wire, id)
			require.LessOrEqual(t, len(id), MaxLen)
			back, err := ParseMessageID(tc.Wire)
			require.NoError(t, err)
			require.Equal(t, s, back)
			got, ver, err := Decode(tc.Wire, nil)
			require.NoError(t, err)
			require.Equal(t, V2, ver)
			require.Equal(t, s, got)
		})
	}
	for _, tc := range v.Invalid {
		t.Run("invalid/"+tc.Why, func(t *testing.T) {
			_, err := ParseMessageID(tc.Wire)
			require.ErrorIs(t, err, ErrMalformed, "%q", tc.Wire)
			_, _, err = Decode(tc.Wire, nil)
			require.ErrorIs(t, err, ErrMalformed)
			_, _, err = Decode("app-id", amqp.Table{HeaderStamp: tc.Wire})
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
	for _, id := range v.NotStamps {
		t.Run("not a stamp/"+id, func(t *testing.T) {
			_, err := ParseMessageID(id)
			require.ErrorIs(t, err, ErrNoStamp)
			_, _, err = Decode(id, amqp.Table{"x": "y"})
			require.ErrorIs(t, err, ErrNoStamp)
		})
	}
}

func TestMessageIDLimits(t *testing.T) {
	ok := Stamp{Source: strings.Repeat("s", MaxSourceLen), Epoch: 1<<63 - 1, Stream: strings.Repeat("t", MaxStreamLen), Seq: 1<<63 - 1}
	id, err := ok.MessageID()
	require.NoError(t, err)
	require.Len(t, id, MaxLen, "the limits add up to exactly one short string")

	tests := []struct {
		name string
		s    Stamp
		err  error
		msg  string
	}{
		{"source one over", Stamp{Source: strings.Repeat("s", MaxSourceLen+1), Epoch: 1, Stream: "t", Seq: 1}, ErrTooLong, "MaxSourceLen"},
		{"source over once escaped", Stamp{Source: strings.Repeat(":", 27), Epoch: 1, Stream: "t", Seq: 1}, ErrTooLong, "81 bytes escaped"},
		{"stream one over", Stamp{Source: "s", Epoch: 1, Stream: strings.Repeat("t", MaxStreamLen+1), Seq: 1}, ErrTooLong, "MaxStreamLen"},
		{"stream over once escaped", Stamp{Source: "s", Epoch: 1, Stream: strings.Repeat("é", 22), Seq: 1}, ErrTooLong, "132 bytes escaped"},
		{"empty source", Stamp{Epoch: 1, Stream: "t", Seq: 1}, ErrMalformed, "source is empty"},
		{"empty stream", Stamp{Source: "s", Epoch: 1, Seq: 1}, ErrMalformed, "stream is empty"},
		{"zero epoch", Stamp{Source: "s", Stream: "t", Seq: 1}, ErrMalformed, "epoch is 0"},
		{"negative seq", Stamp{Source: "s", Epoch: 1, Stream: "t", Seq: -3}, ErrMalformed, "seq is -3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.MessageID()
			require.ErrorIs(t, err, tc.err)
			require.ErrorContains(t, err, tc.msg)
		})
	}
}

func TestDecodePrecedence(t *testing.T) {
	s := Stamp{Source: "orders", Epoch: 7, Stream: "ex/key", Seq: 42}
	id, _ := s.MessageID()
	other := s
	other.Seq = 43
	otherID, _ := other.MessageID()
	tests := []struct {
		name  string
		id    string
		h     amqp.Table
		want  Stamp
		ver   Version
		err   error
		about string
	}{
		{"v2 in message-id", id, nil, s, V2, nil, ""},
		{"v2 in rk-stamp, application message-id kept", "order-17", amqp.Table{HeaderStamp: id}, s, V2, nil, ""},
		{"rk-stamp as bytes", "", amqp.Table{HeaderStamp: []byte(id)}, s, V2, nil, ""},
		{"v1 headers", "", s.ApplyV1(nil), s, V1, nil, ""},
		{"v1 with its informational message-id", "orders/7/ex/key/42", s.ApplyV1(nil), s, V1, nil, ""},
		{"v1 bytes and small ints", "", amqp.Table{HeaderSource: []byte("orders"), HeaderEpoch: int32(7), HeaderStream: []byte("ex/key"), HeaderSeq: uint8(42)}, s, V1, nil, ""},
		{"v1 and v2 agree", id, s.ApplyV1(nil), s, V2, nil, ""},
		{"all three agree", id, s.ApplyV1(amqp.Table{HeaderStamp: id}), s, V2, nil, ""},
		{"v1 and v2 disagree", otherID, s.ApplyV1(nil), Stamp{}, 0, ErrMalformed, "disagree"},
		{"message-id and rk-stamp disagree", otherID, amqp.Table{HeaderStamp: id}, Stamp{}, 0, ErrMalformed, "disagree"},
		{"good v1, broken v2", "rk2:orders:7:ex/key:042", s.ApplyV1(nil), Stamp{}, 0, ErrMalformed, "leading zero"},
		{"good v2, broken v1", id, amqp.Table{HeaderSeq: "42"}, Stamp{}, 0, ErrMalformed, "rk-source is missing"},
		{"rk-stamp not a stamp", "", amqp.Table{HeaderStamp: "orders/7"}, Stamp{}, 0, ErrMalformed, "does not start with"},
		{"rk-stamp ill-typed", "", amqp.Table{HeaderStamp: int64(5)}, Stamp{}, 0, ErrMalformed, "type int64"},
		{"unknown version in message-id", "rk9:a:1:b:1", nil, Stamp{}, 0, ErrMalformed, "rk9 is not supported"},
		{"nothing", "", nil, Stamp{}, 0, ErrNoStamp, ""},
		{"application message-id only", "6f1c2a9e-1d3b-4c6a-9a53-0f6c2b5e8d41", amqp.Table{"trace": "x"}, Stamp{}, 0, ErrNoStamp, ""},
		{"missing v1 seq", "", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(1), HeaderStream: "s"}, Stamp{}, 0, ErrMalformed, "rk-seq is missing"},
		{"v1 seq as string", "", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(1), HeaderStream: "s", HeaderSeq: "1"}, Stamp{}, 0, ErrMalformed, "rk-seq has type string"},
		{"v1 negative seq", "", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(1), HeaderStream: "s", HeaderSeq: int64(-1)}, Stamp{}, 0, ErrMalformed, "seq is -1"},
		{"v1 zero epoch", "", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(0), HeaderStream: "s", HeaderSeq: int64(1)}, Stamp{}, 0, ErrMalformed, "epoch is 0"},
		{"v1 empty source", "", amqp.Table{HeaderSource: "", HeaderEpoch: int64(1), HeaderStream: "s", HeaderSeq: int64(1)}, Stamp{}, 0, ErrMalformed, "source is empty"},
		{"v1 float epoch", "", amqp.Table{HeaderSource: "a", HeaderEpoch: 1.5, HeaderStream: "s", HeaderSeq: int64(1)}, Stamp{}, 0, ErrMalformed, "float64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ver, err := Decode(tc.id, tc.h)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.ErrorContains(t, err, tc.about)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.ver, ver)
		})
	}
}

func TestDefaultStreamIsInjective(t *testing.T) {
	require.NotEqual(t, DefaultStream("a/b", "c"), DefaultStream("a", "b/c"))
	require.NotEqual(t, DefaultStream("a%2Fb", "c"), DefaultStream("a/b", "c"))
	require.Equal(t, "orders/eu.created", DefaultStream("orders", "eu.created"))
	require.Equal(t, "/q", DefaultStream("", "q"))
}

func TestStringIsTheWireForm(t *testing.T) {
	s := Stamp{Source: "svc", Epoch: 9, Stream: DefaultStream("orders/x", "q"), Seq: 3}
	id, err := s.MessageID()
	require.NoError(t, err)
	require.Equal(t, "rk2:svc:9:orders%252Fx/q:3", id)
	require.Equal(t, id, s.String())
}

// FuzzParseMessageID: no input panics; whatever decodes re-encodes to exactly the input
// (canonical: one stamp, one string).
func FuzzParseMessageID(f *testing.F) {
	for _, s := range []string{"rk2:a:1:b:1", "rk2:%00:9223372036854775807:%C3%A9:1", "rk2:a:01:b:1", "rk2:a:1:b%:1", "rk3:x", "rk2:a:1:b:1:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		s, err := ParseMessageID(id)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNoStamp) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if s.Validate() != nil {
			t.Fatalf("decoded an invalid stamp %+v from %q", s, id)
		}
		if back := string(s.AppendEncoded(nil)); back != id {
			t.Fatalf("not canonical: %q decodes to %+v, which encodes to %q", id, s, back)
		}
	})
}

// FuzzRoundTrip: decode(encode(s)) == s for every valid stamp that fits.
func FuzzRoundTrip(f *testing.F) {
	f.Add("orders", int64(1), "s", int64(1))
	f.Add("a:b%c", int64(1<<62), "\x00\xff/é", int64(1<<63-1))
	f.Fuzz(func(t *testing.T, src string, epoch int64, stream string, seq int64) {
		s := Stamp{Source: src, Epoch: epoch, Stream: stream, Seq: seq}
		id, err := s.MessageID()
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLong) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if s.Validate() == nil && CheckSource(src) == nil && CheckStream(stream) == nil {
				t.Fatalf("refused a valid stamp %+v: %v", s, err)
			}
			return
		}
		if len(id) > MaxLen {
			t.Fatalf("%d bytes", len(id))
		}
		back, ver, err := Decode(id, nil)
		if err != nil || back != s || ver != V2 {
			t.Fatalf("round trip of %+v: %+v %v %v", s, back, ver, err)
		}
	})
}

// FuzzDecode: Decode never panics on any mix of message-id, rk-stamp and v1 headers, and what it
// accepts is a valid stamp that every present form agrees on.
func FuzzDecode(f *testing.F) {
	f.Add("rk2:a:1:b:1", "orders", int64(1), "s", int64(1), uint8(0))
	f.Add("", "", int64(-5), "", int64(0), uint8(3))
	f.Fuzz(func(t *testing.T, id, src string, epoch int64, stream string, seq int64, shape uint8) {
		h := amqp.Table{}
		if shape&1 == 0 {
			h[HeaderSource] = src
		} else {
			h[HeaderSource] = []byte(src)
		}
		if shape&2 == 0 {
			h[HeaderEpoch] = epoch
		} else {
			h[HeaderEpoch] = float64(epoch)
		}
		if shape&4 == 0 {
			h[HeaderStream] = stream
		}
		if shape&8 == 0 {
			h[HeaderSeq] = int32(seq)
		}
		if shape&16 != 0 {
			h = amqp.Table{}
		}
		if shape&32 != 0 {
			h[HeaderStamp] = id
		}
		s, _, err := Decode(id, h)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrNoStamp) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if s.Validate() != nil {
			t.Fatalf("decoded %+v", s)
		}
		if v1, err := DecodeV1(h); err == nil && v1 != s {
			t.Fatalf("accepted %+v while the v1 headers say %+v", s, v1)
		}
	})
}
