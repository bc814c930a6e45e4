package pgoutbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/publisher"
)

const leaseName = "relay"

// DefaultRelayReadBatch is a relay's page size (publisher.Config.ReadBatch) unless set: rows read
// from the outbox in one transaction. Larger than the journal's (publisher.DefaultReadBatch):
// each page costs round trips and a COMMIT, and a 1,000,000-row backlog drained 1.4-1.5x faster
// with 1024 rows a page than with 256, with or without the read-ahead (docs/BENCHMARKS.md).
const DefaultRelayReadBatch = 1024

// Relay sends the outbox to the broker until ctx ends, on whichever replica holds the lease; call
// it on every replica. It returns nil when ctx ends, or an error for an invalid cfg.
//
// The lease is a row of <table>_leases (owner, expires), in database time only: a replica takes it
// when it is free or expired, and the holder renews it every LeaseTTL/5. While it holds the lease
// the replica runs one publisher.Relay (the same sender as a Publisher's) over the outbox. A holder
// that cannot renew stops sending before its lease can expire: at LeaseTTL/5 + min(CloseTimeout, LeaseTTL/5) before
// the expiry it knows of, its outbox reads are refused and its sender is closed, with a hard stop
// at LeaseTTL/10 before the expiry. Another replica takes over within LeaseTTL + LeaseTTL/5 of the
// holder's last renewal (at once, within LeaseTTL/5, after a holder that stopped cleanly released
// it), and resends, in rid order, every row not confirmed yet. An overlap can only resend the same
// stamps, which consumers drop.
//
// cfg is the sender's publisher.Config: URLs, Topology, TLS, MaxInFlight, callbacks... Journal and
// JournalPath must be unset; Source defaults to the outbox's; ReadBatch defaults to
// DefaultRelayReadBatch (a page is one transaction; the relay keeps the page it sends and the
// next one, read ahead, in memory: with large bodies, set it lower). Each lease term starts a new
// publisher.Relay; rows of an older epoch (a restored database) are sent first, under their own
// epoch, and then the current epoch's.
func (o *Outbox) Relay(ctx context.Context, cfg publisher.Config) error {
	if cfg.Journal != nil || cfg.JournalPath != "" {
		return fmt.Errorf("%w: Relay: cfg.Journal and cfg.JournalPath must be unset", publisher.ErrInvalidConfig)
	}
	if cfg.Source != "" && cfg.Source != o.opts.Source {
		return fmt.Errorf("%w: Relay: cfg.Source %q is not the outbox's %q", publisher.ErrInvalidConfig, cfg.Source, o.opts.Source)
	}
	if cfg.Logger == nil {
		cfg.Logger = o.log
	}
	if cfg.ReadBatch == 0 {
		cfg.ReadBatch = DefaultRelayReadBatch
	}
	r := &relay{o: o, cfg: cfg, ttl: o.opts.LeaseTTL, owner: o.opts.Owner + "/" + randHex(), base: time.Now()}
	r.tick = r.ttl / 5
	var wg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(ctx)
	wg.Go(func() { o.poll(bgCtx) })
	wg.Go(func() { o.refreshBacklog(bgCtx) })
	if o.opts.Notify {
		wg.Go(func() { o.listen(bgCtx) })
	}
	err := r.run(ctx)
	stopBG()
	wg.Wait()
	return err
}

type relay struct {
	o     *Outbox
	cfg   publisher.Config
	ttl   time.Duration
	tick  time.Duration
	owner string
	base  time.Time

	until atomic.Int64 // the views' read deadline (nanoseconds since base); 0: not held
	held  bool
	wd    *time.Timer // fires at the stop point of the current lease term

	mu    sync.Mutex
	pub   *publisher.Relay
	view  *view // pub's, closed after pub
	epoch int64 // of pub's view
}

func (r *relay) since() int64 { return int64(time.Since(r.base)) }

