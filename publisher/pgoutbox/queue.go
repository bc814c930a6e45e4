package pgoutbox

import (
	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
)

// QueuePublish queues PublishTx's statement for msg on b, so that the caller sends it together
// with its own statements in one round trip (tx.SendBatch(ctx, b)) instead of one more round
// trip per message. It validates msg at once (errors wrap publisher.ErrInvalidMessage). The
// stamp is written to *st when the batch's results are read (BatchResults.Close or the queued
// query's turn); the error of the statement is the batch's. Everything PublishTx says holds:
// the batch must run in the transaction that is then committed, and the stream's counter row
// stays locked until that transaction ends.
//
// A batch runs its statements in order, so queue the business row first if its statement can
// fail for a reason the caller wants to see before the message's.
func (o *Outbox) QueuePublish(b *pgx.Batch, msg publisher.Message, st *protocol.Stamp) error {
	q, args, stream, err := o.publishArgs(&msg)
	if err != nil {
		return err
	}
	b.Queue(q, args...).QueryRow(func(row pgx.Row) error {
		s := protocol.Stamp{Source: o.opts.Source, Stream: stream}
		if err := o.scanStamp(row, &s); err != nil {
			return err
		}
		if st != nil {
			*st = s
		}
		return nil
	})
	return nil
}
