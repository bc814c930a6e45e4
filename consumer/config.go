package consumer

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// NoStampPolicy says what happens to a message that carries no stamp in any version (a
// message-id that does not start with "rk<digits>:", no rk-stamp and no v1 rk- headers).
type NoStampPolicy uint8

const (
	// NoStampPassThrough (the default) runs the handler without dedup and counts the message
	// (MetricUnstamped): at-least-once, like a plain consumer. Suits queues shared with producers
	// that do not use rabbitkit.
	NoStampPassThrough NoStampPolicy = iota
	// NoStampPark parks the message (strict mode): only stamped messages are handled.
	NoStampPark
)

// Defaults for zero Config fields.
const (
	// DefaultPrefetch is twice a plain consumer's usual 1000: the kit holds every delivery until
	// its group commit is durable, so it needs a plain consumer's window plus what arrives during
	// one fsync, or the broker stops sending whenever an fsync stalls. Measured on a shared 2-core
	// machine: with 1000 the kit drained at 0.6-1.3x raw amqp091-go (prefetch 1000, ack every
	// 100), with 2000 at 0.9-1.0x and far steadier. It also bounds what a crash makes the broker
	// redeliver (dedup drops it) and the memory held (prefetch x message size).
	DefaultPrefetch     = 2000
	DefaultMaxAttempts  = 5
	DefaultMaxCrashes   = 3
	DefaultMaxStreams   = 100_000
	DefaultDrainTimeout = 30 * time.Second
	// DefaultMaxBatch caps the deliveries one worker handles between two store commits.
	DefaultMaxBatch = 500
	// DefaultStoreOutageRequeue is Config.StoreOutageRequeue's default: well under RabbitMQ's
	// default consumer_timeout of 30 minutes.
	DefaultStoreOutageRequeue = 5 * time.Minute
)

