package pgoutbox

import (
	"context"
	"time"

	"github.com/rabbitkit/rabbitkit/journal"
)

// ViewForTest is a relay's view of o's current epoch without a lease, for tests of Read's
// read-ahead: read is view.Read, settle waits for the read-ahead in flight (if any), ahead reports
// whether one was started and not yet taken, and close is view.close.
func ViewForTest(o *Outbox) (read func(ctx context.Context, after uint64, max int) ([]*journal.Entry, error), settle func(), ahead func() bool, close func()) {
	v := newView(o, o.Epoch(), nil, time.Now())
	settle = func() {
		v.mu.Lock()
		a := v.ahead
		v.mu.Unlock()
		if a != nil {
			<-a.done
		}
	}
	ahead = func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.ahead != nil
	}
	return v.Read, settle, ahead, v.close
}
