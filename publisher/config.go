package publisher

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/topology"
)

// Defaults applied by New to zero-valued Config fields.
const (
	DefaultMaxInFlight = 512     // where amqp091-go pipelined confirms stop gaining on this hardware
	DefaultMaxAttempts = 10      // nacks or attributed channel errors before an entry is parked
	DefaultReadBatch   = 256     // journal entries read per page
	DefaultMaxBuffered = 8192    // messages waiting to be journaled (PublishAsync / TryPublish bound)
	maxAppendBatch     = 1024    // entries per journal transaction from the accept buffer
	parkedMemory       = 1 << 16 // parked outcomes remembered for receipts
	defaultTailCache   = 4 << 20 // journal.Options.TailCacheBytes for a journal opened from JournalPath

	// DefaultMissingExchangeGrace: how long an exchange may be missing before messages to it are
	// parked at their first failure (see Config.MissingExchangeGrace).
	DefaultMissingExchangeGrace = time.Minute
)

// Config configures a Publisher. URLs and either Journal or (JournalPath and Source) are required;
// every other zero field takes a safe default.
type Config struct {
	// URLs of the broker (several for a cluster), tried in turn on every (re)connect:
	// amqp://user:pass@host:5672/vhost, or amqps:// for TLS. New refuses a URL that does not parse.
	URLs []string
	// TLS configures the amqps:// URLs: root CAs, client certificates for mutual TLS, minimum
	// version. It is cloned for every connection; an empty ServerName takes the URL's
	// server_name_indication parameter, else its host. Nil: the URLs' own cacertfile, certfile,
	// keyfile and server_name_indication parameters over the system roots. With TLS set, New
	// refuses plain amqp:// URLs and URLs naming certificate files (they would be ignored). For
	// certificate login add ?auth_mechanism=external to the URL (rabbitmq_auth_mechanism_ssl).
	TLS *tls.Config
	// Source is the stable name of this publishing instance (rk-source). Required with JournalPath;
	// with Journal it defaults to Journal.Source() and must match it.
	Source string
	// Journal is an opened journal. The Publisher does not close it. Exactly one of Journal and
	// JournalPath must be set.
	Journal *journal.Journal
	// JournalPath opens (creating if needed) a journal that the Publisher owns and closes.
	JournalPath string
	// JournalOptions are used with JournalPath. Source and Logger are filled in when empty, and
	// TailCacheBytes defaults to 4 MiB (instead of the journal's 16 MiB) to bound the heap.
	JournalOptions journal.Options
	// Topology is declared on every new channel, before anything is sent.
	Topology topology.Topology
	// Logger receives connection state changes, parked messages and errors. Default slog.Default().
	Logger *slog.Logger
	// Metrics receives the Metric* counters and gauges. Default metrics.Nop.
	Metrics metrics.Recorder
	// MaxInFlight bounds unconfirmed messages on the channel. Default DefaultMaxInFlight.
	MaxInFlight int
	// MaxAttempts is how many sends of one entry may end in a basic.nack or an attributed channel
	// error (404, 403, ...) before it is parked. Default DefaultMaxAttempts. Connection losses
	// never count. A 406 PRECONDITION_FAILED parks at once: on basic.publish it is about the
	// message itself (a user-id other than the connection's user, a body over the broker's
	// max_message_size), and a retry cannot pass until an operator changes something; re-drive
	// the parked message then.
	MaxAttempts int
	// MissingExchangeGrace: once publishes to an exchange have failed with 404 (the exchange does
	// not exist) or 403 (this user may not write to it) for this long, each further message to it
	// is parked at its first such failure instead of after MaxAttempts sends with RetryBackoff
	// between them. The journal is sent in order, so without this every message behind a misspelt,
	// deleted or forbidden exchange would wait MaxAttempts backoffs (about 90 s with the defaults)
	// per message sent there. A confirmed or returned message to the exchange ends the state, and
	// so do 5 minutes without a 404 or 403 from it (make RetryBackoff's longest wait shorter than
	// that); parked messages can be re-driven. Within the grace, an exchange that another service
	// declares (or a permission an operator grants) a little later loses nothing. Default
	// DefaultMissingExchangeGrace; negative: never, always MaxAttempts.
	MissingExchangeGrace time.Duration
	// ReadBatch is the journal page size. Default DefaultReadBatch.
	ReadBatch int
	// MaxBuffered bounds messages accepted by PublishAsync/Publish but not yet journaled.
	// Default DefaultMaxBuffered.
	MaxBuffered int
	// Heartbeat of the AMQP connection; a black-holed connection is replaced after about three.
	// Default amqpconn.DefaultHeartbeat (2s).
	Heartbeat time.Duration
	// ReconnectBackoff is the dial schedule across URLs, also applied between connections that die
	// before making progress. Default amqpconn.NewBackoff (100ms..5s, jitter, forever).
	ReconnectBackoff func() backoff.BackOff
	// RetryBackoff is the wait before resending after a nack or a channel error. It restarts after
	// every positive confirm. Default exponential 250ms..30s, jitter 0.5, forever.
	RetryBackoff func() backoff.BackOff
	// ConnectionName is shown in the management UI. Default "rabbitkit-publisher <source>".
	ConnectionName string
	// NoMandatory publishes without the mandatory flag: unroutable messages are then silently
	// dropped by the broker (and confirmed). Default false: mandatory, so they are parked and reported.
	NoMandatory bool
	// OnParked is called when an entry is parked (unroutable, or MaxAttempts reached). Re-drive a
	// parked entry only after its cause is fixed: re-driving from OnParked while it persists parks
	// it again at once.
	OnParked func(*ParkedError)
	// OnStateChange is called on every connection state change.
	//
	// Both callbacks run on the Publisher's callback goroutine, one at a time, in the order of their
	// events (as the consumer's callbacks do): a slow callback delays only other callbacks, never
	// sending; a panicking one is logged. Close returns after the callbacks queued before it ran.
	OnStateChange func(StateChange)

	dial amqpseam.Dialer // tests: replaces the amqp091-go dialer (amqpseam.Dial)
	// outbox, for tests: wraps the journal as the sender sees it (to inject failures).
	outbox func(Outbox) Outbox
}

func defaultRetryBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 250 * time.Millisecond
	b.MaxInterval = 30 * time.Second
	b.RandomizationFactor = 0.5
	b.Multiplier = 2
	b.MaxElapsedTime = 0
	return b
}

// validate applies defaults and checks the config once.
func (c Config) validate() (Config, error) { return c.check(nil) }

// check is validate; with ob (NewRelay) the journal fields must be unset and Source defaults to,
// and must match, ob.Source().
func (c Config) check(ob Outbox) (Config, error) {
	if len(c.URLs) == 0 && c.dial == nil {
		return c, fmt.Errorf("%w: no URLs", ErrInvalidConfig)
	}
	if err := amqpconn.CheckURLs(c.URLs, c.TLS); err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	switch {
	case ob != nil:
		if c.Journal != nil || c.JournalPath != "" {
			return c, fmt.Errorf("%w: a relay sends its outbox: Journal and JournalPath must be unset", ErrInvalidConfig)
		}
		if c.Source == "" {
			c.Source = ob.Source()
		}
		if c.Source != ob.Source() {
			return c, fmt.Errorf("%w: Source %q does not match the outbox's %q", ErrInvalidConfig, c.Source, ob.Source())
		}
	case c.Journal != nil && c.JournalPath != "":
		return c, fmt.Errorf("%w: set Journal or JournalPath, not both", ErrInvalidConfig)
	case c.Journal == nil && c.JournalPath == "":
		return c, fmt.Errorf("%w: Journal or JournalPath is required", ErrInvalidConfig)
	case c.Journal != nil:
		if c.Source == "" {
			c.Source = c.Journal.Source()
		}
		if c.Source != c.Journal.Source() {
			return c, fmt.Errorf("%w: Source %q does not match the journal's %q", ErrInvalidConfig, c.Source, c.Journal.Source())
		}
	default:
		if c.Source == "" {
			c.Source = c.JournalOptions.Source
		}
		if c.Source == "" {
			return c, fmt.Errorf("%w: Source is required", ErrInvalidConfig)
		}
	}
	if err := protocol.CheckSource(c.Source); err != nil {
		return c, fmt.Errorf("%w: Source: %w", ErrInvalidConfig, err)
	}
	if err := c.Topology.Validate(); err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.MaxInFlight < 0 || c.MaxAttempts < 0 || c.ReadBatch < 0 || c.MaxBuffered < 0 || c.Heartbeat < 0 {
		return c, fmt.Errorf("%w: negative limit", ErrInvalidConfig)
	}
	if c.MaxInFlight > 65535 {
		return c, fmt.Errorf("%w: MaxInFlight %d above 65535", ErrInvalidConfig, c.MaxInFlight)
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MissingExchangeGrace == 0 {
		c.MissingExchangeGrace = DefaultMissingExchangeGrace
	}
	if c.ReadBatch == 0 {
		c.ReadBatch = DefaultReadBatch
	}
	if c.MaxBuffered == 0 {
		c.MaxBuffered = DefaultMaxBuffered
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = amqpconn.DefaultHeartbeat
	}
	if c.ReconnectBackoff == nil {
		c.ReconnectBackoff = amqpconn.NewBackoff
	}
	if c.RetryBackoff == nil {
		c.RetryBackoff = defaultRetryBackoff
	}
	if c.ConnectionName == "" {
		c.ConnectionName = "rabbitkit-publisher " + c.Source
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Metrics = metrics.OrNop(c.Metrics)
	return c, nil
}
