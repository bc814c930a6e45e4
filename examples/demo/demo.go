package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/history"
	"github.com/rabbitkit/rabbitkit/internal/ledger"
	"github.com/rabbitkit/rabbitkit/metrics"
	"github.com/rabbitkit/rabbitkit/protocol"
	"github.com/rabbitkit/rabbitkit/publisher"
	"github.com/rabbitkit/rabbitkit/topology"
)

// demo is one run: a publisher and a consumer through the proxy. The goroutines it starts are
// owned by run, which waits for every one of them.
type demo struct {
	o     options
	name  string // exchange and queue
	dir   string // journal and store files
	url   string // the broker's URL through the proxy
	log   *slog.Logger
	proxy *faultProxy

	pubM, conM metrics.Memory

	mu        sync.Mutex
	accepted  []protocol.Stamp
	gaps      []history.Gap
	conflicts []protocol.Stamp
	phase     string
}

func (d *demo) run(ctx context.Context) (bool, error) {
	topo := topology.Topology{
		Exchanges: []topology.Exchange{{Name: d.name}},
		Queues:    []topology.Queue{{Name: d.name, Type: d.o.queueType}},
		Bindings:  []topology.Binding{{Queue: d.name, Exchange: d.name, Key: d.name}},
	}
	pub, err := publisher.New(publisher.Config{
		URLs: []string{d.url}, Source: "demo", JournalPath: filepath.Join(d.dir, "journal.db"),
		Topology: topo, Logger: d.log.With("side", "publisher"), Metrics: &d.pubM,
		OnParked: func(pe *publisher.ParkedError) { d.log.Error("parked", "err", pe) },
	})
	if err != nil {
		return false, err
	}
	pubClosed := false
	defer func() {
		if !pubClosed {
			_ = pub.Close(context.Background())
		}
	}()
	con, err := consumer.New(consumer.Config{
		URLs: []string{d.url}, Queue: d.name, Topology: topo, StorePath: filepath.Join(d.dir, "consumer.db"),
		Logger: d.log.With("side", "consumer"), Metrics: &d.conM,
		OnGap: func(e dedup.Event) {
			d.mu.Lock()
			d.gaps = append(d.gaps, history.Gap{Source: e.Key.Source, Epoch: e.Epoch, Stream: e.Key.Stream, From: e.From, To: e.To})
			d.mu.Unlock()
		},
		OnConflict: func(cf consumer.Conflict) {
			d.log.Error("duplicate with a different body", "stamp", cf.Stamp)
			d.mu.Lock()
			d.conflicts = append(d.conflicts, cf.Stamp)
			d.mu.Unlock()
		},
	})
	if err != nil {
		return false, err
	}
	defer con.Close(context.Background())

	fmt.Printf("rabbitkit demo: publishing %.0f msg/s for %v through a proxy that breaks the connections every ~%v.\n",
		d.o.rate, d.o.duration, d.o.faultEvery)
	fmt.Printf("broker %s, queue %s (%s)\n\n", redact(d.o.url), d.name, d.o.queueType)

	var wg sync.WaitGroup
	conCtx, stopConsumer := context.WithCancel(context.Background())
	defer stopConsumer()
	var runErr error
	wg.Go(func() {
		runErr = con.RunTx(conCtx, func(_ context.Context, tx *bolt.Tx, m *consumer.Message) error {
			if !m.Stamped {
				return nil
			}
			_, err := ledger.Increment(tx, m.Stamp)
			return err
		})
	})
	progCtx, stopProgress := context.WithCancel(context.Background())
	wg.Go(func() { d.progress(progCtx) })
	defer func() {
		stopConsumer()
		stopProgress()
		wg.Wait()
	}()

	// Publish and break things for the configured duration.
	d.setPhase("publishing under faults")
	pubCtx, stopPublishing := context.WithTimeout(ctx, d.o.duration)
	defer stopPublishing()
	var faultErr error
	var inner sync.WaitGroup
	inner.Go(func() {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		d.proxy.run(pubCtx, d.o.faultEvery, rng, func(err error) { faultErr = err })
	})
	pubErr := d.publish(pubCtx, pub)
	stopPublishing()
	inner.Wait()
	d.proxy.heal()
	if faultErr != nil {
		return false, faultErr
	}
	if pubErr != nil {
		return false, pubErr
	}
	if ctx.Err() != nil {
		return false, errors.New("interrupted")
	}

	// Let everything settle: all accepted messages confirmed, then all of them applied.
	d.setPhase("faults over: waiting for every message to be confirmed and applied")
	settle, cancel := context.WithTimeout(ctx, d.o.settle)
	defer cancel()
	if err := pub.Flush(settle); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: not everything was confirmed within %v: %v\n", d.o.settle, err)
	}
	d.waitApplied(settle, con)
	sleep(ctx, time.Second) // late duplicates, if any, land in the ledger too
	stopConsumer()
	stopProgress()
	wg.Wait()
	pubClosed = true
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelClose()
	_ = pub.Close(closeCtx)
	if runErr != nil {
		return false, fmt.Errorf("consumer: %w", runErr)
	}

	res, err := d.check(con)
	if err != nil {
		return false, err
	}
	d.verdict(res)
	return res.OK() && res.Accepted > 0, nil
}

