package amqpwire

import (
	"math/big"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/props"
)

// TestCheckExpiration: what RabbitMQ 3.10 accepts, probed against the broker (406 "invalid
// expiration" for the rest).
func TestCheckExpiration(t *testing.T) {
	for x, ok := range map[string]bool{
		"": true, "0": true, "60000": true, "+5": true, "007": true, "315360000000": true,
		"315360000001": false, "99999999999999999999": false, "abc": false, "-1": false, "1.5": false,
		" 5": false, "5 ": false, "+": false, "0x10": false, "1e3": false, "٣": false,
		"-0": true, "-000": true, "-": false, "+-1": false, "--0": false,
	} {
		if err := CheckExpiration(x); (err == nil) != ok {
			t.Errorf("CheckExpiration(%q) = %v, want ok=%v", x, err, ok)
		}
	}
}

// TestTableSize: sizes as amqp091-go encodes them (type byte, then the value; strings, byte
// slices, tables and arrays with a 4-byte length).
func TestTableSize(t *testing.T) {
	tests := []struct {
		name string
		t    map[string]any
		want int
		bad  bool
	}{
		{"empty", nil, 4, false},
		{"string", map[string]any{"ab": "xyz"}, 4 + 1 + 2 + 1 + 4 + 3, false},
		{"ints", map[string]any{"a": int8(1), "b": int16(1), "c": int32(1), "d": int64(1)}, 4 + 4*(1+1+1) + 1 + 2 + 4 + 8, false},
		{"bool nil bytes", map[string]any{"a": true, "b": nil, "c": []byte("xy")}, 4 + 3*3 + 1 + 0 + 4 + 2, false},
		{"time", map[string]any{"t": time.Unix(1, 0)}, 4 + 3 + 8, false},
		{"nested amqp.Table", map[string]any{"n": amqp.Table{"k": "v"}}, 4 + 3 + (4 + 3 + 4 + 1), false},
		{"array", map[string]any{"a": []any{"v", int32(1)}}, 4 + 3 + (4 + (1 + 4 + 1) + (1 + 4)), false},
		{"int and decimal", map[string]any{"i": 7, "d": amqp.Decimal{Scale: 2, Value: 1}}, 4 + 3 + 4 + 3 + 5, false},
		{"int beyond 32 bits", map[string]any{"i": 1 << 40}, 0, true},
		{"unsupported type", map[string]any{"u": uint64(1)}, 0, true},
		{"long key", map[string]any{strings.Repeat("k", 256): 1}, 0, true},
		{"long nested key", map[string]any{"a": []any{amqp.Table{strings.Repeat("k", 256): 1}}}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TableSize(tc.t)
			if tc.bad {
				if err == nil {
					t.Fatalf("TableSize = %d, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("TableSize = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

// FuzzCheckExpiration compares CheckExpiration with a reference written from RabbitMQ's rule
// (rabbit_basic:parse_expiration, string:to_integer on the whole string, 0 <= n <= 10 years).
func FuzzCheckExpiration(f *testing.F) {
	for _, s := range []string{"", "0", "60000", "+5", "-0", "-1", "315360000000", "315360000001", "1.5", " 5", "99999999999999999999999"} {
		f.Add(s)
	}
	digits := regexp.MustCompile(`^[+-]?[0-9]+$`)
	max := big.NewInt(MaxExpiration)
	f.Fuzz(func(t *testing.T, x string) {
		want := x == ""
		if digits.MatchString(x) {
			n, _ := new(big.Int).SetString(strings.TrimPrefix(x, "+"), 10)
			want = n.Sign() >= 0 && n.Cmp(max) <= 0
		}
		if err := CheckExpiration(x); (err == nil) != want {
			t.Fatalf("CheckExpiration(%q) = %v, want ok=%v", x, err, want)
		}
	})
}

// TestPropertiesRoundTrip: every field of props.Properties survives Publishing and FromDelivery
// (each field is set to a distinct value by reflection, so a field added later and forgotten in
// either conversion fails here).
func TestPropertiesRoundTrip(t *testing.T) {
	var p props.Properties
	v := reflect.ValueOf(&p).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(v.Type().Field(i).Name + "-value")
		case reflect.Uint8:
			f.SetUint(uint64(i + 1))
		case reflect.Struct: // time.Time
			f.Set(reflect.ValueOf(time.Unix(1700000000+int64(i), 0).UTC()))
		default:
			t.Fatalf("field %s: kind %s not covered by this test", v.Type().Field(i).Name, f.Kind())
		}
	}
	h := amqp.Table{"k": "v"}
	pub := Publishing(&p, h, []byte("body"))
	if string(pub.Body) != "body" || pub.Headers["k"] != "v" {
		t.Fatalf("body or headers lost: %+v", pub)
	}
	d := amqp.Delivery{
		ContentType: pub.ContentType, ContentEncoding: pub.ContentEncoding, DeliveryMode: pub.DeliveryMode,
		Priority: pub.Priority, CorrelationId: pub.CorrelationId, ReplyTo: pub.ReplyTo, Expiration: pub.Expiration,
		MessageId: pub.MessageId, Timestamp: pub.Timestamp, Type: pub.Type, UserId: pub.UserId, AppId: pub.AppId,
	}
	if got := FromDelivery(&d); got != p {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, p)
	}
}
