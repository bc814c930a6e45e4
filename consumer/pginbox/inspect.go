package pginbox

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
)

// Inspect reads the dedup state of every stream of the inbox table (Options.Table; "" is
// DefaultTable) in (source, stream) order, for operator tools (cmd/rabbitkit). It only reads: it
// neither creates nor migrates the table, and takes no row lock.
func Inspect(ctx context.Context, pool *pgxpool.Pool, table string) ([]consumer.StreamInfo, error) {
	if table == "" {
		table = DefaultTable
	}
	q, err := newQueries(table)
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, "SELECT source, stream, state FROM "+q.t+" WHERE state IS NOT NULL ORDER BY source, stream")
	if err != nil {
		return nil, fmt.Errorf("pginbox: inspect %s: %w", table, err)
	}
	states, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (consumer.StreamState, error) {
		var src, stream, state []byte
		err := r.Scan(&src, &stream, &state)
		return consumer.StreamState{Key: dedup.Key{Source: string(src), Stream: string(stream)}, State: state}, err
	})
	if err != nil {
		return nil, fmt.Errorf("pginbox: inspect %s: %w", table, err)
	}
	return consumer.InspectStates(states)
}
