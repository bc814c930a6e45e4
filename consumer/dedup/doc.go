// Package dedup is the pure logic behind the consumer's exactly-once handling: per stream, which
// sequence numbers were already applied, which are missing, and what to report about them. It does
// no I/O, starts no goroutines and never reads the clock; package consumer drives it, persists it
// and acks.
//
// A message is identified by its protocol.Stamp (source, epoch, stream, seq). For every stream
// (source, stream) a Tracker keeps, per epoch:
//
//   - W, the watermark: every number up to W was committed or given up;
//   - H, the highest committed number, and the missing gaps between W and H with the time each was
//     first noticed (so the numbers committed above W are implied: (W, H] minus the gaps);
//   - the given-up ("lost") ranges below W, so that a number from them arriving late is still new.
//
// All of it is ranges, never per-message sets: the state is bounded by the number of streams
// (and by Config.MaxSeen and Config.MaxLostRanges per stream), not by the number of messages. A
// stream with nothing missing encodes to about 30 bytes plus its key; 10,000 streams that carried
// a million messages each, one in ten with open gaps, take about 1 MiB encoded (keys included) and
// about 7 MiB of memory with the default body-hash history (4.5 MiB without), see
// TestStateSize10kStreams.
//
// The consumer's cycle for each delivery:
//
//	v := tr.Classify(stamp)            // KindNew: handle; KindDuplicate: ack and skip;
//	                                   // KindSuspicious, KindStaleEpoch: park
//	... run the handler (or park) ...
//	ok, evs := tr.Commit(stamp, dedup.BodyHash(body), now)   // report evs
//	keys = tr.TakeDirty(keys[:0])      // per batch: persist AppendState(k) for each key, then ack
//
// and, periodically, evs := tr.Expire(now) to report gaps whose grace elapsed and to retire old
// epochs and idle streams.
//
// # Guarantees
//
//   - A stamp is KindNew until it is committed, and KindDuplicate afterwards, across any
//     interleaving, reordering and epoch changes, and across AppendState/Load (a restart) — with
//     the bounded exceptions listed under Caveats.
//   - A number that is still missing Config.GapGrace after a later number of its stream was
//     committed is reported exactly once by Expire (EventGapDetected), as part of a range. A
//     number that never goes missing is never reported.
//   - A reported or given-up number that arrives later is KindNew with FlagLate, is handled once,
//     and its Commit emits EventLateArrival.
//   - A sequence number more than Config.MaxAhead above W (e.g. 2^62 from a broken client) is
//     KindSuspicious; Commit ignores it, so it never moves W, never opens a gap and never makes a
//     later real message look like a duplicate. Invalid stamps (empty names, numbers below 1) are
//     KindSuspicious too.
//   - Committing a parked message accounts for its number: it is not a gap.
//   - Classify never changes state. Commit and Expire change only the streams they report through
//     TakeDirty.
//   - Load rejects truncated, corrupted or inconsistent state (ErrCorrupt, ErrVersion) without
//     panicking and without changing the tracker.
//
// # Epochs
//
// An epoch is a publisher journal's random 64-bit incarnation id, so epochs are not ordered:
// "current" means most recently active. The first commit of an unknown epoch for a known stream
// starts a new sequence space from 0 and is reported (EventEpochChanged). Epochs keep their full
// state while they are the most recently active one, and for Config.EpochRetention after their
// last commit otherwise; stragglers are deduplicated meanwhile. Then the epoch is retired
// (EventEpochRetired): its number is remembered (up to Config.MaxRetiredEpochs per stream) and its
// messages are KindStaleEpoch. The consumer should park those: after retention a straggler cannot
// be told from a duplicate, so handling it might apply an effect twice and dropping it might lose
// one; parking keeps it, reported, for an operator. Because "current" follows activity, a single
// bogus epoch cannot retire a live one: the live epoch becomes the most recent again at its next
// commit and the bogus one is retired after EpochRetention.
//
// # Concurrency
//
// A Tracker is not safe for concurrent use: the consumer serialises all calls (Classify, Commit
// and the persistence of the touched streams must be atomic together anyway). Classify reads
// committed state only, so the consumer must not handle two copies of one stamp at once: keep
// per-stream order, or Classify again right before Commit (inside the store transaction for
// transactional handlers) and roll the effect back when it turned into a duplicate.
//
// # Caveats
//
//   - Bounded memory means bounded history. A number from a given-up range forgotten because of
//     Config.MaxLostRanges (EventLostForgotten), a message of an epoch forgotten beyond
//     Config.MaxRetiredEpochs, and a message of a stream deleted after Config.ForgetAfter can no
//     longer be recognised: the first is classified KindDuplicate, the others KindNew (a new epoch or
//     stream). Each of these is reported when it happens.
//   - By default a stream the tracker does not know starts at W = 0: numbers below its first one
//     are waited for and reported as a gap, and a first number above Config.MaxAhead is
//     KindSuspicious. That is right for new publishers and for lost dedup state, but wrong for a
//     new queue attached to publishers that have been running: set Config.AdoptStreams for that.
//     An adopted stream starts at its first committed number; the numbers below it are handled
//     once if they arrive but never reported, and a bogus first number cannot be recognised.
//   - A bogus number within MaxAhead is committed like any other: it opens a gap below it, which is
//     reported after the grace, and the real messages that fill it are flagged late.
//   - The body-hash history (Config.HashHistory) keeps only the last few commits per epoch, in
//     memory: a duplicate with a different body is noticed only while its seq is in it.
//   - Every distinct (source, stream) keeps a few dozen bytes forever unless Config.ForgetAfter is
//     set: publishers that invent stream names without bound (one per order, say) need it.
//   - Times are wall-clock times as passed in; a clock stepping back delays reports and retention.
package dedup
