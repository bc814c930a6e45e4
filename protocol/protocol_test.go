package protocol

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

func TestDecode(t *testing.T) {
	good := Stamp{Source: "orders", Epoch: 7, Stream: "ex/key", Seq: 42}
	tests := []struct {
		name string
		h    amqp.Table
		want Stamp
		err  error
	}{
		{"round trip", good.Apply(nil), good, nil},
		{"nil table", nil, Stamp{}, ErrNoStamp},
		{"foreign headers only", amqp.Table{"x-death": "x"}, Stamp{}, ErrNoStamp},
		{"bytes and small ints", amqp.Table{HeaderSource: []byte("orders"), HeaderEpoch: int32(7), HeaderStream: []byte("ex/key"), HeaderSeq: uint8(42)}, good, nil},
		{"missing seq", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(1), HeaderStream: "s"}, Stamp{}, ErrMalformed},
		{"seq as string", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(1), HeaderStream: "s", HeaderSeq: "1"}, Stamp{}, ErrMalformed},
		{"negative seq", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(1), HeaderStream: "s", HeaderSeq: int64(-1)}, Stamp{}, ErrMalformed},
		{"zero epoch", amqp.Table{HeaderSource: "a", HeaderEpoch: int64(0), HeaderStream: "s", HeaderSeq: int64(1)}, Stamp{}, ErrMalformed},
		{"empty source", amqp.Table{HeaderSource: "", HeaderEpoch: int64(1), HeaderStream: "s", HeaderSeq: int64(1)}, Stamp{}, ErrMalformed},
		{"float epoch", amqp.Table{HeaderSource: "a", HeaderEpoch: 1.5, HeaderStream: "s", HeaderSeq: int64(1)}, Stamp{}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.h)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestDefaultStreamIsInjective(t *testing.T) {
	require.NotEqual(t, DefaultStream("a/b", "c"), DefaultStream("a", "b/c"))
	require.NotEqual(t, DefaultStream("a%2Fb", "c"), DefaultStream("a/b", "c"))
	require.Equal(t, "orders/eu.created", DefaultStream("orders", "eu.created"))
	require.Equal(t, "/q", DefaultStream("", "q"))
}

func TestMessageID(t *testing.T) {
	require.Equal(t, "svc/9/orders%2Fx/q/3", Stamp{Source: "svc", Epoch: 9, Stream: DefaultStream("orders/x", "q"), Seq: 3}.MessageID())
}

func FuzzDecode(f *testing.F) {
	f.Add("orders", int64(1), "s", int64(1), uint8(0))
	f.Add("", int64(-5), "", int64(0), uint8(3))
	f.Fuzz(func(t *testing.T, src string, epoch int64, stream string, seq int64, shape uint8) {
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
		s, err := Decode(h)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if s.Validate() != nil || s.Source != src || s.Stream != stream || s.Epoch != epoch {
			t.Fatalf("decoded %+v from %v", s, h)
		}
		back, err := Decode(s.Apply(nil))
		if err != nil || back != s {
			t.Fatalf("round trip: %+v %v", back, err)
		}
	})
}

func TestMessageIDBounded(t *testing.T) {
	long := strings.Repeat("a", 300)
	multi := strings.Repeat("é", 150) // 2 bytes each, starting at odd offsets after "s/1/a": byte 200 is not a rune start
	tests := []struct {
		name string
		s    Stamp
		full bool
	}{
		{"short", Stamp{Source: "svc", Epoch: 9, Stream: "s", Seq: 3}, true},
		{"exactly 255", Stamp{Source: strings.Repeat("x", 255-len("/1//1")), Epoch: 1, Stream: "", Seq: 1}, true},
		{"long stream", Stamp{Source: "svc", Epoch: 9, Stream: long, Seq: 3}, false},
		{"long source", Stamp{Source: long, Epoch: 1<<62 + 5, Stream: long, Seq: 1<<62 + 7}, false},
		{"multi-byte", Stamp{Source: "s", Epoch: 1, Stream: "a" + multi, Seq: 1}, false},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := tc.s.MessageID()
			require.LessOrEqual(t, len(id), MaxMessageID)
			require.True(t, utf8.ValidString(id), id)
			if tc.full {
				require.Equal(t, tc.s.String(), id)
				return
			}
			require.True(t, strings.HasPrefix(tc.s.String(), id[:strings.LastIndexByte(id, '~')]), "keeps a prefix")
			require.Regexp(t, `~[0-9a-f]{32}$`, id)
			require.False(t, seen[id])
			seen[id] = true
			next := tc.s
			next.Seq++
			require.NotEqual(t, id, next.MessageID(), "another seq gives another id")
		})
	}
}
