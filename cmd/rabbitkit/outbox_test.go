package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/internal/pgtest"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/publisher/pgoutbox"
)

// epochRE masks the outbox's epoch, which differs between databases.
var epochRE = regexp.MustCompile(`rk2:billing:[0-9]+:|epoch +[0-9]+|"epoch":[0-9]+`)

func TestOutbox(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	pool := pgtest.PoolOn(t, dsn, 4)
	o, err := pgoutbox.Open(ctx, pool, pgoutbox.Options{Source: "billing"})
	require.NoError(t, err)
	require.NoError(t, pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for range 3 {
			if _, err := o.PublishTx(ctx, tx, publisher.Message{Exchange: "invoices", RoutingKey: "issued", Stream: "s", Body: []byte("{}")}); err != nil {
				return err
			}
		}
		return nil
	}))
	// Park row 2 as a relay does on a basic.return (the relay's Park is internal: set the columns).
	_, err = pool.Exec(ctx, `UPDATE rabbitkit_outbox SET parked = true, park_reason = 'unroutable: 312 NO_ROUTE', parked_at = now() WHERE seq = 2`)
	require.NoError(t, err)
	secret := withPassword(t, dsn)
	mask := func(s string) string { return epochRE.ReplaceAllString(s, "EPOCH") }

	code, out, stderr := cli(t, "outbox", "stats", "-pg", secret)
	require.Equal(t, 0, code, stderr)
	golden(t, "outbox_stats", mask(out))
	code, out, stderr = cli(t, "outbox", "-json", "stats", "-pg", secret)
	require.Equal(t, 0, code, stderr)
	var st outboxStatsOut
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	require.Equal(t, "billing", st.Source)
	require.Equal(t, 2, st.Pending)
	require.Equal(t, 1, st.Parked)
	require.Equal(t, int64(4), st.NextSeq["s"])

	code, out, stderr = cli(t, "outbox", "pending", "-pg", secret)
	require.Equal(t, 0, code, stderr)
	golden(t, "outbox_pending", mask(out))
	code, out, stderr = cli(t, "outbox", "parked", "-pg", secret)
	require.Equal(t, 0, code, stderr)
	golden(t, "outbox_parked", mask(out))
	code, out, stderr = cli(t, "outbox", "parked", "-pg", secret, "-json")
	require.Equal(t, 0, code, stderr)
	var e entryOut
	require.NoError(t, json.Unmarshal([]byte(out), &e))
	require.Equal(t, int64(2), e.Seq)
	require.Contains(t, e.Reason, "NO_ROUTE")
	require.NotNil(t, e.ParkedAt)

	code, out, stderr = cli(t, "outbox", "redrive", "-pg", secret, "all")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "re-driven 1 parked rows")
	code, out, _ = cli(t, "outbox", "-json", "stats", "-pg", secret)
	require.Equal(t, 0, code)
	require.Contains(t, out, `"parked":0`)
	require.Contains(t, out, `"pending":3`)

	// Usage, a table that is not there (never created), an unreachable server.
	code, _, _ = cli(t, "outbox", "stats")
	require.Equal(t, 2, code)
	code, _, _ = cli(t, "outbox", "redrive", "-pg", secret, "x")
	require.Equal(t, 2, code)
	code, _, stderr = cli(t, "outbox", "stats", "-pg", secret, "-table", "nope")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "nope")
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename LIKE 'nope%'`).Scan(&n))
	require.Zero(t, n, "the CLI created a table")
	code, _, stderr = cli(t, "outbox", "stats", "-pg", "postgres://postgres:"+testPassword+"@127.0.0.1:1/x?connect_timeout=2")
	require.Equal(t, 1, code)
	require.True(t, strings.Contains(stderr, "xxxxx"), stderr)
}
