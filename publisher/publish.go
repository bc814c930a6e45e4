package publisher

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"

	"github.com/rabbitkit/rabbitkit/internal/group"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/journal"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// Publish journals msg and returns once it is durably journaled: from then on it will reach the
// broker, in order within its stream, whatever happens to the connection, the broker or this
// process. It does not wait for the broker: use the receipt's Wait (or Flush) for the confirm.
//
// While the broker is unreachable Publish keeps succeeding, up to the journal's bounds (then it
// waits for space). It never waits past ctx: when ctx ends while the message is still queued it is
// withdrawn and the error wraps ctx's error; when the journal was already writing it, the error
// wraps ErrAcceptUnknown and the receipt's Journaled channel tells the answer.
func (p *Publisher) Publish(ctx context.Context, msg Message) (*Receipt, error) {
	r := p.PublishAsync(ctx, msg)
	return r, r.waitAccepted(ctx)
}

// PublishAsync hands msg to the journal and returns at once with its receipt; it waits only while
// MaxBuffered messages are already waiting to be journaled (bounded by ctx). Failures (invalid
// message, ErrClosed, ctx) are reported through the receipt.
func (p *Publisher) PublishAsync(ctx context.Context, msg Message) *Receipt {
	r := p.newReceipt(&msg)
	if r.jerr == nil {
		p.submit(ctx, &job{rs: []*Receipt{r}}, true)
	}
	return r
}

// TryPublish is PublishAsync that fails at once with ErrBufferFull instead of waiting for room in
// the accept buffer. It never waits for the journal either; nil error means "queued for journaling".
func (p *Publisher) TryPublish(msg Message) (*Receipt, error) {
	r := p.newReceipt(&msg)
	if r.jerr != nil {
		return r, r.jerr
	}
	if err := p.submit(context.Background(), &job{rs: []*Receipt{r}}, false); err != nil {
		return r, err
	}
	return r, nil
}

// PublishBatch journals msgs in one transaction, all or nothing, in order, and returns once they are
// journaled (same ctx rules as Publish). One goroutine gets the throughput of many this way.
func (p *Publisher) PublishBatch(ctx context.Context, msgs []Message) ([]*Receipt, error) {
	rs := make([]*Receipt, len(msgs))
	jb := &job{rs: rs}
	var bad error
	for i := range msgs {
		rs[i] = p.newReceipt(&msgs[i])
		if rs[i].jerr != nil && bad == nil {
			bad = fmt.Errorf("message %d: %w", i, rs[i].jerr)
		}
	}
	if bad != nil {
		for _, r := range rs {
			if r.jerr == nil {
				r.setJournaled(bad)
			}
		}
		return rs, bad
	}
	if len(rs) == 0 {
		return rs, nil
	}
	if err := p.submit(ctx, jb, true); err != nil {
		return rs, err
	}
	if err := rs[0].waitAccepted(ctx); err != nil {
		return rs, err
	}
	// The appender reports the receipts of a job one after the other: wait for the last one too.
	return rs, rs[len(rs)-1].WaitJournaled(ctx)
}

// submit hands jb to the appender. On failure every receipt of jb is failed with the returned error.
func (p *Publisher) submit(ctx context.Context, jb *job, wait bool) error {
	for _, r := range jb.rs {
		r.job = jb
	}
	err := p.enqueue(ctx, jb, wait)
	if err != nil {
		for _, r := range jb.rs {
			r.setJournaled(err)
		}
	}
	return err
}

func (p *Publisher) enqueue(ctx context.Context, jb *job, wait bool) error {
	if !p.enter() {
		return ErrClosed
	}
	defer p.calls.Done()
	select {
	case p.queue <- jb:
		return nil
	default:
	}
	if !wait {
		return ErrBufferFull
	}
	select {
	case p.queue <- jb:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("publisher: accept buffer full: %w", ctx.Err())
	case <-p.closing:
		return ErrClosed
	}
}

