package publisher

import (
	"fmt"

	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
)

// Metric names reported through Config.Metrics. Counters end in _total; latencies are in seconds.
const (
	// MetricAccepted counts messages durably journaled by this Publisher.
	MetricAccepted = "rabbitkit_publisher_accepted_total"
	// MetricPublished counts basic.publish frames sent, resends included.
	MetricPublished = "rabbitkit_publisher_published_total"
	// MetricResent counts sends of an entry that had been sent before (after a reconnect, a channel
	// error or a nack).
	MetricResent = "rabbitkit_publisher_resent_total"
	// MetricConfirmed counts positive confirms (entries removed from the journal).
	MetricConfirmed = "rabbitkit_publisher_confirmed_total"
	// MetricNacked counts basic.nack confirms.
	MetricNacked = "rabbitkit_publisher_nacked_total"
	// MetricReturned counts basic.return (unroutable) messages.
	MetricReturned = "rabbitkit_publisher_returned_total"
	// MetricParked counts entries parked by the publisher.
	MetricParked = "rabbitkit_publisher_parked_total"
	// MetricUnknown counts sends whose confirm was lost with the channel or connection.
	MetricUnknown = "rabbitkit_publisher_unknown_total"
	// MetricReconnects counts successful connections after the first.
	MetricReconnects = "rabbitkit_publisher_reconnects_total"
	// MetricChannelErrors counts channels closed by the broker (404, 403, 406, ...).
	MetricChannelErrors = "rabbitkit_publisher_channel_errors_total"
	// MetricConnected is 1 while a channel is open and ready, else 0.
	MetricConnected = "rabbitkit_publisher_connected"
	// MetricBlocked is 1 while the broker has blocked the connection (resource alarm), else 0.
	MetricBlocked = "rabbitkit_publisher_blocked"
	// MetricInFlight is the number of unconfirmed messages on the channel.
	MetricInFlight = "rabbitkit_publisher_inflight"
	// MetricJournalPending is the number of pending journal entries (sampled every second).
	MetricJournalPending = "rabbitkit_publisher_journal_pending"
	// MetricJournalParked is the number of parked journal entries (sampled every second).
	MetricJournalParked = "rabbitkit_publisher_journal_parked"
	// MetricOldestUnconfirmedAge is the age in seconds of the oldest pending entry (sampled every
	// second; 0 when none).
	MetricOldestUnconfirmedAge = "rabbitkit_publisher_oldest_unconfirmed_age_seconds"
	// MetricConfirmLatency observes the time from journaling to the positive confirm.
	MetricConfirmLatency = "rabbitkit_publisher_confirm_latency_seconds"
)

// Labels of the Publisher's metrics. Both are bounded: by configuration and by topology.
const (
	// LabelClient is on every metric and names the Publisher: Config.ConnectionName (default
	// "rabbitkit-publisher <source>"). It tells two publishers in one process apart.
	LabelClient = "client"
	// LabelExchange is the message's exchange ("" for the default exchange), on the per-message
	// metrics: MetricAccepted, MetricPublished, MetricResent, MetricConfirmed, MetricConfirmLatency,
	// MetricNacked, MetricReturned and MetricParked.
	LabelExchange = "exchange"
)

type exchangeCount struct {
	exchange string
	n        int
}

// countExchange adds one message of exchange to counts.
func countExchange(counts []exchangeCount, exchange string) []exchangeCount {
	for i := range counts {
		if counts[i].exchange == exchange {
			counts[i].n++
			return counts
		}
	}
	return append(counts, exchangeCount{exchange, 1})
}

// exchangeLabel is e's LabelExchange.
func exchangeLabel(e *journal.Entry) metrics.Label {
	return metrics.Label{Name: LabelExchange, Value: e.Exchange}
}

// claimMetrics labels p's metrics with LabelClient and claims that identity on the Recorder (see
// metrics.Claimer): a second live Publisher or Relay with the same ConnectionName on the same
// registry is refused with metrics.ErrIdentityInUse.
func (p *Publisher) claimMetrics() error {
	p.m = metrics.With(p.cfg.Metrics, metrics.Label{Name: LabelClient, Value: p.cfg.ConnectionName})
	release, err := metrics.Claim(p.m)
	if err != nil {
		return fmt.Errorf("publisher: %w (give each Publisher its own Config.ConnectionName)", err)
	}
	p.releaseMetrics = release
	return nil
}
