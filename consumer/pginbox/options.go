package pginbox

import (
	"fmt"
	"hash/fnv"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// Defaults used for zero Options fields.
const (
	DefaultTable        = "rabbitkit_inbox"
	DefaultMaxTxRetries = 5
	DefaultTxTimeout    = 30 * time.Second
	DefaultExpireLimit  = 1000
)

// Options configures Open and OpenSQL. The zero value is valid.
type Options struct {
	// Table is the inbox table's name, default "rabbitkit_inbox"; it may be schema-qualified
	// ("app.inbox", the schema must exist). Each part is an SQL identifier of letters, digits and
	// underscores (not starting with a digit), at most 48 bytes; it is quoted, so it is
	// case-sensitive. Open also creates Table+"_schema" (the migration record) beside it.
	Table string
	// Dedup is the window the store classifies with, inside its transactions. Every replica on
	// the same table must use the same one. DedupConfig returns it with its defaults.
	Dedup dedup.Config
	// Logger receives retries and migrations. Default slog.Default().
	Logger *slog.Logger
	// MaxTxRetries is how many times one Commit is rerun after a serialization failure (40001) or
	// a deadlock (40P01) before it returns an error wrapping consumer.ErrStoreUnavailable.
	// Default 5; negative means none.
	MaxTxRetries int
	// TxTimeout bounds one attempt of a Commit (row lock waits, the handlers' effects, COMMIT), and
	// each Peek, Load and View's own statements. A black-holed connection is noticed only by it:
	// PostgreSQL's client protocol has no heartbeat. When it fires before COMMIT the error wraps
	// consumer.ErrStoreUnavailable; during COMMIT, also consumer.ErrCommitUnknown. Default 30 s.
	TxTimeout time.Duration
	// ExpireLimit caps the rows one Batch.Expire transaction loads (the most overdue first); the
	// rest wait for the next one. Default 1000.
	ExpireLimit int
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

// withDefaults validates opts and fills in defaults.
func (o Options) withDefaults() (Options, dedup.Config, error) {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.MaxTxRetries == 0:
		o.MaxTxRetries = DefaultMaxTxRetries
	case o.MaxTxRetries < 0:
		o.MaxTxRetries = 0
	}
	if o.TxTimeout < 0 || o.ExpireLimit < 0 {
		return o, dedup.Config{}, fmt.Errorf("%w: pginbox: negative TxTimeout or ExpireLimit", consumer.ErrInvalidConfig)
	}
	if o.TxTimeout == 0 {
		o.TxTimeout = DefaultTxTimeout
	}
	if o.ExpireLimit == 0 {
		o.ExpireLimit = DefaultExpireLimit
	}
	tr, err := dedup.New(o.Dedup)
	if err != nil {
		return o, dedup.Config{}, fmt.Errorf("%w: pginbox: %w", consumer.ErrInvalidConfig, err)
	}
	return o, tr.Config(), nil
}

// queries holds the SQL of one table, its identifiers quoted.
type queries struct {
	table      string // as configured, for messages
	lockKey    int64  // pg_advisory_xact_lock key of the migrations
	t          string // quoted table
	schemaT    string // quoted migration record table
	membersT   string // quoted members table of partitioned groups
	leasesT    string // quoted leases table of partitioned groups
	schemaName string // "" or the schema part
	baseName   string // the table part

	insert, lock, due, update, del, peek, load string
}

func newQueries(table string) (*queries, error) {
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return nil, fmt.Errorf("%w: pginbox: table %q: at most schema.table", consumer.ErrInvalidConfig, table)
	}
	for _, p := range parts {
		if !identRE.MatchString(p) {
			return nil, fmt.Errorf("%w: pginbox: table %q: %q is not an identifier of letters, digits and _ (at most 48 bytes, not starting with a digit)", consumer.ErrInvalidConfig, table, p)
		}
	}
	q := &queries{table: table, baseName: parts[len(parts)-1]}
	ident := func(name string) string {
		if len(parts) == 2 {
			return pgx.Identifier{parts[0], name}.Sanitize()
		}
		return pgx.Identifier{name}.Sanitize()
	}
	if len(parts) == 2 {
		q.schemaName = parts[0]
	}
	q.t = ident(q.baseName)
	q.schemaT = ident(q.baseName + "_schema")
	q.membersT = ident(q.baseName + "_members")
	q.leasesT = ident(q.baseName + "_leases")
	h := fnv.New64a()
	h.Write([]byte("rabbitkit/pginbox:" + q.schemaName + "." + q.baseName))
	q.lockKey = int64(h.Sum64())

	const keys = `SELECT * FROM unnest($1::bytea[], $2::bytea[])`
	q.insert = `INSERT INTO ` + q.t + ` (source, stream) SELECT s, r FROM unnest($1::bytea[], $2::bytea[]) AS u(s, r) ORDER BY s, r ON CONFLICT (source, stream) DO NOTHING`
	q.lock = `SELECT source, stream, state, expire_at FROM ` + q.t + ` WHERE (source, stream) IN (` + keys + `) ORDER BY source, stream FOR UPDATE`
	q.due = `SELECT source, stream, state, expire_at FROM ` + q.t + ` WHERE expire_at <= $1 ORDER BY expire_at LIMIT $2 FOR UPDATE SKIP LOCKED`
	q.update = `UPDATE ` + q.t + ` AS t SET state = u.state, expire_at = timestamptz 'epoch' + u.e * interval '1 microsecond', updated_at = now() ` +
		`FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::int8[]) AS u(source, stream, state, e) WHERE t.source = u.source AND t.stream = u.stream`
	q.del = `DELETE FROM ` + q.t + ` WHERE (source, stream) IN (` + keys + `)`
	q.peek = `SELECT source, stream, state FROM ` + q.t + ` WHERE (source, stream) IN (` + keys + `) AND state IS NOT NULL`
	q.load = `SELECT source, stream, state FROM ` + q.t + ` WHERE state IS NOT NULL ORDER BY source, stream`
	return q, nil
}
