package journal

import (
	"math"
	"sort"
	"sync"
)

// tailCache holds the encodings of recently appended pending entries so Read
// near the end of the journal needs no bbolt transaction. Invariant: every
// pending entry with ID >= lo is in items (removed ones have nil data).
type tailCache struct {
	mu    sync.Mutex
	limit int
	lo    uint64
	items []cacheItem // ascending id; items[head:] are live
	head  int
	bytes int
}

type cacheItem struct {
	id   uint64
	data []byte // immutable once stored; nil when removed
}

func (c *tailCache) init(nextID uint64, limit int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limit, c.lo, c.items, c.head, c.bytes = limit, nextID, nil, 0, 0
	if limit < 0 {
		c.lo = math.MaxUint64
	}
}

func (c *tailCache) find(id uint64) int {
	live := c.items[c.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i].id >= id })
	return c.head + i
}

// apply replays a committed transaction's changes.
func (c *tailCache) apply(ops []cacheOp) {
	if len(ops) == 0 || c.limit < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, op := range ops {
		switch op.kind {
		case opAppend:
			c.items = append(c.items, cacheItem{id: op.id, data: op.data})
			c.bytes += len(op.data)
		case opDelete, opAttempt:
			if op.id < c.lo {
				continue
			}
			i := c.find(op.id)
			if i == len(c.items) || c.items[i].id != op.id || c.items[i].data == nil {
				continue
			}
			c.bytes -= len(c.items[i].data)
			c.items[i].data = nil
			if op.kind == opAttempt {
				c.items[i].data = op.data
				c.bytes += len(op.data)
			}
		}
	}
	// Drop removed entries at the front (lo stays: they are not pending), then
	// evict live ones beyond the limit (lo moves past them).
	for c.head < len(c.items) && (c.items[c.head].data == nil || c.bytes > c.limit) {
		if d := c.items[c.head].data; d != nil {
			c.bytes -= len(d)
			c.lo = c.items[c.head].id + 1
		}
		c.items[c.head] = cacheItem{}
		c.head++
	}
	if c.head > 1024 && c.head > len(c.items)/2 {
		n := copy(c.items, c.items[c.head:])
		clear(c.items[n:])
		c.items, c.head = c.items[:n], 0
	}
}

// read returns up to max encodings of pending entries with ID > after, or
// ok=false when the cache does not cover after.
func (c *tailCache) read(after uint64, max int) (out [][]byte, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if after < c.lo-1 || c.lo == 0 {
		return nil, false
	}
	for i := c.find(after + 1); i < len(c.items) && len(out) < max; i++ {
		if d := c.items[i].data; d != nil {
			out = append(out, d)
		}
	}
	return out, true
}
