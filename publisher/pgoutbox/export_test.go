package pgoutbox

import (
	"context"
	"time"

	"github.com/rabbitkit/rabbitkit/journal"
)

// ViewForTest is a relay's view of o's current epoch without a lease, for tests of Read's
// read-ahead: read is view.Read, settle waits for the read-ahead in flight (if any), and close is
// view.close.
func ViewForTest(o *Outbox) (read func(ctx context.Context, after uint64, max int) ([]*journal.Entry, error), settle, close func()) {
	v := newView(o, o.Epoch(), nil, time.Now())
	settle = func() {
		v.mu.Lock()
		a := v.ahead
		v.mu.Unlock()
		if a != nil {
			<-a.done
		}
	}
	return v.Read, settle, v.close
}
