package journal

import "fmt"

// EncodeHeaders encodes entry headers (the types Entry.Headers allows) with the journal's own
// codec, so that another outbox (package pgoutbox) stores them exactly as the journal does. Nil
// or empty headers encode to nil.
func EncodeHeaders(h map[string]any) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	return appendTable(nil, h, 0)
}

// DecodeHeaders decodes what EncodeHeaders returned; every value comes back with its Go type.
func DecodeHeaders(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	d := decoder{b: b}
	t := d.table(0)
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after the headers", errDecode, len(d.b))
	}
	return t, nil
}
