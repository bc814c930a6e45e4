package amqpconn

import (
	"net"
	"sync"
)

// DefaultBatchLimit bounds what a BatchConn holds back before it writes anyway.
const DefaultBatchLimit = 256 << 10

// BatchConn is a net.Conn whose writes can be held back and sent together. amqp091-go flushes its
// buffered writer after every publish (one write system call per message, two for a 4 KiB body);
// a publisher that sends a burst of messages calls Hold before the burst and Release after it, and
// the burst leaves in one write of up to Limit bytes. Between Hold and Release, Write only copies
// (or, past Limit, writes everything held plus the new bytes). Writes from other goroutines
// (heartbeats) are held with the rest until Release, so a holder must release promptly: the
// publisher holds from the first publish of a pass of its send loop until the pass ends, and
// releases before anything that may wait (a journal read from disk).
//
// A failed write is sticky: every later Write returns the error, and the socket is closed so that
// amqp091-go's reader sees the failure and shuts the connection down. Read, Close and the deadline
// methods are the socket's.
type BatchConn struct {
	net.Conn
	Limit int // 0: DefaultBatchLimit

	mu   sync.Mutex
	hold bool
	buf  []byte
	err  error
}

// NewBatchConn wraps c.
func NewBatchConn(c net.Conn) *BatchConn { return &BatchConn{Conn: c} }

// Write writes p, or holds it back between Hold and Release.
func (b *BatchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	limit := b.Limit
	if limit <= 0 {
		limit = DefaultBatchLimit
	}
	if b.hold && len(b.buf)+len(p) <= limit {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	if len(b.buf) == 0 {
		return b.write(p)
	}
	// Held bytes first, then p, in one writev: a large p is not copied.
	bufs := net.Buffers{b.buf, p}
	_, err := bufs.WriteTo(b.Conn)
	b.reset()
	if err != nil {
		b.fail(err)
		return 0, err
	}
	return len(p), nil
}

// Hold starts holding writes back.
func (b *BatchConn) Hold() {
	b.mu.Lock()
	b.hold = true
	b.mu.Unlock()
}

// Release stops holding and writes what was held. Its error is the connection's: the socket is
// closed by then.
func (b *BatchConn) Release() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hold = false
	if b.err != nil {
		return b.err
	}
	_, err := b.flushLocked()
	return err
}

func (b *BatchConn) flushLocked() (int, error) {
	n, err := b.write(b.buf)
	b.reset()
	return n, err
}

func (b *BatchConn) reset() {
	if cap(b.buf) > 4*DefaultBatchLimit {
		b.buf = nil // a custom Limit grew it: do not keep it
	} else {
		b.buf = b.buf[:0]
	}
}

func (b *BatchConn) write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := b.Conn.Write(p)
	if err != nil {
		b.fail(err)
	}
	return n, err
}

// fail makes err sticky and closes the socket, so that amqp091-go's reader sees the failure.
func (b *BatchConn) fail(err error) {
	b.err = err
	_ = b.Conn.Close()
}