// Config configures a Consumer. URLs and Queue are required, and StorePath for New.
type Config struct {
	// URLs of the brokers, tried in turn on every (re)connect: amqp://user:pass@host:5672/vhost, or
	// amqps:// for TLS. New refuses a URL that does not parse.
	URLs  []string
	Queue string // the queue to consume
	// TLS configures the amqps:// URLs: root CAs, client certificates for mutual TLS, minimum
	// version. It is cloned for every connection; an empty ServerName takes the URL's
	// server_name_indication parameter, else its host. Nil: the URLs' own cacertfile, certfile,
	// keyfile and server_name_indication parameters over the system roots. With TLS set, New
	// refuses plain amqp:// URLs and URLs naming certificate files (they would be ignored). For
	// certificate login add ?auth_mechanism=external to the URL (rabbitmq_auth_mechanism_ssl).
	TLS *tls.Config
	// Topology is declared on every (re)connect, before consuming. Include the consumed queue so
	// that a deleted queue comes back; the parking queue is added unless it is already there.
	Topology topology.Topology
	// ParkingQueue receives parked messages. Default Queue + ".parked", declared as a durable
	// classic queue unless Topology declares it.
	ParkingQueue string

	Prefetch int // basic.qos prefetch count; default DefaultPrefetch
	// Workers is the number of goroutines running handlers. Messages of one stream (source, stream)
	// always go to the same worker, so each stream's effects stay in delivery order. Default 1.
	Workers int
	// MaxBatch caps the deliveries a worker handles between two store commits. Default DefaultMaxBatch.
	MaxBatch int

	// StorePath is the bbolt file New opens as the Consumer's BoltStore (created if missing). Leave
	// it empty with NewWithStore.
	StorePath string
	// Dedup bounds the dedup window: GapGrace (how long a missing range may stay open before it is
	// reported), MaxAhead (the suspicious-jump bound), retention of epochs and idle streams.
	Dedup dedup.Config
	// MaxStreams bounds the streams (source, stream) an exclusive store's dedup state holds:
	// anyone who can publish to the queue could otherwise grow it without limit with forged
	// sources (measured: 100,000 one-message streams took 95 MiB of memory and 33 MB of store). A
	// message of a stream the consumer does not know yet, past the bound, is parked with the reason
	// (not accounted for: re-drive it once the bound is raised) and counted
	// (MetricStreamsRefused); a stream already held is never evicted to make room. Idle streams
	// leave after Dedup.ForgetAfter, if set. Default DefaultMaxStreams (100,000); negative: no
	// bound. The bound is approximate by up to one batch per worker: workers admit new streams
	// concurrently. A shared store (consumer/pginbox) keeps streams in its table, not in memory:
	// the bound does not apply to it. See docs/OPERATIONS.md, "Untrusted writers".
	MaxStreams int
	// Admit, when set, is called for every delivery with a valid stamp before it is deduplicated
	// (on the worker's goroutine; it must be quick and must not keep m). An error parks the
	// message with the error as its reason, without accounting for its stamp or creating any
	// state for its stream, and counts it (MetricRefused). Use it when writers are not trusted,
	// to bind each stamp's source to the broker user that published it: RabbitMQ refuses a
	// user-id property other than the publishing connection's user, so m.Properties.UserID is
	// validated when publishers set it (publisher.Message.UserID). See docs/OPERATIONS.md,
	// "Untrusted writers".
	Admit func(m *Message) error
	// ExpireInterval is how often gap grace and retention are checked. Default min(1s, GapGrace/4).
	ExpireInterval time.Duration

	NoStamp NoStampPolicy
	// MaxAttempts bounds handler attempts per delivery; then the message is parked. Default 5.
	MaxAttempts int
	// MaxCrashes bounds how many times the handler of a message may be started on redeliveries
	// without finishing: without the handler returning, the process died each time (a panic
	// outside the handler's goroutine, os.Exit, the OOM killer), so no attempt ever failed and
	// the message would come back forever. Before it runs the handler of a redelivered message
	// (and only then), the Run records the start durably in the store; the handler's commit, or
	// parking it, forgets the count. A redelivered message already started MaxCrashes times is
	// parked with the reason instead of started again. Default 3; negative: no counting.
	MaxCrashes int
	// RetryBackoff makes the schedule of one delivery's handler retries (and of parking retries):
	// NextBackOff is the wait before the next attempt. A schedule that returns backoff.Stop parks
	// the message at once. Default: exponential from 100ms, doubling, capped at 5s, ±50% jitter.
	RetryBackoff func() backoff.BackOff
	// DrainTimeout bounds how long Run waits for running handlers once its context ended; then
	// their context is cancelled. Default 30s.
	DrainTimeout time.Duration

	// ReconnectBackoff is the backoff between connection attempts. Default: exponential 100ms..5s,
	// forever (internal/amqpconn).
	ReconnectBackoff func() backoff.BackOff
	// StoreRetryBackoff is the backoff between attempts to commit to a store that is unavailable
	// (ErrStoreUnavailable: a shared store's database unreachable, or a full disk, ErrDiskFull):
	// the batch's deliveries stay unacked meanwhile and no new ones are taken beyond Prefetch.
	// Default: exponential 100ms..5s, forever. When it stops, Run ends with the last error. Any
	// other store failure ends Run at once.
	StoreRetryBackoff func() backoff.BackOff
	// StoreOutageRequeue: a batch a shared store has refused for this long is given back to the
	// queue (basic.nack with requeue) instead of being held unacked any longer, so that nothing
	// stays unacked until the broker's consumer_timeout (30 min by default) closes the channel;
	// it comes back later, to this or another replica. Default DefaultStoreOutageRequeue;
	// negative: hold it until the store answers or the channel closes.
	StoreOutageRequeue time.Duration
	Heartbeat          time.Duration // default 2s
	ConnectionName     string        // connection name shown in the management UI; default "rabbitkit-consumer"

	Logger  *slog.Logger     // default slog.Default()
	Metrics metrics.Recorder // default metrics.Nop

	// Callbacks run one at a time on a single goroutine of the Consumer, in the order the events
	// were committed. They must not block: the queue in front of them grows while they run. A
	// panicking callback is recovered and logged.
	OnGap      func(dedup.Event) // EventGapDetected and EventGapGivenUp
	OnLate     func(dedup.Event) // EventLateArrival
	OnEpoch    func(dedup.Event) // EventEpochChanged and EventEpochRetired
	OnParked   func(Parked)
	OnConflict func(Conflict)
	// OnStateChange is called on every connection state change (connecting, consuming, idle),
	// with the error that caused it.
	OnStateChange func(StateChange)

	// Tests: replace the amqp091-go dialers of the consuming and of the parking connection.
	dial, dialParking amqpseam.Dialer
}