func (r *relay) run(ctx context.Context) error {
	defer func() {
		if r.wd != nil {
			r.wd.Stop()
		}
	}()
	var lastErr string
	for {
		if ctx.Err() != nil {
			r.stop(time.Now().Add(r.o.opts.CloseTimeout))
			if r.held {
				r.release()
			}
			return nil
		}
		t0 := r.since()
		got, err := r.lease(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			if err.Error() != lastErr {
				r.o.log.Warn("pgoutbox: relay lease: database call failed; retrying", "err", err)
				lastErr = err.Error()
			}
		case err == nil && got:
			lastErr = ""
			r.renewed(t0)
		case err == nil && !got && r.held:
			r.o.log.Error("pgoutbox: relay lease taken by another replica; stopping the sender")
			r.lost(time.Now().Add(r.tick))
		}
		if r.held && err == nil {
			if err := r.ensure(ctx); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(r.tick):
		}
	}
}

// stopMargin: how long before the known expiry reads stop and the sender is closed.
func (r *relay) stopMargin() time.Duration { return r.tick + r.closeTimeout() }

// closeTimeout is CloseTimeout, capped at LeaseTTL/5.
func (r *relay) closeTimeout() time.Duration { return min(r.o.opts.CloseTimeout, r.ttl/5) }

// renewed extends the term: the lease was written at database time >= t0 (local) plus TTL.
func (r *relay) renewed(t0 int64) {
	expiry := t0 + int64(r.ttl)
	stopAt := expiry - int64(r.stopMargin())
	if stopAt <= r.since() {
		return // the renewal took so long that it is no use
	}
	if r.wd != nil {
		r.wd.Stop()
	}
	r.until.Store(stopAt)
	if !r.held {
		r.held = true
		r.o.m.Set(MetricLeaseHeld, 1)
		r.o.m.Add(MetricLeaseTakeovers, 1)
		r.o.log.Info("pgoutbox: relay lease acquired; sending", "owner", r.owner, "table", r.o.n.table)
	}
	d := time.Duration(stopAt - r.since())
	hard := r.base.Add(time.Duration(expiry - int64(r.ttl/10)))
	r.wd = time.AfterFunc(d, func() { r.expired(hard) })
}

// expired runs on the watchdog timer: the lease could not be renewed in time.
func (r *relay) expired(hard time.Time) {
	r.o.log.Error("pgoutbox: relay lease not renewed in time; stopping the sender before it expires", "owner", r.owner)
	r.until.Store(0)
	r.stop(hard)
}

// lost gives the term up (the watchdog has not fired).
func (r *relay) lost(deadline time.Time) {
	if r.wd != nil {
		r.wd.Stop()
	}
	r.until.Store(0)
	r.stop(deadline)
	r.held = false
	r.o.m.Set(MetricLeaseHeld, 0)
}

// stop closes the running sender, waiting for its confirms until deadline.
func (r *relay) stop(deadline time.Time) {
	r.mu.Lock()
	p, v := r.pub, r.view
	r.pub, r.view = nil, nil
	if p != nil {
		r.o.relaying.Add(-1)
	}
	r.mu.Unlock()
	if p == nil {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		r.o.log.Warn("pgoutbox: relay stopped with messages unconfirmed; the next holder resends them", "err", err)
	}
	v.close()
}

// ensure runs a sender for the oldest epoch with pending rows; a sender of an older epoch than
// the current one whose rows are all sent is replaced.
func (r *relay) ensure(ctx context.Context) error {
	r.mu.Lock()
	p, epoch := r.pub, r.epoch
	r.mu.Unlock()
	if p != nil {
		if epoch == r.o.epoch.Load() {
			return nil
		}
		var pending bool
		if err := r.o.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+r.o.n.t+` WHERE epoch = $1 AND NOT parked)`, epoch).Scan(&pending); err != nil || pending {
			return nil
		}
		r.o.log.Info("pgoutbox: every row of the old epoch is sent; relaying the current epoch", "old_epoch", epoch, "epoch", r.o.epoch.Load())
		r.stop(time.Now().Add(r.o.opts.CloseTimeout))
	}
	var oldest *int64
	if err := r.o.pool.QueryRow(ctx, `SELECT min(epoch) FROM `+r.o.n.t+` WHERE NOT parked`).Scan(&oldest); err != nil {
		return nil
	}
	epoch = r.o.epoch.Load()
	if oldest != nil && *oldest < epoch {
		epoch = *oldest
	}
	cfg := r.cfg
	v := newView(r.o, epoch, &r.until, r.base)
	pub, err := publisher.NewRelay(cfg, v)
	if err != nil {
		v.close()
		return err
	}
	r.mu.Lock()
	if r.until.Load() == 0 { // the watchdog fired meanwhile
		r.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = pub.Close(ctx)
		v.close()
		return nil
	}
	r.pub, r.view, r.epoch = pub, v, epoch
	r.o.relaying.Add(1)
	r.mu.Unlock()
	return nil
}

