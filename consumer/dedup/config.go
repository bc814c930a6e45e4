package dedup

import (
	"fmt"
	"time"
)

// Defaults used for zero Config fields.
const (
	DefaultGapGrace         = 30 * time.Second
	DefaultMaxAhead         = int64(1_000_000)
	DefaultMaxSeen          = 10_000
	DefaultMaxLostRanges    = 1024
	DefaultEpochRetention   = 24 * time.Hour
	DefaultIdleRetention    = 7 * 24 * time.Hour
	DefaultMaxEpochs        = 4
	DefaultMaxRetiredEpochs = 16
	DefaultHashHistory      = 16
	DefaultMaxParked        = 1024
)

// Config bounds a Tracker. The zero value of every field means its default; negative values are
// invalid except where a field says otherwise.
type Config struct {
	// GapGrace is how long a missing sequence range may stay open (resends and requeues reorder
	// messages) before Expire reports it with EventGapDetected. Default 30s.
	GapGrace time.Duration

	// MaxAhead: a sequence number more than MaxAhead above the watermark W of its epoch (or above 0
	// for an epoch or stream not seen yet) is KindSuspicious. It never moves W, never opens a gap and
	// never makes a later message look like a duplicate. Default 1,000,000.
	MaxAhead int64

	// MaxSeen bounds, per epoch of a stream, how many committed sequence numbers may sit above W
	// waiting for a missing range to fill. When exceeded, the oldest missing range is given up
	// (EventGapGivenUp) and W moves past it; a given-up number that arrives later is still handled
	// once (KindNew with FlagLate). Default 10,000.
	MaxSeen int

	// MaxLostRanges bounds, per epoch of a stream, how many given-up ranges below W are remembered.
	// When exceeded the oldest is forgotten (EventLostForgotten): a number from it that arrives
	// afterwards can no longer be told from a duplicate and is classified KindDuplicate. Default 1024.
	MaxLostRanges int

	// EpochRetention is how long an epoch that is no longer the most recently active one of its
	// stream keeps its state (stragglers are still deduplicated). After it, the epoch is retired:
	// its number is remembered and its messages are KindStaleEpoch. Default 24h.
	EpochRetention time.Duration

	// IdleRetention: a stream without any commit for this long is compacted by Expire: open gaps
	// are given up, other epochs are retired, the body-hash history is dropped. W, the epoch and the
	// given-up ranges are kept, so the stream keeps deduplicating. Default 7 days.
	IdleRetention time.Duration

	// ForgetAfter: a stream without any commit for this long is deleted (EventStreamForgotten).
	// Afterwards its old messages are no longer recognised as duplicates and it restarts at W=0.
	// Zero (the default) keeps every stream's compacted state forever (a few dozen bytes each).
	// When set it must be at least IdleRetention.
	ForgetAfter time.Duration

	// MaxParked bounds, per stream, how many parked stamps are remembered for a re-drive
	// (CommitParked, Unpark). When exceeded, the one parked longest ago is forgotten
	// (EventParkedForgotten): a re-driven copy of it is then a duplicate and must be applied by
	// hand. Each remembered stamp adds about 4 bytes to the stream's encoded state, which is written
	// on every commit to the stream. Default 1024.
	MaxParked int

	// MaxEpochs bounds how many epochs per stream keep full state. A new epoch beyond it retires the
	// least recently active one early (EventEpochRetired). Default 4.
	MaxEpochs int

	// MaxRetiredEpochs bounds how many retired epoch numbers per stream are remembered so that their
	// stragglers are KindStaleEpoch; older ones are forgotten and would look like a new epoch.
	// Default 16.
	MaxRetiredEpochs int

	// AdoptStreams makes a stream the tracker has no state for start at the first number committed
	// for it instead of at 1. The numbers below it are neither waited for nor reported; if they
	// arrive they are handled once (KindNew, not late), and MaxAhead does not apply to the first
	// number. Use it when a new queue is attached to publishers that have been running for a while
	// (their streams are at high numbers). Default false: a stream starts at 1, so a lost first
	// message is reported, and a first number above MaxAhead is KindSuspicious. New epochs of a
	// known stream always start at 1 (a new journal numbers from 1).
	AdoptStreams bool

	// HashHistory is how many (seq, body hash) pairs per epoch of a stream are kept in memory for
	// Commit calls with a non-zero hash, so that a duplicate with a different body can be reported.
	// They are not persisted. Zero means the default 16; -1 disables the history.
	HashHistory int
}

func (c Config) withDefaults() (Config, error) {
	type check struct {
		name string
		bad  bool
	}
	for _, ch := range []check{
		{"GapGrace", c.GapGrace < 0},
		{"MaxAhead", c.MaxAhead < 0},
		{"MaxSeen", c.MaxSeen < 0},
		{"MaxLostRanges", c.MaxLostRanges < 0},
		{"EpochRetention", c.EpochRetention < 0},
		{"IdleRetention", c.IdleRetention < 0},
		{"ForgetAfter", c.ForgetAfter < 0},
		{"MaxEpochs", c.MaxEpochs < 0},
		{"MaxRetiredEpochs", c.MaxRetiredEpochs < 0},
		{"MaxParked", c.MaxParked < 0},
		{"HashHistory", c.HashHistory < -1},
	} {
		if ch.bad {
			return c, fmt.Errorf("%w: %s is negative", ErrInvalidConfig, ch.name)
		}
	}
	if c.GapGrace == 0 {
		c.GapGrace = DefaultGapGrace
	}
	if c.MaxAhead == 0 {
		c.MaxAhead = DefaultMaxAhead
	}
	if c.MaxSeen == 0 {
		c.MaxSeen = DefaultMaxSeen
	}
	if c.MaxLostRanges == 0 {
		c.MaxLostRanges = DefaultMaxLostRanges
	}
	if c.EpochRetention == 0 {
		c.EpochRetention = DefaultEpochRetention
	}
	if c.IdleRetention == 0 {
		c.IdleRetention = DefaultIdleRetention
	}
	if c.MaxEpochs == 0 {
		c.MaxEpochs = DefaultMaxEpochs
	}
	if c.MaxRetiredEpochs == 0 {
		c.MaxRetiredEpochs = DefaultMaxRetiredEpochs
	}
	if c.MaxParked == 0 {
		c.MaxParked = DefaultMaxParked
	}
	switch c.HashHistory {
	case 0:
		c.HashHistory = DefaultHashHistory
	case -1:
		c.HashHistory = 0
	}
	if c.MaxAhead > 1<<62 {
		return c, fmt.Errorf("%w: MaxAhead %d is above 2^62", ErrInvalidConfig, c.MaxAhead)
	}
	if c.ForgetAfter != 0 && c.ForgetAfter < c.IdleRetention {
		return c, fmt.Errorf("%w: ForgetAfter %v is below IdleRetention %v", ErrInvalidConfig, c.ForgetAfter, c.IdleRetention)
	}
	return c, nil
}
