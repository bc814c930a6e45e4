package pgoutbox

import (
	"context"
	"database/sql"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
)

// PublishSQLTx is PublishTx for database/sql: it stamps msg and inserts it into the outbox in the
// caller's *sql.Tx, with the same statement, validation, counter lock and guarantees. It works
// with pgx's github.com/jackc/pgx/v5/stdlib driver and with any PostgreSQL driver that sends
// []byte as bytea (the statement has no array parameters). The Outbox itself (Open, Relay) still
// runs on a pgxpool.Pool; tx may come from a *sql.DB on the same database.
func (o *Outbox) PublishSQLTx(ctx context.Context, tx *sql.Tx, msg publisher.Message) (protocol.Stamp, error) {
	q, args, stream, err := o.publishArgs(&msg)
	if err != nil {
		return protocol.Stamp{}, err
	}
	st := protocol.Stamp{Source: o.opts.Source, Stream: stream}
	if err := o.scanStamp(tx.QueryRowContext(ctx, q, args...), &st); err != nil {
		return protocol.Stamp{}, err
	}
	return st, nil
}