// publish publishes at the configured rate until ctx ends, recording every accepted stamp.
func (d *demo) publish(ctx context.Context, pub *publisher.Publisher) error {
	start := time.Now()
	for i := 0; ; i++ {
		due := start.Add(time.Duration(float64(i) / d.o.rate * float64(time.Second)))
		if !sleep(ctx, time.Until(due)) {
			return nil
		}
		body := []byte("order #" + strconv.Itoa(i+1))
		// The context of Publish is not ctx: a context ending while the journal writes would
		// leave the message's fate unknown to the demo (Publish would say so with
		// publisher.ErrAcceptUnknown). Publish returns once journaled, broker or not.
		r, err := pub.Publish(context.Background(), publisher.Message{Exchange: d.name, RoutingKey: d.name, Body: body})
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		d.mu.Lock()
		d.accepted = append(d.accepted, r.Stamp())
		d.mu.Unlock()
	}
}

// waitApplied polls the ledger until every accepted message was applied or ctx ends.
func (d *demo) waitApplied(ctx context.Context, con *consumer.Consumer[*bolt.Tx]) {
	d.mu.Lock()
	want := append([]protocol.Stamp(nil), d.accepted...)
	d.mu.Unlock()
	for i := 0; i < len(want); {
		var n int64
		err := con.View(ctx, func(tx *bolt.Tx) (err error) { n, err = ledger.Read(tx, want[i]); return err })
		if err == nil && n > 0 {
			i++
			continue
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return
		}
	}
}

// check runs the exactly-once checker on what was accepted and what the ledger holds.
func (d *demo) check(con *consumer.Consumer[*bolt.Tx]) (history.Result, error) {
	var h history.History
	err := con.View(context.Background(), func(tx *bolt.Tx) error {
		return ledger.Dump(tx, func(s protocol.Stamp, n int64) error {
			h.Ledger = append(h.Ledger, history.Applied{Stamp: s, Count: n})
			return nil
		})
	})
	if err != nil {
		return history.Result{}, fmt.Errorf("read ledger: %w", err)
	}
	d.mu.Lock()
	h.Runs = []history.Run{{Source: "demo", Accepted: d.accepted}}
	h.Gaps = d.gaps
	h.Conflicts = d.conflicts
	d.mu.Unlock()
	return history.Check(h), nil
}

func (d *demo) setPhase(p string) {
	d.mu.Lock()
	d.phase = p
	d.mu.Unlock()
}

