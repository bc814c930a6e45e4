// Package amqpconn dials RabbitMQ across a list of URLs with exponential backoff and jitter. It is
// shared plumbing for publisher and consumer; the caller owns the returned connection.
package amqpconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	neturl "net/url"
	"time"

	"github.com/cenkalti/backoff/v4"
	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultHeartbeat is short enough that a black-holed connection is noticed in about three
// heartbeats (~6 s), long enough not to trip on a busy 2-core machine.
const DefaultHeartbeat = 2 * time.Second

// ErrNoURL is returned when the dialer has no URL to try.
var ErrNoURL = errors.New("amqpconn: no broker URL configured")

// Dialer dials one of URLs, in turn, until one answers or ctx ends.
type Dialer struct {
	URLs      []string               // tried in turn, starting after the last one that worked
	Heartbeat time.Duration          // default DefaultHeartbeat
	Backoff   func() backoff.BackOff // default NewBackoff; must not stop by itself unless the caller wants Dial to give up
	Logger    *slog.Logger           // default slog.Default()
	Name      string                 // connection_name client property shown in the management UI
	// BatchWrites makes the socket a *BatchConn (returned by DialSocket), so that a burst of
	// publishes can leave in one write.
	BatchWrites bool
	// TLS configures amqps:// URLs (server verification, client certificates). It is cloned for
	// every dial, so amqp091-go's filling in ServerName from one URL's host never leaks into the
	// next URL's handshake; an empty ServerName takes the URL's server_name_indication, else its
	// host. Nil: the URL's own parameters (cacertfile, certfile, keyfile, server_name_indication)
	// over the system roots. CheckURLs refuses plain amqp:// URLs with it, and URLs that name
	// certificate files (they would be ignored).
	TLS *tls.Config
	// OnError, when set, is called with every failed dial attempt's error (the URL in it
	// redacted) before the backoff that follows it, on the dialling goroutine: a wrong password, a
	// TLS failure or a refused vhost can then be shown in code (a readiness check, Stats), not only
	// in the log. It must not block.
	OnError func(error)

	next int // index of the URL to try first; only touched by the owning goroutine
}

// NewBackoff returns the default reconnect schedule: exponential from 100 ms to 5 s, jitter 0.5,
// never giving up.
func NewBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.RandomizationFactor = 0.5
	b.Multiplier = 2
	b.MaxElapsedTime = 0
	return b
}

// Dial tries the URLs in turn with backoff between rounds until a connection is made or ctx ends. It
// returns the connection and the URL that worked. Dial is not safe for concurrent use: one goroutine
// owns a Dialer.
func (d *Dialer) Dial(ctx context.Context) (*amqp.Connection, string, error) {
	c, _, url, err := d.DialSocket(ctx)
	return c, url, err
}

