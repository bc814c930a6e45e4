package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/amqpconn"
	"github.com/rabbitkit/rabbitkit/internal/amqpseam"
	"github.com/rabbitkit/rabbitkit/internal/amqpwire"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// parker publishes parked messages on a connection of its own, with publisher confirms and the
// mandatory flag, so that "parked" means "in the parking queue". Its goroutine owns that
// connection; workers send it requests and wait for the outcome.
type parker struct {
	r    *run
	reqs chan *parkReq

	dialer   amqpseam.Dialer
	conn     amqpseam.Conn
	ch       amqpseam.Channel
	confirms <-chan amqp.Confirmation
	returns  <-chan amqp.Return
}

type parkReq struct {
	it     *item
	reason string
	done   chan error // buffered 1
}

// park asks the parker goroutine to publish it and waits for the confirm (or ctx).
func (p *parker) park(ctx context.Context, it *item, reason string) error {
	req := &parkReq{it: it, reason: reason, done: make(chan error, 1)}
	select {
	case p.reqs <- req:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (p *parker) loop() {
	r := p.r
	p.dialer = r.cfg.dialParking
	if p.dialer == nil {
		p.dialer = amqpseam.Dial(&amqpconn.Dialer{URLs: r.cfg.URLs, Heartbeat: r.cfg.Heartbeat, Backoff: r.cfg.ReconnectBackoff, Logger: r.cfg.Logger, Name: r.cfg.ConnectionName + "-parking", TLS: r.cfg.TLS})
	}
	defer p.reset()
	for {
		select {
		case <-r.auxStop:
			return
		case req := <-p.reqs:
			ctx, cancel := context.WithTimeout(r.hctx, 30*time.Second)
			err := p.publish(ctx, req)
			cancel()
			req.done <- err
			if err != nil {
				p.reset()
			}
		}
	}
}

func (p *parker) reset() {
	if p.conn != nil {
		// Bounded: a broker under an alarm blocks the connection and never answers close-ok.
		_ = p.conn.Close(time.Now().Add(time.Second))
	}
	p.conn, p.ch, p.confirms, p.returns = nil, nil, nil, nil
}

// connect opens the parking connection and its channel in confirm mode. One publish is in flight
// at a time and each waits for its confirm (a failed or timed-out one resets the connection), so
// the listeners never hold more than one notification.
func (p *parker) connect(ctx context.Context) error {
	conn, _, err := p.dialer.Dial(ctx)
	if err != nil {
		return err
	}
	p.conn = conn
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("consumer: parking channel: %w", err)
	}
	p.ch = ch
	if p.confirms, err = ch.Confirm(1); err != nil {
		return fmt.Errorf("consumer: parking channel confirm mode: %w", err)
	}
	p.returns = ch.NotifyReturn(1)
	return ch.Declare(p.r.cfg.parkingTopology())
}

func (p *parker) publish(ctx context.Context, req *parkReq) error {
	if p.ch == nil || p.ch.IsClosed() {
		p.reset()
		if err := p.connect(ctx); err != nil {
			return err
		}
	}
	cfg, d := p.r.cfg, &req.it.d
	h := parkHeaders(d, cfg.Queue, req.reason, req.it.attempt, p.conn.FrameMax())
	pub := amqp.Publishing{
		Headers: h, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		DeliveryMode: amqp.Persistent, Priority: d.Priority, CorrelationId: d.CorrelationId,
		ReplyTo: d.ReplyTo, MessageId: d.MessageId, Timestamp: d.Timestamp,
		Type: d.Type, AppId: d.AppId, Body: d.Body,
	}
	// A write blocked by a broker alarm (connection.blocked) ignores ctx, and amqp091-go's Close
	// can wait behind it: when ctx ends, close the socket, which ends the write and the connection.
	stop := context.AfterFunc(ctx, p.conn.ForceClose)
	defer stop()
	if err := p.ch.Publish(ctx, "", cfg.ParkingQueue, true, pub); err != nil {
		return fmt.Errorf("consumer: publish to parking queue %q: %w", cfg.ParkingQueue, err)
	}
	var conf amqp.Confirmation
	select {
	case conf = <-p.confirms: // closed with the channel: not acked
	case <-ctx.Done():
		return fmt.Errorf("consumer: waiting for the parking confirm: %w", context.Cause(ctx))
	}
	// A basic.return precedes the (positive) ack of an unroutable mandatory message.
	select {
	case ret := <-p.returns:
		return fmt.Errorf("consumer: parking queue %q: message returned: %d %s", cfg.ParkingQueue, ret.ReplyCode, ret.ReplyText)
	default:
	}
	if !conf.Ack {
		return errParkNotConfirmed
	}
	return nil
}

var errParkNotConfirmed = errors.New("consumer: parking publish nacked or connection lost")

// parkHeaders builds the parked copy's headers: the original ones plus the rk-park- ones. The
// result always encodes and fits in one frame of frameMax bytes with the delivery's properties:
// the reason is cut to protocol.MaxParkReason bytes, and original headers that would not fit are
// left out (protocol.HeaderParkHeadersDropped says so). A message that cannot be parked would be
// retried forever.
func parkHeaders(d *amqp.Delivery, queue, reason string, attempts, frameMax int) amqp.Table {
	if len(reason) > protocol.MaxParkReason {
		cut := protocol.MaxParkReason
		for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(reason[cut]); i++ {
			cut-- // back to the start of a valid rune; invalid UTF-8 is cut where it is
		}
		reason = reason[:cut] + "…"
	}
	park := amqp.Table{
		protocol.HeaderParkReason:     reason,
		protocol.HeaderParkQueue:      queue,
		protocol.HeaderParkExchange:   d.Exchange,
		protocol.HeaderParkRoutingKey: d.RoutingKey,
		protocol.HeaderParkTime:       time.Now().UTC().Truncate(time.Second),
		protocol.HeaderParkAttempts:   int64(attempts),
	}
	if d.Expiration != "" {
		park[protocol.HeaderParkExpiration] = d.Expiration
	}
	if d.UserId != "" {
		park[protocol.HeaderParkUserID] = d.UserId
	}
	if frameMax <= 0 {
		frameMax = amqpwire.DefaultFrameMax
	}
	// The properties the copy carries (absent ones take no room), then the headers.
	room := frameMax - amqpwire.HeaderFrameFixed - 1 /* delivery mode */
	for _, p := range [...]string{d.ContentType, d.ContentEncoding, d.CorrelationId, d.ReplyTo, d.MessageId, d.Type, d.AppId} {
		if p != "" {
			room -= 1 + len(p)
		}
	}
	if d.Priority != 0 {
		room--
	}
	if !d.Timestamp.IsZero() {
		room -= 8
	}
	parkSize, _ := amqpwire.TableSize(park) // rk-park- keys are short; values are bounded
	origSize, err := amqpwire.TableSize(d.Headers)
	if err == nil {
		err = d.Headers.Validate()
	}
	if err != nil || parkSize+origSize-4 > room {
		// Cannot happen for headers RabbitMQ delivered within its own frame, unless they were
		// close to the limit: keep the message and its rk- stamp, say what was left out.
		park[protocol.HeaderParkHeadersDropped] = int64(origSize)
		if err != nil {
			park[protocol.HeaderParkReason] = reason + " (original headers dropped: " + err.Error() + ")"
		}
		stamp := amqp.Table{}
		for _, k := range [...]string{protocol.HeaderStamp, protocol.HeaderSource, protocol.HeaderEpoch, protocol.HeaderStream, protocol.HeaderSeq} {
			if v, ok := d.Headers[k]; ok {
				stamp[k] = v
			}
		}
		if ss, err := amqpwire.TableSize(stamp); err == nil && parkSize+64+ss-4 <= room {
			for k, v := range stamp {
				park[k] = v // the message's identity, for the operator and for a later re-drive
			}
		}
		return park
	}
	h := make(amqp.Table, len(d.Headers)+len(park))
	for k, v := range d.Headers {
		h[k] = v
	}
	for k, v := range park {
		h[k] = v
	}
	return h
}