// lease takes or renews the lease in one short transaction, which also checks the database's
// identity while held (a failover or restore starts a new epoch). It reports whether this relay
// holds the lease.
func (r *relay) lease(ctx context.Context) (got bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.tick)
	defer cancel()
	err = pgx.BeginTxFunc(ctx, r.o.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT `+idleGuardSQL, r.o.idleGuard()); err != nil {
			return err
		}
		var owner string
		err := tx.QueryRow(ctx, `INSERT INTO `+r.o.n.leasesT+` AS l (name, owner, expires) VALUES ($1, $2, now() + $3 * interval '1 microsecond')
			ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
			WHERE l.owner = excluded.owner OR l.expires <= now() RETURNING owner`, leaseName, r.owner, r.ttl.Microseconds()).Scan(&owner)
		if errors.Is(err, pgx.ErrNoRows) {
			got = false
			return nil
		}
		if err != nil {
			return err
		}
		got = true
		return r.o.checkIdentity(ctx, tx, "relay")
	})
	return got, err
}

// idleGuardSQL sets idle_in_transaction_session_timeout for the rest of the transaction. The
// relay's transactions that lock the lease or meta row (lease, Read) carry it: when the relay's
// database link goes dark mid-transaction (a black hole, a partition, a frozen process), the
// server would otherwise keep that transaction open, and its row locks, for as long as the socket
// lives (TCP keepalive, about 2 hours, and forever behind a proxy that answers keepalives): the
// next holder's lease and relay-id transactions would wait on those locks, and no replica could
// take over. With the guard the server ends such an orphan after LeaseTTL/5 of silence, before
// the lease it was written under can expire (its holder stops reading LeaseTTL/5 +
// min(CloseTimeout, LeaseTTL/5) before the expiry). A client that really idles that long inside
// one of these transactions loses the connection and retries.
const idleGuardSQL = `set_config('idle_in_transaction_session_timeout', $1, true)`

// idleGuard is idleGuardSQL's argument: LeaseTTL/5, in milliseconds.
func (o *Outbox) idleGuard() string {
	return strconv.FormatInt(max((o.opts.LeaseTTL/5).Milliseconds(), 1), 10)
}

// release frees the lease (best effort) so that another replica takes over at once.
func (r *relay) release() {
	if r.wd != nil {
		r.wd.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := r.o.pool.Exec(ctx, `UPDATE `+r.o.n.leasesT+` SET owner = '', expires = '-infinity' WHERE name = $1 AND owner = $2`, leaseName, r.owner)
	if err != nil {
		r.o.log.Warn("pgoutbox: releasing the relay lease failed; another replica takes over when it expires", "err", err)
	}
	r.held = false
	r.o.m.Set(MetricLeaseHeld, 0)
}

// poll wakes the sender every PollInterval: the fallback for lost (or disabled) notifications.
func (o *Outbox) poll(ctx context.Context) {
	t := time.NewTicker(o.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			o.wake()
		}
	}
}

// listen wakes the sender at every NOTIFY of the outbox's channel, on a connection of its own.
func (o *Outbox) listen(ctx context.Context) {
	for ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(ctx, o.pool.Config().ConnConfig.Copy())
		if err == nil {
			if _, err = conn.Exec(ctx, `LISTEN `+pgx.Identifier{o.n.channel}.Sanitize()); err == nil {
				o.wake() // what was notified while no one listened
				for {
					if _, err = conn.WaitForNotification(ctx); err != nil {
						break
					}
					o.wake()
				}
			}
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// refreshBacklog keeps the gauges the sender samples: one aggregate at most once a second, less
// often when it is slow (at most ~5% of the time).
func (o *Outbox) refreshBacklog(ctx context.Context) {
	for {
		t0 := time.Now()
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b, err := o.Backlog(qctx)
		cancel()
		if err == nil {
			o.backlog.Store(&b)
		}
		wait := max(time.Second, 20*time.Since(t0))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