// progress prints a status line every second until ctx ends: rewritten in place on a terminal,
// one line every five seconds otherwise.
func (d *demo) progress(ctx context.Context) {
	fi, _ := os.Stdout.Stat()
	tty := fi != nil && fi.Mode()&os.ModeCharDevice != 0
	start := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	lastPhase := ""
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Println()
			}
			return
		case <-t.C:
		}
		d.mu.Lock()
		accepted, phase := len(d.accepted), d.phase
		d.mu.Unlock()
		fault := d.proxy.current()
		if fault == "" {
			fault = "-"
		}
		line := fmt.Sprintf("%3ds  accepted %6d  confirmed %6.0f  applied %6.0f  duplicates dropped %4.0f  reconnects %3.0f  fault now: %s",
			int(time.Since(start).Seconds()), accepted, d.pubM.Get(publisher.MetricConfirmed), d.conM.Get(consumer.MetricHandled),
			d.conM.Get(consumer.MetricDuplicates), d.pubM.Get(publisher.MetricReconnects)+d.conM.Get(consumer.MetricReconnects), fault)
		switch {
		case tty:
			if phase != lastPhase && lastPhase != "" {
				fmt.Printf("\n%s\n", phase)
			}
			fmt.Printf("\r%-150s", line)
		case i%5 == 0 || phase != lastPhase:
			if phase != lastPhase && lastPhase != "" {
				fmt.Println(phase)
			}
			fmt.Println(line)
		}
		lastPhase = phase
	}
}

// verdict prints the result table and a one-line verdict.
func (d *demo) verdict(r history.Result) {
	itoa := strconv.Itoa
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	counts := d.proxy.injected()
	total := 0
	var faultRows [][]string
	for _, k := range faultKinds {
		total += counts[k]
		faultRows = append(faultRows, []string{"  " + k, itoa(counts[k]), ""})
	}
	d.mu.Lock()
	gaps := len(d.gaps)
	d.mu.Unlock()
	mark := func(ok bool) string {
		if ok {
			return "ok"
		}
		return "FAIL"
	}
	tb := history.Table{
		Header: []string{"", "count", ""},
		Rows: [][]string{
			{"accepted by Publish (journaled)", itoa(r.Accepted), ""},
			{"delivered to the consumer (incl. redeliveries)", f(d.conM.Get(consumer.MetricHandled) + d.conM.Get(consumer.MetricDuplicates)), ""},
			{"duplicates dropped by the consumer", f(d.conM.Get(consumer.MetricDuplicates)), ""},
			{"applied exactly once", itoa(r.ExactlyOnce), mark(r.ExactlyOnce == r.Accepted)},
			{"lost", itoa(r.Lost), mark(r.Lost == 0)},
			{"applied twice", itoa(r.AppliedTwice), mark(r.AppliedTwice == 0)},
			{"applied but never accepted", itoa(r.Phantom), mark(r.Phantom == 0)},
			{"gaps reported", itoa(gaps), mark(r.FalseGaps == 0)},
			{"sequence number reused with another body", itoa(r.Conflicts), mark(r.Conflicts == 0)},
			{"resent by the publisher after a drop", f(d.pubM.Get(publisher.MetricResent)), ""},
			{"reconnects survived (publisher + consumer)", f(d.pubM.Get(publisher.MetricReconnects)) + " + " + f(d.conM.Get(consumer.MetricReconnects)), ""},
			{"connection faults injected", itoa(total), ""},
		},
	}
	tb.Rows = append(tb.Rows, faultRows...)
	fmt.Println()
	_ = tb.Write(os.Stdout)
	fmt.Println()
	if r.OK() && r.Accepted > 0 {
		fmt.Printf("PASS: all %d accepted messages were applied exactly once, through %d connection faults.\n", r.Accepted, total)
		return
	}
	fmt.Println("FAIL: the exactly-once guarantee did not hold:")
	for _, s := range r.Samples {
		fmt.Println("  " + s)
	}
}
