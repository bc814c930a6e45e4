package publisher

import (
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/journal"
)

// TestMissingSpell: how long an exchange counts as missing, the input of MissingExchangeGrace.
func TestMissingSpell(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type hit struct {
		exchange string
		at       time.Duration // after t0
		want     time.Duration // spell length returned
	}
	tests := []struct {
		name string
		hits []hit
	}{
		{"first 404 starts a spell", []hit{{"x", 0, 0}}},
		{"404s within the gap extend it", []hit{{"x", 0, 0}, {"x", 30 * time.Second, 30 * time.Second}, {"x", 4 * time.Minute, 4 * time.Minute}}},
		{"a quiet gap starts a new spell", []hit{{"x", 0, 0}, {"x", time.Minute, time.Minute}, {"x", time.Minute + spellGap + time.Second, 0}}},
		{"exchanges are independent", []hit{{"x", 0, 0}, {"y", time.Minute, 0}, {"x", 2 * time.Minute, 2 * time.Minute}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &spellTracker{grace: time.Minute}
			for i, h := range tc.hits {
				if got := s.hit(h.exchange, t0.Add(h.at)); got != h.want {
					t.Fatalf("hit %d (%s at %v): spell %v, want %v", i, h.exchange, h.at, got, h.want)
				}
			}
		})
	}
	t.Run("a grace longer than the gap stretches the gap", func(t *testing.T) {
		s := &spellTracker{grace: time.Hour}
		s.hit("x", t0)
		if got := s.hit("x", t0.Add(50*time.Minute)); got != 50*time.Minute {
			t.Fatalf("spell %v", got)
		}
	})
	t.Run("stale spells are forgotten past 1024 exchanges", func(t *testing.T) {
		s := &spellTracker{grace: time.Minute}
		for i := range 1024 {
			s.hit(fmt.Sprint("old-", i), t0)
		}
		s.hit("new", t0.Add(spellGap+time.Second))
		if len(s.spells) != 1 {
			t.Fatalf("%d spells kept, want only the new one", len(s.spells))
		}
	})
	t.Run("a 403 is about the exchange and key, a 404 about the exchange", func(t *testing.T) {
		s := &spellTracker{grace: time.Minute}
		refused := &journal.Entry{Exchange: "x", RoutingKey: "secret"}
		allowed := &journal.Entry{Exchange: "x", RoutingKey: "public"}
		s.hit(spellKey(amqp.AccessRefused, refused), t0)
		s.end(allowed) // topic authorisation: another key of x is confirmed
		if got := s.hit(spellKey(amqp.AccessRefused, refused), t0.Add(time.Minute)); got != time.Minute {
			t.Fatalf("403 spell %v after a confirm with another key, want it to go on (1m)", got)
		}
		s.end(refused)
		if got := s.hit(spellKey(amqp.AccessRefused, refused), t0.Add(2*time.Minute)); got != 0 {
			t.Fatalf("403 spell %v after a confirm with its own key, want a new spell", got)
		}
		s.hit(spellKey(amqp.NotFound, refused), t0)
		s.end(allowed) // any message confirmed to x proves that x exists
		if got := s.hit(spellKey(amqp.NotFound, refused), t0.Add(time.Minute)); got != 0 {
			t.Fatalf("404 spell %v after a confirm to the exchange, want a new spell", got)
		}
	})
}
