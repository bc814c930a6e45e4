package consumer

import (
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/protocol"
)

func (w *worker) conflict(s protocol.Stamp, first, dup uint64) {
	r := w.r
	r.cfg.Metrics.Add(MetricConflicts, 1)
	r.cfg.Logger.Error("consumer: duplicate stamp with a different body; dropped, the first body's effect stands", "stamp", s.String())
	if cb := r.cfg.OnConflict; cb != nil {
		c := Conflict{Stamp: s, FirstHash: first, DupHash: dup}
		r.events.Push(func() { cb(c) })
	}
}

// report logs, counts and queues the callbacks of the events of the last commit.
func (w *worker) report() {
	if len(w.evs) == 0 {
		return
	}
	r := w.r
	for _, ev := range w.evs {
		var cb func(dedup.Event)
		switch ev.Kind {
		case dedup.EventGapDetected:
			r.cfg.Metrics.Add(MetricGaps, 1)
			r.cfg.Logger.Error("consumer: gap: messages missing", "source", ev.Key.Source, "stream", ev.Key.Stream, "epoch", ev.Epoch, "from", ev.From, "to", ev.To, "since", ev.Since)
			cb = r.cfg.OnGap
		case dedup.EventGapGivenUp:
			r.cfg.Metrics.Add(MetricGapsGivenUp, 1)
			r.cfg.Logger.Error("consumer: gap given up: no longer waiting for messages", "source", ev.Key.Source, "stream", ev.Key.Stream, "epoch", ev.Epoch, "from", ev.From, "to", ev.To, "since", ev.Since)
			cb = r.cfg.OnGap
		case dedup.EventLateArrival:
			r.cfg.Metrics.Add(MetricLate, 1)
			r.cfg.Logger.Warn("consumer: late arrival handled", "source", ev.Key.Source, "stream", ev.Key.Stream, "epoch", ev.Epoch, "seq", ev.From)
			cb = r.cfg.OnLate
		case dedup.EventEpochChanged:
			r.cfg.Metrics.Add(MetricEpochChanges, 1)
			r.cfg.Logger.Info("consumer: new epoch", "source", ev.Key.Source, "stream", ev.Key.Stream, "epoch", ev.Epoch, "old_epoch", ev.OldEpoch)
			cb = r.cfg.OnEpoch
		case dedup.EventEpochRetired:
			cb = r.cfg.OnEpoch
			r.cfg.Logger.Info("consumer: epoch retired", "source", ev.Key.Source, "stream", ev.Key.Stream, "epoch", ev.Epoch)
		case dedup.EventParkedForgotten:
			r.cfg.Logger.Error("consumer: parked stamp forgotten (MaxParked): a re-driven copy of it will be dropped as a duplicate; apply it by hand", "source", ev.Key.Source, "stream", ev.Key.Stream, "epoch", ev.Epoch, "seq", ev.From)
		default:
			r.cfg.Logger.Warn("consumer: dedup event", "event", ev.String())
		}
		if cb != nil {
			ev := ev
			r.events.Push(func() { cb(ev) })
		}
	}
	clear(w.evs)
	w.evs = w.evs[:0]
}
