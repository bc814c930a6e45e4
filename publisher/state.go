package publisher

// What the sender reports: the receipts' frontier, the connection state, the gauges.

import (
	"fmt"
	"time"
)

// advance moves the receipts' frontier: every ID below the oldest unsettled one is settled.
func (s *sender) advance() {
	next := s.pass.cursor + 1
	if s.pass.idx < len(s.pass.page) {
		next = s.pass.page[s.pass.idx].ID
	}
	if id := s.win.minID(); id != 0 && id < next {
		next = id
	}
	if s.fault.rewindTo != 0 && s.fault.rewindTo < next {
		next = s.fault.rewindTo
	}
	s.p.advance(next - 1)
}

func (s *sender) setState(st State, err error) {
	if st == StateReady && s.link.blocked {
		st = StateBlocked
	}
	if st == s.state {
		return
	}
	from := s.state
	s.state = st
	s.p.setState(st, s.link.url)
	connected := 0.0
	if st == StateReady || st == StateBlocked {
		connected = 1
	}
	s.m.Set(MetricConnected, connected)
	s.log.Info("publisher: state", "from", from, "to", st, "url", redactURL(s.link.url), "err", err)
	if cb := s.cfg.OnStateChange; cb != nil {
		sc := StateChange{From: from, To: st, URL: redactURL(s.link.url), Err: err}
		s.p.cb.Push(func() { cb(sc) })
	}
}

// setBlocked applies connection.blocked (b, with the broker's reason) or connection.unblocked.
func (s *sender) setBlocked(b bool, reason string) {
	if b == s.link.blocked {
		return
	}
	s.link.blocked = b
	s.p.blocked.Store(b)
	v := 0.0
	if b {
		v = 1
		s.log.Warn("publisher: broker blocked the connection (resource alarm); accepting into the journal only", "reason", reason)
		s.setState(StateBlocked, fmt.Errorf("publisher: broker blocked the connection: %s", reason))
	} else {
		s.log.Info("publisher: broker unblocked the connection")
		if s.state == StateBlocked {
			s.setState(StateReady, nil)
		}
	}
	s.m.Set(MetricBlocked, v)
}

// sample reports the journal gauges (once a second), from Backlog: Stats would copy every stream.
func (s *sender) sample() {
	js := s.j.Backlog()
	s.m.Set(MetricJournalPending, float64(js.Pending))
	s.m.Set(MetricJournalParked, float64(js.Parked))
	age := 0.0
	if !js.OldestPending.IsZero() {
		age = time.Since(js.OldestPending).Seconds()
	}
	s.m.Set(MetricOldestUnconfirmedAge, age)
}