// DialSocket is Dial that also returns the connection's TCP socket. Closing the socket is the only
// way to interrupt a write that a broker alarm (connection.blocked) holds: amqp091-go's Close and
// CloseDeadline can wait behind the very lock that write holds. Use the socket for nothing else.
func (d *Dialer) DialSocket(ctx context.Context) (*amqp.Connection, net.Conn, string, error) {
	if len(d.URLs) == 0 {
		return nil, nil, "", ErrNoURL
	}
	log := d.logger()
	bo := NewBackoff
	if d.Backoff != nil {
		bo = d.Backoff
	}
	b := bo()
	attempt := 0
	for {
		url := d.URLs[d.next%len(d.URLs)]
		conn, sock, err := d.dialOnce(ctx, url)
		if err == nil {
			if attempt > 0 {
				log.Info("amqp connected", "url", redact(url), "attempts", attempt+1)
			}
			return conn, sock, url, nil
		}
		if ctx.Err() != nil {
			return nil, nil, "", fmt.Errorf("amqpconn: dial: %w", context.Cause(ctx))
		}
		attempt++
		d.next++
		if d.OnError != nil {
			d.OnError(err)
		}
		wait := b.NextBackOff()
		if wait == backoff.Stop {
			return nil, nil, "", fmt.Errorf("amqpconn: giving up after %d attempts: %w", attempt, err)
		}
		log.Warn("amqp dial failed", "url", redact(url), "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, "", fmt.Errorf("amqpconn: dial: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

// DialOnce dials url once. ctx bounds the whole dial including the AMQP handshake: when it ends
// first, the half-open connection is closed and ctx's error returned.
func (d *Dialer) DialOnce(ctx context.Context, url string) (*amqp.Connection, error) {
	c, _, err := d.dialOnce(ctx, url)
	return c, err
}

func (d *Dialer) dialOnce(ctx context.Context, url string) (*amqp.Connection, net.Conn, error) {
	hb := d.Heartbeat
	if hb <= 0 {
		hb = DefaultHeartbeat
	}
	props := amqp.NewConnectionProperties()
	if d.Name != "" {
		props.SetClientConnectionName(d.Name)
	}
	var stop func() bool
	var sock net.Conn
	var tlsCfg *tls.Config
	if d.TLS != nil {
		tlsCfg = d.TLS.Clone()
		if uri, err := amqp.ParseURI(url); err == nil && tlsCfg.ServerName == "" {
			tlsCfg.ServerName = uri.ServerName // the URL's server_name_indication, if any
		}
	}
	cfg := amqp.Config{
		TLSClientConfig: tlsCfg,
		Heartbeat:       hb,
		Locale:          "en_US",
		Properties:      props,
		Dial: func(network, addr string) (net.Conn, error) {
			dl := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
			c, err := dl.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// ctx bounds the handshake: when it ends, the socket is closed and DialConfig returns.
			sock = c
			if d.BatchWrites {
				sock = NewBatchConn(c)
			}
			stop = context.AfterFunc(ctx, func() { _ = c.Close() })
			// Handshake deadline (a peer that accepts TCP and never speaks); amqp091-go clears it
			// once connection.open-ok arrives.
			_ = c.SetDeadline(time.Now().Add(max(10*time.Second, 3*hb)))
			return sock, nil
		},
	}
	conn, err := amqp.DialConfig(url, cfg)
	if stop != nil && !stop() {
		// ctx ended during or right after the handshake: the socket was closed under it.
		if conn != nil {
			_ = conn.Close()
		}
		return nil, nil, fmt.Errorf("amqpconn: dial %s: %w", redact(url), context.Cause(ctx))
	}
	if err != nil {
		return nil, nil, fmt.Errorf("amqpconn: dial %s: %w", redact(url), err)
	}
	return conn, sock, nil
}

// ErrBadURL is wrapped by CheckURLs for a URL that can never be dialled.
var ErrBadURL = errors.New("amqpconn: bad broker URL")

// CheckURLs returns an error wrapping ErrBadURL for the first URL that does not parse as an AMQP
// URI, and for a plain amqp:// URL when tlsConfig is set: a caller who configured TLS must never
// send credentials in clear text because of a mistyped scheme. Errors name the URL without its
// password.
func CheckURLs(urls []string, tlsConfig *tls.Config) error {
	for _, u := range urls {
		uri, err := amqp.ParseURI(u)
		if err != nil {
			var ue *neturl.Error
			if errors.As(err, &ue) {
				err = ue.Err // its text quotes the URL, password included
			}
			return fmt.Errorf("%w: %s: %w", ErrBadURL, redact(u), err)
		}
		if tlsConfig != nil && uri.Scheme != "amqps" {
			return fmt.Errorf("%w: %s: a TLS config is set but the URL is plain amqp://; use amqps://", ErrBadURL, redact(u))
		}
		if tlsConfig != nil && (uri.CACertFile != "" || uri.CertFile != "" || uri.KeyFile != "") {
			// amqp091-go reads these only when it builds the TLS config itself: with ours they
			// would be ignored without a word.
			return fmt.Errorf("%w: %s: cacertfile, certfile and keyfile are ignored when a TLS config is set; put them in the TLS config, or drop it", ErrBadURL, redact(u))
		}
	}
	return nil
}

func (d *Dialer) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

// Redact hides the password of an AMQP URL for logs.
func Redact(url string) string { return redact(url) }

func redact(raw string) string {
	u, err := amqp.ParseURI(raw)
	if err != nil {
		return "<unparsable url>"
	}
	if u.Password != "" {
		u.Password = "xxxxx"
	}
	return u.String()
}