// Parked describes a message published to the parking queue.
type Parked struct {
	Stamp   protocol.Stamp // zero when the message had no valid stamp
	Stamped bool
	Reason  string
	Queue   string // the parking queue
	// Accounted reports whether the stamp was committed as handled (a handler that kept failing),
	// so that the sequence number is not reported as a gap and redeliveries are dropped.
	Accounted bool
}

// Conflict reports a duplicate stamp whose body differs from the body that was handled. The
// duplicate is dropped; the first body's effect stands.
type Conflict struct {
	Stamp     protocol.Stamp
	FirstHash uint64 // dedup.BodyHash of the handled body
	DupHash   uint64 // dedup.BodyHash of the duplicate's body
}

func (c Config) withDefaults() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return c, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if len(c.URLs) == 0 {
		return bad("no URLs")
	}
	if err := amqpconn.CheckURLs(c.URLs, c.TLS); err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.Queue == "" {
		return bad("no Queue")
	}
	if err := c.Topology.Validate(); err != nil {
		return bad("%v", err)
	}
	if c.Prefetch < 0 || c.Workers < 0 || c.MaxBatch < 0 || c.MaxAttempts < 0 || c.DrainTimeout < 0 || c.ExpireInterval < 0 {
		return bad("negative Prefetch, Workers, MaxBatch, MaxAttempts, DrainTimeout or ExpireInterval")
	}
	if c.Prefetch > math.MaxUint16 {
		// basic.qos carries a 16-bit count; amqp091-go truncates silently (65536 would mean "no limit").
		return bad("Prefetch %d is above the AMQP limit of %d", c.Prefetch, math.MaxUint16)
	}
	if c.NoStamp > NoStampPark {
		return bad("unknown NoStamp policy %d", c.NoStamp)
	}
	c.URLs = slices.Clone(c.URLs)
	if c.ParkingQueue == "" {
		c.ParkingQueue = c.Queue + ".parked"
	}
	if c.ParkingQueue == c.Queue {
		return bad("ParkingQueue is the consumed queue")
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.Workers == 0 {
		c.Workers = 1
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxCrashes == 0 {
		c.MaxCrashes = DefaultMaxCrashes
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.StoreOutageRequeue == 0 {
		c.StoreOutageRequeue = DefaultStoreOutageRequeue
	}
	if c.RetryBackoff == nil {
		c.RetryBackoff = defaultRetryBackoff
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.ConnectionName == "" {
		c.ConnectionName = "rabbitkit-consumer"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Metrics = metrics.OrNop(c.Metrics)
	if _, err := dedup.New(c.Dedup); err != nil {
		return bad("%v", err)
	}
	if c.ExpireInterval == 0 {
		grace := c.Dedup.GapGrace
		if grace == 0 {
			grace = dedup.DefaultGapGrace
		}
		c.ExpireInterval = max(10*time.Millisecond, min(time.Second, grace/4))
	}
	return c, nil
}

func defaultRetryBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.Multiplier, b.RandomizationFactor = 100*time.Millisecond, 2, 0.5
	b.MaxInterval, b.MaxElapsedTime = 5*time.Second, 0
	b.Reset()
	return b
}

// parkingTopology returns the topology to declare on every connect: the caller's, plus the parking
// queue unless it is declared already.
func (c *Config) parkingTopology() topology.Topology {
	t := c.Topology
	if t.Logger == nil {
		t.Logger = c.Logger
	}
	// A quorum queue dead-letters to topology.ParkingQueueOf(its name) unless its Args say
	// otherwise, not to a custom ParkingQueue: every declarer of the queue (publishers too) must
	// give it the same arguments, or the second gets 406.
	for _, q := range t.Queues {
		if q.Name == c.ParkingQueue {
			return t
		}
	}
	t.Queues = append(slices.Clone(t.Queues), topology.Queue{Name: c.ParkingQueue})
	return t
}
