package journal

import (
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"time"
)

// Header value tags. Every supported Go type has its own tag so that values
// decode to exactly the type they were appended with.
const (
	tagNil byte = iota
	tagFalse
	tagTrue
	tagInt8
	tagInt16
	tagInt32
	tagInt64
	tagInt
	tagUint8
	tagUint16
	tagUint32
	tagFloat32
	tagFloat64
	tagString
	tagBytes
	tagTime
	tagTable
	tagArray
)

var (
	tableType = reflect.TypeFor[map[string]any]()
	arrayType = reflect.TypeFor[[]any]()
)

// appendTable encodes a header table: uvarint count, then key/value pairs.
// Keys are written in map order; decoding does not depend on it.
func appendTable(dst []byte, t map[string]any, depth int) ([]byte, error) {
	if depth >= maxHeaderDepth {
		return nil, fmt.Errorf("%w: headers nested deeper than %d", ErrInvalidEntry, maxHeaderDepth)
	}
	dst = binary.AppendUvarint(dst, uint64(len(t)))
	var err error
	for k, v := range t {
		dst = appendString(dst, k)
		if dst, err = appendValue(dst, k, v, depth+1); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

func appendValue(dst []byte, key string, v any, depth int) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(dst, tagNil), nil
	case bool:
		if v {
			return append(dst, tagTrue), nil
		}
		return append(dst, tagFalse), nil
	case int8:
		return append(dst, tagInt8, byte(v)), nil
	case int16:
		return binary.AppendVarint(append(dst, tagInt16), int64(v)), nil
	case int32:
		return binary.AppendVarint(append(dst, tagInt32), int64(v)), nil
	case int64:
		return binary.AppendVarint(append(dst, tagInt64), v), nil
	case int:
		return binary.AppendVarint(append(dst, tagInt), int64(v)), nil
	case uint8:
		return append(dst, tagUint8, v), nil
	case uint16:
		return binary.AppendUvarint(append(dst, tagUint16), uint64(v)), nil
	case uint32:
		return binary.AppendUvarint(append(dst, tagUint32), uint64(v)), nil
	case float32:
		return binary.BigEndian.AppendUint32(append(dst, tagFloat32), math.Float32bits(v)), nil
	case float64:
		return binary.BigEndian.AppendUint64(append(dst, tagFloat64), math.Float64bits(v)), nil
	case string:
		return appendString(append(dst, tagString), v), nil
	case []byte:
		dst = binary.AppendUvarint(append(dst, tagBytes), uint64(len(v)))
		return append(dst, v...), nil
	case time.Time:
		return appendTime(append(dst, tagTime), v), nil
	case map[string]any:
		return appendTable(append(dst, tagTable), v, depth)
	case []any:
		return appendArray(append(dst, tagArray), key, v, depth)
	}
	// Named types with the same shape, such as amqp091's Table
	// (map[string]interface{}), are stored as their underlying type.
	rv := reflect.ValueOf(v)
	switch {
	case rv.Type().ConvertibleTo(tableType) && rv.Kind() == reflect.Map:
		return appendTable(append(dst, tagTable), rv.Convert(tableType).Interface().(map[string]any), depth)
	case rv.Type().ConvertibleTo(arrayType) && rv.Kind() == reflect.Slice:
		return appendArray(append(dst, tagArray), key, rv.Convert(arrayType).Interface().([]any), depth)
	}
	return nil, fmt.Errorf("%w: header %q has unsupported type %T", ErrInvalidEntry, key, v)
}

func appendArray(dst []byte, key string, a []any, depth int) ([]byte, error) {
	if depth >= maxHeaderDepth {
		return nil, fmt.Errorf("%w: headers nested deeper than %d", ErrInvalidEntry, maxHeaderDepth)
	}
	dst = binary.AppendUvarint(dst, uint64(len(a)))
	var err error
	for _, v := range a {
		if dst, err = appendValue(dst, key, v, depth+1); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

func (d *decoder) table(depth int) map[string]any {
	if depth >= maxHeaderDepth {
		d.fail("headers nested too deep")
		return nil
	}
	n := d.uvarint()
	// Every pair takes at least two bytes: bound n before allocating.
	if d.err != nil || n > uint64(len(d.b))/2 {
		d.fail("bad table length")
		return nil
	}
	t := make(map[string]any, min(n, 1024)) // n is bounded by the input, not trusted for capacity
	for range n {
		k := d.string()
		v := d.value(depth + 1)
		if d.err != nil {
			return nil
		}
		t[k] = v
	}
	return t
}

func (d *decoder) array(depth int) []any {
	if depth >= maxHeaderDepth {
		d.fail("headers nested too deep")
		return nil
	}
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)) {
		d.fail("bad array length")
		return nil
	}
	a := make([]any, 0, min(n, 1024))
	for range n {
		v := d.value(depth + 1)
		if d.err != nil {
			return nil
		}
		a = append(a, v)
	}
	return a
}

func (d *decoder) value(depth int) any {
	switch tag := d.byte(); tag {
	case tagNil:
		return nil
	case tagFalse:
		return false
	case tagTrue:
		return true
	case tagInt8:
		return int8(d.byte())
	case tagInt16:
		return int16(d.rangedVarint(math.MinInt16, math.MaxInt16))
	case tagInt32:
		return int32(d.rangedVarint(math.MinInt32, math.MaxInt32))
	case tagInt64:
		return d.varint()
	case tagInt:
		return int(d.rangedVarint(math.MinInt, math.MaxInt))
	case tagUint8:
		return d.byte()
	case tagUint16:
		return uint16(d.rangedUvarint(math.MaxUint16))
	case tagUint32:
		return uint32(d.rangedUvarint(math.MaxUint32))
	case tagFloat32:
		return math.Float32frombits(binary.BigEndian.Uint32(d.fixedOrZero(4)))
	case tagFloat64:
		return math.Float64frombits(binary.BigEndian.Uint64(d.fixedOrZero(8)))
	case tagString:
		return d.string()
	case tagBytes:
		b := d.raw()
		return append([]byte{}, b...)
	case tagTime:
		return d.time()
	case tagTable:
		return d.table(depth)
	case tagArray:
		return d.array(depth)
	default:
		d.fail(fmt.Sprintf("unknown header tag %d", tag))
		return nil
	}
}

func (d *decoder) fixedOrZero(n int) []byte {
	if b := d.fixed(n); b != nil {
		return b
	}
	return make([]byte, n)
}

func (d *decoder) rangedVarint(lo, hi int64) int64 {
	v := d.varint()
	if v < lo || v > hi {
		d.fail("integer out of range")
		return 0
	}
	return v
}

func (d *decoder) rangedUvarint(hi uint64) uint64 {
	v := d.uvarint()
	if v > hi {
		d.fail("integer out of range")
		return 0
	}
	return v
}