// waitAccepted waits until r is journaled; when ctx ends first it withdraws r's job if the appender
// has not taken it yet.
func (r *Receipt) waitAccepted(ctx context.Context) error {
	select {
	case <-r.journaled:
		return r.jerr
	default:
	}
	select {
	case <-r.journaled:
		return r.jerr
	case <-ctx.Done():
		if r.job != nil && r.job.state.CompareAndSwap(jobQueued, jobCanceled) {
			err := fmt.Errorf("publisher: not accepted: %w", ctx.Err())
			for _, x := range r.job.rs {
				x.setJournaled(err)
			}
			return err
		}
		select {
		case <-r.journaled: // finished meanwhile
			return r.jerr
		default:
		}
		return fmt.Errorf("%w: %w", ErrAcceptUnknown, ctx.Err())
	}
}

// newReceipt validates msg and builds its journal entry; an invalid message gives a failed receipt.
func (p *Publisher) newReceipt(msg *Message) *Receipt {
	r := &Receipt{p: p, journaled: make(chan struct{})}
	e, err := p.entry(msg)
	if err != nil {
		r.jerr = err
		close(r.journaled)
		return r
	}
	r.entry = e
	return r
}

func (p *Publisher) entry(msg *Message) (*journal.Entry, error) {
	return NewEntry(p.cfg.Source, p.j.Epoch(), msg, !p.cfg.NoMandatory)
}

// NewEntry validates msg exactly as Publish does and builds the outbox entry Publish would journal
// for it (not numbered yet: ID and Seq are zero), for outboxes other than the journal (package
// pgoutbox). source and epoch bound the stamp's length; mandatory is the entry's mandatory flag
// (Publish sets it unless Config.NoMandatory). Errors wrap ErrInvalidMessage. The entry shares
// msg.Body.
func NewEntry(source string, epoch int64, msg *Message, mandatory bool) (*journal.Entry, error) {
	stream := msg.Stream
	if stream == "" {
		stream = protocol.DefaultStream(msg.Exchange, msg.RoutingKey)
	}
	var headers map[string]any
	if len(msg.Headers) > 0 {
		if err := msg.Headers.Validate(); err != nil {
			return nil, fmt.Errorf("%w: headers: %w", ErrInvalidMessage, err)
		}
		headers = fromTable(msg.Headers)
	}
	dm := msg.DeliveryMode
	if dm == 0 {
		dm = amqp.Persistent
	}
	e := &journal.Entry{
		Stream: stream, Exchange: msg.Exchange, RoutingKey: msg.RoutingKey, Mandatory: mandatory,
		Properties: journal.Properties{
			ContentType: msg.ContentType, ContentEncoding: msg.ContentEncoding, DeliveryMode: dm,
			Priority: msg.Priority, CorrelationID: msg.CorrelationID, ReplyTo: msg.ReplyTo,
			Expiration: msg.Expiration, MessageID: msg.MessageID, Timestamp: msg.Timestamp,
			Type: msg.Type, UserID: msg.UserID, AppID: msg.AppID,
		},
		Headers: headers,
		Body:    msg.Body,
	}
	bound := protocol.Stamp{Source: source, Epoch: epoch, Stream: stream, Seq: math.MaxInt64}
	if err := checkWire(e, bound.EncodedLen(), amqpwire.DefaultFrameMax); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	return e, nil
}

// appendLoop is the appender goroutine: it journals queued jobs in group commits (one transaction
// for everything waiting) and reports each receipt.
func (p *Publisher) appendLoop(ctx context.Context) {
	var batch []*job
	draining := false
	for {
		if !draining {
			select {
			case jb := <-p.queue:
				batch = append(batch, jb)
			case <-p.drain:
				draining = true
			}
		}
		n := 0
		for _, jb := range batch {
			n += len(jb.rs)
		}
		if n < maxAppendBatch {
			group.Gather(p.queue, func(jb *job) bool {
				batch = append(batch, jb)
				n += len(jb.rs)
				return n < maxAppendBatch
			})
		}
		if len(batch) == 0 {
			if draining {
				return
			}
			continue
		}
		p.commit(ctx, batch)
		clear(batch)
		batch = batch[:0]
	}
}

