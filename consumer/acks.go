package consumer

// ackWindow tracks the deliveries of one channel and computes the `multiple` ack: the highest tag
// such that every delivery up to it is finished. Delivery tags of a channel start at 1 and grow by
// one per delivery, so "finished up to N" is exactly what basic.ack(N, multiple=true) says.
type ackWindow struct {
	acked    uint64              // every tag <= acked has been acked
	received uint64              // highest tag received
	finished map[uint64]struct{} // finished tags > acked, not yet acked
}

func newAckWindow() *ackWindow { return &ackWindow{finished: map[uint64]struct{}{}} }

func (a *ackWindow) receive(tag uint64) {
	if tag > a.received {
		a.received = tag
	}
}

// finish records that tag was handled (or dropped as a duplicate, or parked).
func (a *ackWindow) finish(tag uint64) {
	if tag > a.acked {
		a.finished[tag] = struct{}{}
	}
}

// advance returns the tag to ack with multiple=true and true, or false when the finished prefix
// did not grow. It assumes the ack will be sent.
func (a *ackWindow) advance() (uint64, bool) {
	start := a.acked
	for {
		if _, ok := a.finished[a.acked+1]; !ok {
			break
		}
		delete(a.finished, a.acked+1)
		a.acked++
	}
	return a.acked, a.acked > start
}

// outstanding reports how many received deliveries are not acked yet.
func (a *ackWindow) outstanding() uint64 { return a.received - a.acked }
