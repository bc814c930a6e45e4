package pgoutbox

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/internal/pgmigrate"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Defaults applied by Open to zero-valued Options fields.
const (
	DefaultTable        = "rabbitkit_outbox"
	DefaultPollInterval = 200 * time.Millisecond
	DefaultLeaseTTL     = 10 * time.Second
	DefaultCloseTimeout = 2 * time.Second
)

// Errors.
var (
	// ErrInvalidConfig wraps a refusal of Options.
	ErrInvalidConfig = errors.New("pgoutbox: invalid options")
	// ErrSchemaVersion: the table was migrated by a newer version of rabbitkit (see pginbox's).
	ErrSchemaVersion = errors.New("pgoutbox: the outbox table was migrated by a newer version of rabbitkit")
	// ErrSourceMismatch: the table belongs to another source. One outbox is one sequence authority.
	ErrSourceMismatch = errors.New("pgoutbox: the outbox table belongs to another source")
	// ErrLeaseLost is returned by the outbox's reads when this relay's lease may have expired.
	ErrLeaseLost = errors.New("pgoutbox: relay lease not held")
	// ErrTooOld is returned by Settle for a token older than MarkRetention whose mark is gone:
	// whether its transaction committed can no longer be told.
	ErrTooOld = errors.New("pgoutbox: transaction too old to settle")
)

// Metric names reported through Options.Metrics.
const (
	// MetricEpochBumps counts epochs started because the database's identity changed.
	MetricEpochBumps = "rabbitkit_outbox_epoch_bumps_total"
	// MetricLeaseHeld is 1 while this process's relay holds the lease.
	MetricLeaseHeld = "rabbitkit_outbox_relay_lease_held"
	// MetricLeaseTakeovers counts leases acquired by this process's relay.
	MetricLeaseTakeovers = "rabbitkit_outbox_relay_lease_acquired_total"
	// MetricDeletesPending is the relay's pending-delete set while deletes fail: the confirmed
	// rows of the last failed DELETE, which the relay's deleter retries with backoff (keeping them
	// out of resends); 0 once a DELETE commits, and 0 in normal operation (a DELETE in flight is
	// not counted). A value that stays above 0 means the deletes keep failing; rows a stopped
	// relay could not delete are sent again by the next holder (consumers drop them).
	MetricDeletesPending = "rabbitkit_outbox_relay_deletes_pending"
)

// LabelTable is the label on every Metric* of an Outbox: Options.Table. (A relay's publisher
// metrics carry the publisher's labels, publisher.LabelClient.) Outboxes opened on the same table
// in one process report into the same series on purpose: the metrics describe the table (its
// writes, its backlog), not the handle, so no identity is claimed (metrics.Claimer); two relays
// on one registry are still told apart by their publisher's client label.
const LabelTable = "table"

// Options configure an Outbox.
type Options struct {
	// Table is the outbox table, "name" or "schema.name" (letters, digits, _; at most 48 bytes
	// each). Beside it live <table>_schema (migrations), <table>_meta (source, epoch, database
	// identity, last relay id), <table>_counters (per (epoch, stream) the last seq) and
	// <table>_leases (the relay lease). Default DefaultTable.
	Table string
	// Source is the service's name (rk-source), required: one sequence authority shared by all
	// replicas of the service. Open refuses a table that holds another source.
	Source string
	// Logger, default slog.Default().
	Logger *slog.Logger
	// Metrics receives the Metric* values. Default metrics.Nop.
	Metrics metrics.Recorder
	// NoMandatory stores messages without the mandatory flag (unroutable ones are then dropped by
	// the broker instead of parked). Default false.
	NoMandatory bool
	// PollInterval: how often a relay looks for new rows without a notification. Default
	// DefaultPollInterval.
	PollInterval time.Duration
	// Notify makes PublishTx send pg_notify in the caller's transaction, and the relay LISTEN, so
	// that an idle relay wakes at COMMIT instead of at the next poll. It costs writers a global
	// lock at COMMIT (see docs/DESIGN.md, publisher/pgoutbox, for the measured cost). Default off.
	Notify bool
	// LeaseTTL is the relay lease's lifetime; the holder renews it every LeaseTTL/5 and stops
	// sending before it can expire when it cannot renew. Default DefaultLeaseTTL (minimum 1s).
	LeaseTTL time.Duration
	// CloseTimeout bounds how long a relay that stops waits for the confirms in flight. Default
	// DefaultCloseTimeout; it is also capped below the lease's remaining time.
	CloseTimeout time.Duration
	// Owner names this process in the lease row. Default host-pid-random.
	Owner string
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

func (o Options) withDefaults() (Options, error) {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Source == "" {
		return o, fmt.Errorf("%w: Source is required", ErrInvalidConfig)
	}
	if err := protocol.CheckSource(o.Source); err != nil {
		return o, fmt.Errorf("%w: Source: %w", ErrInvalidConfig, err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Metrics = metrics.OrNop(o.Metrics)
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.LeaseTTL < time.Second {
		return o, fmt.Errorf("%w: LeaseTTL %v below 1s", ErrInvalidConfig, o.LeaseTTL)
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = DefaultCloseTimeout
	}
	return o, nil
}

// names holds the quoted identifiers of one outbox.
type names struct {
	table                                 string // as configured
	t, schemaT, metaT, countersT, leasesT string // quoted
	marksT                                string // quoted
	pendingIdx, unassignedIdx, parkedIdx  string // quoted, unqualified
	marksIdx                              string // quoted, unqualified
	channel                               string // NOTIFY channel
	lockKey                               int64
}

func newNames(table string) (*names, error) {
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return nil, fmt.Errorf("%w: table %q: at most schema.table", ErrInvalidConfig, table)
	}
	for _, p := range parts {
		if !identRE.MatchString(p) {
			return nil, fmt.Errorf("%w: table %q: %q is not an identifier of letters, digits and _ (at most 48 bytes, not starting with a digit)", ErrInvalidConfig, table, p)
		}
	}
	base, schema := parts[len(parts)-1], ""
	if len(parts) == 2 {
		schema = parts[0]
	}
	ident := func(name string) string {
		if schema != "" {
			return pgx.Identifier{schema, name}.Sanitize()
		}
		return pgx.Identifier{name}.Sanitize()
	}
	return &names{
		table: table, t: ident(base), schemaT: ident(base + "_schema"), metaT: ident(base + "_meta"),
		countersT: ident(base + "_counters"), leasesT: ident(base + "_leases"), marksT: ident(base + "_marks"),
		marksIdx:      pgx.Identifier{base + "_marks_at_idx"}.Sanitize(),
		pendingIdx:    pgx.Identifier{base + "_pending_idx"}.Sanitize(),
		unassignedIdx: pgx.Identifier{base + "_unassigned_idx"}.Sanitize(),
		parkedIdx:     pgx.Identifier{base + "_parked_idx"}.Sanitize(),
		channel:       strings.ReplaceAll(table, ".", "_"),
		lockKey:       pgmigrate.LockKey("rabbitkit/pgoutbox", schema, base),
	}, nil
}
