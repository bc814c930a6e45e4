package pgoutbox

import (
	"context"
	"fmt"

	"github.com/rabbitkit/rabbitkit/protocol"
)

// Pending reports which of stamps (from PublishTx, of committed transactions) are still in the
// outbox: pending (not confirmed by the broker yet) or parked. A stamp in neither was confirmed
// and its row deleted, whichever replica's relay sent it (or was never committed, or belongs to
// another source). Both results keep stamps' order. One query: a join of the stamps with the
// outbox's rows, so poll it with the stamps still pending, not every stamp ever written.
func (o *Outbox) Pending(ctx context.Context, stamps []protocol.Stamp) (pending, parked []protocol.Stamp, err error) {
	var idx []int
	var epochs, seqs []int64
	var streams [][]byte
	for i, s := range stamps {
		if s.Source != o.opts.Source {
			continue
		}
		idx = append(idx, i)
		epochs, streams, seqs = append(epochs, s.Epoch), append(streams, []byte(s.Stream)), append(seqs, s.Seq)
	}
	if len(idx) == 0 {
		return nil, nil, nil
	}
	rows, err := o.pool.Query(ctx, `SELECT u.i, t.parked
		FROM unnest($1::int8[], $2::bytea[], $3::int8[]) WITH ORDINALITY AS u(epoch, stream, seq, i)
		JOIN `+o.n.t+` t ON t.epoch = u.epoch AND t.stream = u.stream AND t.seq = u.seq ORDER BY u.i`, epochs, streams, seqs)
	if err != nil {
		return nil, nil, fmt.Errorf("pgoutbox: pending: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var i int64
		var p bool
		if err := rows.Scan(&i, &p); err != nil {
			return nil, nil, fmt.Errorf("pgoutbox: pending: %w", err)
		}
		s := stamps[idx[i-1]]
		if p {
			parked = append(parked, s)
		} else {
			pending = append(pending, s)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("pgoutbox: pending: %w", err)
	}
	return pending, parked, nil
}
