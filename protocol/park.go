package protocol

// Headers of a parked copy: what rabbitkit's consumer adds to a message it publishes to its parking
// queue (docs/PROTOCOL.md, "Parked messages"), besides the message's own headers and stamp. An
// operator's tools and other consumers read them; a publisher never sends them.
const (
	// HeaderParkPrefix starts every parking header.
	HeaderParkPrefix = "rk-park-"
	// HeaderParkReason (long string) says why the message was parked, at most MaxParkReason bytes.
	HeaderParkReason = "rk-park-reason"
	// HeaderParkQueue (long string) is the queue it was consumed from.
	HeaderParkQueue = "rk-park-queue"
	// HeaderParkExchange (long string) is the exchange it was published to.
	HeaderParkExchange = "rk-park-exchange"
	// HeaderParkRoutingKey (long string) is its routing key.
	HeaderParkRoutingKey = "rk-park-routing-key"
	// HeaderParkTime (timestamp, UTC, seconds) is when it was parked.
	HeaderParkTime = "rk-park-time"
	// HeaderParkAttempts (signed 64-bit) counts the failed handler attempts.
	HeaderParkAttempts = "rk-park-attempts"
	// HeaderParkExpiration (long string) holds the message's expiration property. The parked copy
	// has none: a parked message must wait for an operator, not expire unseen.
	HeaderParkExpiration = "rk-park-expiration"
	// HeaderParkUserID (long string) holds the message's user-id property. The parked copy has
	// none: RabbitMQ refuses a user-id other than the publishing connection's user, which the
	// parker's is not.
	HeaderParkUserID = "rk-park-user-id"
	// HeaderParkHeadersDropped (signed 64-bit) is set, to the original headers' encoded size in
	// bytes, when the original headers and the park headers together do not fit in one AMQP frame:
	// the original headers are then left out (the stamp is kept), so that the message can still be
	// parked.
	HeaderParkHeadersDropped = "rk-park-headers-dropped"
)

// HeaderRedrive (long string: when, RFC 3339, and by what) marks a copy that an operator re-drove
// from a parking queue to its original exchange, with its stamp unchanged (`rabbitkit parked
// redrive`). A consumer applies such a copy once if its store remembers the stamp as parked after
// its handler failed (it was accounted for then, so that a resend is a duplicate); any other copy
// of the stamp, re-driven or not, stays a duplicate. A publisher never sends it.
const HeaderRedrive = "rk-redrive"

// MaxParkReason bounds HeaderParkReason, in bytes: a handler's error text can be of any length. A
// longer reason is cut at a UTF-8 boundary and ends in "…".
const MaxParkReason = 1024
