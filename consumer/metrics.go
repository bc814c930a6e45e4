package consumer

import (
	"fmt"

	"github.com/rabbitkit/rabbitkit/metrics"
)

// Metric names reported through Config.Metrics (a metrics.Recorder). Counters end in _total,
// latencies are observations in seconds.
const (
	// MetricHandled counts messages whose handler succeeded and whose mark was committed.
	MetricHandled = "rabbitkit_consumer_handled_total"
	// MetricDuplicates counts deliveries dropped as duplicates (acked without running the handler).
	MetricDuplicates = "rabbitkit_consumer_duplicates_total"
	// MetricGaps counts missing ranges reported after the grace period (dedup.EventGapDetected).
	MetricGaps = "rabbitkit_consumer_gaps_total"
	// MetricGapsGivenUp counts missing ranges no longer waited for (dedup.EventGapGivenUp).
	MetricGapsGivenUp = "rabbitkit_consumer_gaps_given_up_total"
	// MetricLate counts messages handled after their gap had been reported or given up.
	MetricLate = "rabbitkit_consumer_late_arrivals_total"
	// MetricEpochChanges counts new epochs of known streams (dedup.EventEpochChanged).
	MetricEpochChanges = "rabbitkit_consumer_epoch_changes_total"
	// MetricParked counts messages published to the parking queue.
	MetricParked = "rabbitkit_consumer_parked_total"
	// MetricRedriven counts re-driven copies of parked messages that were applied (their stamps
	// remembered as parked after a handler failure; see protocol.HeaderRedrive).
	MetricRedriven = "rabbitkit_consumer_redriven_total"
	// MetricConflicts counts duplicates whose body differs from the one handled.
	MetricConflicts = "rabbitkit_consumer_conflicts_total"
	// MetricUnstamped counts messages without a stamp (passed through or parked per policy).
	MetricUnstamped = "rabbitkit_consumer_unstamped_total"
	// MetricLegacyStamps counts deliveries stamped only in the legacy v1 form (four rk- headers,
	// docs/PROTOCOL.md 1.3): publishers still to be upgraded.
	MetricLegacyStamps = "rabbitkit_consumer_v1_stamps_total"
	// MetricRedeliveries counts deliveries the broker flagged as redelivered.
	MetricRedeliveries = "rabbitkit_consumer_redeliveries_total"
	// MetricHandlerErrors counts failed handler attempts (errors and panics).
	MetricHandlerErrors = "rabbitkit_consumer_handler_errors_total"
	// MetricReconnects counts sessions that ended other than by Run's context (connection or
	// channel lost, consumer cancelled by the broker).
	MetricReconnects = "rabbitkit_consumer_reconnects_total"
	// MetricHandlerSeconds observes each handler attempt's duration.
	MetricHandlerSeconds = "rabbitkit_consumer_handler_seconds"
	// MetricAckSeconds observes, per acked delivery, the time from the end of its handling
	// (handler returned or duplicate recognised) to the ack being sent: group commit plus ack
	// batching.
	MetricAckSeconds = "rabbitkit_consumer_ack_seconds"
	// MetricCommitSeconds observes each store commit.
	MetricCommitSeconds = "rabbitkit_consumer_commit_seconds"
	// MetricStoreRetries counts batches a shared store could not commit for a reason worth
	// retrying (ErrStoreUnavailable: database unreachable, connection lost); each is committed
	// again after a backoff, its deliveries unacked meanwhile.
	MetricStoreRetries = "rabbitkit_consumer_store_retries_total"
	// MetricCommitUnknown counts commits whose outcome was unknown (the connection was lost while
	// COMMIT was in flight: ErrCommitUnknown). Never charged to a handler; the batch is committed
	// again and what had committed comes back as duplicates.
	MetricCommitUnknown = "rabbitkit_consumer_commit_unknown_total"
	// MetricRequeued counts deliveries given back to the queue (basic.nack, requeue) because a
	// shared store refused their batch for Config.StoreOutageRequeue.
	MetricRequeued = "rabbitkit_consumer_requeued_total"
	// MetricRaced counts deliveries whose plain handler (Run) ran although, by the time its mark
	// was committed, another replica had committed the same stamp: with a shared store a plain
	// handler's effect is at-least-once when two replicas hold the same message at once (a
	// redelivery racing the original). Transactional handlers (RunTx) never race.
	MetricRaced = "rabbitkit_consumer_raced_total"
	// MetricStreamsRefused counts messages of new streams parked because the dedup state held
	// Config.MaxStreams streams.
	MetricStreamsRefused = "rabbitkit_consumer_streams_refused_total"
	// MetricRefused counts messages parked because Config.Admit refused them.
	MetricRefused = "rabbitkit_consumer_refused_total"
	// MetricParkingQueueMessages is a gauge of the messages ready in the parking queue, read when a
	// session starts and every 30 s: what this consumer parked, what the broker dead-lettered
	// there, and what nobody has re-driven yet.
	MetricParkingQueueMessages = "rabbitkit_consumer_parking_queue_messages"
	// MetricStreams is a gauge of the streams held in the dedup state.
	MetricStreams = "rabbitkit_consumer_streams"
)

// Labels on every metric of a Consumer. Both are fixed by configuration: together they tell two
// consumers in one process apart (a consumer group's partitions differ by queue).
const (
	// LabelClient is Config.ConnectionName (default "rabbitkit-consumer").
	LabelClient = "client"
	// LabelQueue is Config.Queue.
	LabelQueue = "queue"
)

// claimMetrics labels cfg.Metrics with LabelClient and LabelQueue and claims that identity on the
// Recorder (see metrics.Claimer): a second live Consumer with the same ConnectionName and Queue on
// the same registry is refused with metrics.ErrIdentityInUse. Close releases it.
func claimMetrics(cfg *Config) (release func(), err error) {
	cfg.Metrics = metrics.With(cfg.Metrics,
		metrics.Label{Name: LabelClient, Value: cfg.ConnectionName}, metrics.Label{Name: LabelQueue, Value: cfg.Queue})
	release, err = metrics.Claim(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w (give each Consumer of a queue its own Config.ConnectionName)", err)
	}
	return release, nil
}
