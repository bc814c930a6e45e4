package consumer

// The k-way merge of the stream log's records (boltlog.go): the latest logged state of every
// stream, in key order, for Load and for the fold.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	bolt "go.etcd.io/bbolt"
)

// logRun is one record being merged.
type logRun struct {
	rest  []byte // entries not decoded yet
	stamp []byte
	ord   int // later records win
	key   []byte
	state []byte // nil: deletion
}

// advance decodes the run's next entry; false at its end.
func (r *logRun) advance() (bool, error) {
	if len(r.rest) == 0 {
		return false, nil
	}
	b := r.rest
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > uint64(len(b)-k) {
		return false, errLogRecord
	}
	key := b[k : k+int(n)]
	b = b[k+int(n):]
	sn, k := binary.Uvarint(b)
	if k <= 0 || sn > uint64(len(b)-k)+1 {
		return false, errLogRecord
	}
	b = b[k:]
	var state []byte
	if sn > 0 {
		state = b[: sn-1 : sn-1]
		b = b[sn-1:]
	}
	if r.key != nil && bytes.Compare(key, r.key) <= 0 {
		return false, fmt.Errorf("%w: keys out of order", errLogRecord)
	}
	r.key, r.state, r.rest = key, state, b
	return true, nil
}

// logMerge yields the latest logged state of every stream the log names, in key order. The
// slices it returns alias the transaction's pages.
type logMerge struct {
	runs []logRun
	heap []int32 // indexes into runs; a min-heap by (key, later record first)
}

func newLogMerge(lb *bolt.Bucket) (*logMerge, error) {
	m := &logMerge{}
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(v) < logRecHeader || v[0] != logRecVersion {
			return nil, fmt.Errorf("%w %x: version or length", errLogRecord, k)
		}
		if binary.BigEndian.Uint32(v[1:]) != crc32.Checksum(v[5:], castagnoli) {
			return nil, fmt.Errorf("%w %x: checksum mismatch", errLogRecord, k)
		}
		m.runs = append(m.runs, logRun{rest: v[logRecHeader:], stamp: v[5:logRecHeader], ord: len(m.runs)})
	}
	for i := range m.runs {
		ok, err := m.runs[i].advance()
		if err != nil {
			return nil, err
		}
		if ok {
			m.heap = append(m.heap, int32(i))
		}
	}
	for i := len(m.heap)/2 - 1; i >= 0; i-- {
		m.down(i)
	}
	return m, nil
}

func (m *logMerge) less(i, j int) bool {
	a, b := &m.runs[m.heap[i]], &m.runs[m.heap[j]]
	c := bytes.Compare(a.key, b.key)
	return c < 0 || c == 0 && a.ord > b.ord
}

func (m *logMerge) down(i int) {
	n := len(m.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		j := l
		if r := l + 1; r < n && m.less(r, l) {
			j = r
		}
		if !m.less(j, i) {
			return
		}
		m.heap[i], m.heap[j] = m.heap[j], m.heap[i]
		i = j
	}
}

// pop advances the run at the top of the heap.
func (m *logMerge) pop() error {
	ok, err := m.runs[m.heap[0]].advance()
	if err != nil {
		return err
	}
	if !ok {
		last := len(m.heap) - 1
		m.heap[0] = m.heap[last]
		m.heap = m.heap[:last]
	}
	if len(m.heap) > 0 {
		m.down(0)
	}
	return nil
}

// next returns the next stream's latest logged state (nil: deleted) and the stamp of its record;
// ok is false at the end.
func (m *logMerge) next() (key, stamp, state []byte, ok bool, err error) {
	if len(m.heap) == 0 {
		return nil, nil, nil, false, nil
	}
	top := &m.runs[m.heap[0]]
	key, stamp, state = top.key, top.stamp, top.state
	if err := m.pop(); err != nil {
		return nil, nil, nil, false, err
	}
	for len(m.heap) > 0 && bytes.Equal(m.runs[m.heap[0]].key, key) { // earlier records of the stream
		if err := m.pop(); err != nil {
			return nil, nil, nil, false, err
		}
	}
	return key, stamp, state, true, nil
}
