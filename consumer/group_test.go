package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/dedup"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/internal/testutil"
	"github.com/rabbitkit/rabbitkit/topology"
)

// memLeaser is an in-memory consumer.Leaser with the semantics pginbox's has; down makes a
// member's calls fail, as if it had lost its database.
type memLeaser struct {
	mu      sync.Mutex
	members map[string]time.Time // member -> expiry
	leases  map[int]lease
	down    map[string]bool
}

type lease struct {
	owner   string
	expires time.Time
}

func newMemLeaser() *memLeaser {
	return &memLeaser{members: map[string]time.Time{}, leases: map[int]lease{}, down: map[string]bool{}}
}

var errLeaserDown = errors.New("leaser unreachable")

func (l *memLeaser) setDown(member string, down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down[member] = down
}

func (l *memLeaser) Renew(_ context.Context, _, member string, n int, ttl time.Duration) ([]int, int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down[member] {
		return nil, 0, errLeaserDown
	}
	now := time.Now()
	l.members[member] = now.Add(ttl)
	var live []string
	for m, exp := range l.members {
		if exp.After(now) {
			live = append(live, m)
		}
	}
	sort.Strings(live)
	k := slices.Index(live, member)
	share := n/len(live) + map[bool]int{true: 1}[k < n%len(live)]
	var held []int
	for p, ls := range l.leases {
		if ls.owner == member && ls.expires.After(now) {
			l.leases[p] = lease{member, now.Add(ttl)}
			held = append(held, p)
		}
	}
	slices.Sort(held)
	return held, share, nil
}

func (l *memLeaser) Acquire(_ context.Context, _, member string, n, maxN int, ttl time.Duration) ([]int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down[member] {
		return nil, errLeaserDown
	}
	now := time.Now()
	var got []int
	for p := 0; p < n && len(got) < maxN; p++ {
		if ls, ok := l.leases[p]; !ok || ls.owner == "" || !ls.expires.After(now) {
			l.leases[p] = lease{member, now.Add(ttl)}
			got = append(got, p)
		}
	}
	return got, nil
}

func (l *memLeaser) Release(_ context.Context, _, member string, parts []int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down[member] {
		return errLeaserDown
	}
	for _, p := range parts {
		if l.leases[p].owner == member {
			delete(l.leases, p)
		}
	}
	return nil
}

func (l *memLeaser) Leave(_ context.Context, _, member string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down[member] {
		return errLeaserDown
	}
	delete(l.members, member)
	for p, ls := range l.leases {
		if ls.owner == member {
			delete(l.leases, p)
		}
	}
	return nil
}

// orderEffect records, per stream, the seqs applied in commit order.
type orderLog struct {
	mu   sync.Mutex
	seqs map[string][]int64
}

// A partitioned group over a shared store: members share the partitions fairly, a member that
// joins takes its share, one that loses its database stops before its leases expire and the
// others take over, one that stops leaves at once. Every effect exactly once, and each stream's
// effects in seq order across every hand-over.
func TestGroupSharesAndHandsOver(t *testing.T) {
	url := testbroker.SharedURL(t)
	parts := topology.Partitions{Exchange: testbroker.Name(t, "grp-x"), Queue: testbroker.Name(t, "grp-q"), Count: 4}
	var qs []string
	for i := range parts.Count {
		qs = append(qs, parts.QueueName(i))
	}
	testbroker.DeleteQueues(t, url, qs...)
	testbroker.DeleteExchanges(t, url, parts.Exchange)
	store := newMemShared(dedup.Config{})
	leaser := newMemLeaser()
	var order orderLog
	order.seqs = map[string][]int64{}
	var outOfOrder atomic.Int64
	effect := func(_ context.Context, tx *memTx, m *consumer.Message) error {
		tx.effects[effectKey(m)]++
		order.mu.Lock() // not rolled back with tx: only committed batches matter, checked at the end
		defer order.mu.Unlock()
		s := order.seqs[m.Stamp.Stream]
		if len(s) > 0 && s[len(s)-1] >= m.Stamp.Seq {
			outOfOrder.Add(1)
		}
		order.seqs[m.Stamp.Stream] = append(s, m.Stamp.Seq)
		return nil
	}
	type member struct {
		g      *consumer.Group[*memTx]
		cancel context.CancelFunc
		done   chan error
	}
	startMember := func(name string) *member {
		f := newFixture(t, url)
		cfg := consumer.GroupConfig{Config: f.config(), Partitions: parts, Leaser: leaser, Member: name, LeaseTTL: time.Second}
		cfg.Config.Queue, cfg.Config.Topology, cfg.Config.StorePath = "", topology.Topology{}, ""
		g, err := consumer.NewGroup(cfg, store)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{g: g, cancel: cancel, done: make(chan error, 1)}
		go func() { m.done <- g.RunTx(ctx, effect); close(m.done) }()
		t.Cleanup(func() { cancel(); <-m.done })
		return m
	}
	ch := newFixture(t, url).channel()
	require.NoError(t, parts.Topology().Declare(ch))
	var want []string
	next := map[string]int64{}
	publish := func(n int) {
		for range n {
			for s := range 8 {
				stream := fmt.Sprintf("st-%d", s)
				next[stream]++
				msg := stamped("src", stream, 1, next[stream], "x")
				msg.DeliveryMode = 2
				require.NoError(t, ch.Publish(parts.Exchange, parts.RoutingKey(stream), false, false, msg))
				want = append(want, key("src", stream, 1, next[stream]))
			}
		}
	}
	held := func(ms ...*member) []int {
		var out []int
		for _, m := range ms {
			out = append(out, len(m.g.Held()))
		}
		return out
	}

	a := startMember("a")
	testutil.Eventually(t, 20*time.Second, "a holds every partition", func() bool { return slices.Equal(held(a), []int{4}) })
	publish(20)
	b := startMember("b")
	testutil.Eventually(t, 20*time.Second, "a and b hold two each", func() bool { return slices.Equal(held(a, b), []int{2, 2}) })
	publish(20)
	testutil.Eventually(t, 30*time.Second, "the first 320 applied", func() bool { return len(store.effectCounts()) == 320 })

	leaser.setDown("b", true) // b loses its database: it must stop, a must take over
	testutil.Eventually(t, 20*time.Second, "b stopped, a holds all", func() bool { return slices.Equal(held(a, b), []int{4, 0}) })
	publish(20)
	leaser.setDown("b", false)
	testutil.Eventually(t, 20*time.Second, "b back with its share", func() bool { return slices.Equal(held(a, b), []int{2, 2}) })
	publish(20)
	b.cancel() // a graceful stop leaves the group at once
	require.NoError(t, <-b.done)
	testutil.Eventually(t, 20*time.Second, "a holds all again", func() bool { return slices.Equal(held(a), []int{4}) })
	publish(20)
	testutil.Eventually(t, 60*time.Second, "every effect", func() bool { return len(store.effectCounts()) == len(want) })
	requireExactlyOnce(t, store.effectCounts(), want)
	require.Zero(t, outOfOrder.Load(), "a stream's effects out of seq order across a hand-over: %v", order.seqs)
}