// commit journals the jobs in one transaction; if that fails for a reason that may concern only
// some of them (too large, invalid), each job is retried on its own.
func (p *Publisher) commit(ctx context.Context, batch []*job) {
	taken := batch[:0]
	for _, jb := range batch {
		if jb.state.CompareAndSwap(jobQueued, jobTaken) {
			taken = append(taken, jb)
		}
	}
	if len(taken) == 0 {
		return
	}
	err := p.appendJobs(ctx, taken)
	if errors.Is(err, journal.ErrBroken) {
		// The disk failed the commit itself: the batch may or may not be on disk, and the journal
		// refuses further work until reopened. "Not accepted" would invite the caller to publish
		// again, and a second copy would get a new sequence number: report the outcome as unknown.
		p.log.Error("publisher: the journal is broken (disk I/O failure); restart the process to reopen it", "err", err)
		p.finish(taken, fmt.Errorf("%w: %w", ErrAcceptUnknown, err))
		return
	}
	if err == nil || len(taken) == 1 || ctx.Err() != nil || errors.Is(err, journal.ErrClosed) {
		p.finish(taken, err)
		return
	}
	for _, jb := range taken {
		p.finish([]*job{jb}, p.appendJobs(ctx, []*job{jb}))
	}
}

func (p *Publisher) appendJobs(ctx context.Context, jobs []*job) error {
	var es []*journal.Entry
	if len(jobs) == 1 && len(jobs[0].rs) == 1 {
		return p.j.Append(ctx, jobs[0].rs[0].entry)
	}
	for _, jb := range jobs {
		for _, r := range jb.rs {
			es = append(es, r.entry)
		}
	}
	return p.j.AppendBatch(ctx, es)
}

func (p *Publisher) finish(jobs []*job, err error) {
	if err != nil {
		err = fmt.Errorf("publisher: journal: %w", err)
	}
	var n int
	var last uint64
	var byExchange []exchangeCount // few: one per exchange of the batch
	for _, jb := range jobs {
		for _, r := range jb.rs {
			if err == nil {
				last = max(last, r.entry.ID)
				n++
				byExchange = countExchange(byExchange, r.entry.Exchange)
			}
			r.setJournaled(err)
		}
	}
	if n > 0 {
		for {
			cur := p.lastAccepted.Load()
			if last <= cur || p.lastAccepted.CompareAndSwap(cur, last) {
				break
			}
		}
		p.c.accepted.Add(uint64(n))
		for _, ec := range byExchange {
			p.m.Add(MetricAccepted, float64(ec.n), metrics.Label{Name: LabelExchange, Value: ec.exchange})
		}
	}
}

// fromTable converts AMQP headers to the journal's value types (nested tables become maps).
func fromTable(t amqp.Table) map[string]any {
	m := make(map[string]any, len(t))
	for k, v := range t {
		m[k] = fromValue(v)
	}
	return m
}

func fromValue(v any) any {
	switch x := v.(type) {
	case amqp.Table:
		return fromTable(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = fromValue(e)
		}
		return out
	}
	return v
}

// toTable converts journal headers back to an amqp.Table, in place (the entry is the sender's own
// copy). Only nested maps need converting.
func toTable(m map[string]any) amqp.Table {
	if m == nil {
		return make(amqp.Table, 4)
	}
	for k, v := range m {
		switch v.(type) {
		case map[string]any, []any:
			m[k] = toValue(v)
		}
	}
	return amqp.Table(m)
}

func toValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return toTable(maps.Clone(x))
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = toValue(e)
		}
		return out
	}
	return v
}
