package pginbox_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/internal/pgtest"
)

// The leases of a partitioned group: fair shares among the live members, a partition held by one
// member at a time, given back on Release and Leave, and free again once its lease expired.
func TestLeases(t *testing.T) {
	ctx := context.Background()
	s := open(t, pgtest.Pool(t), pginbox.Options{})
	const g, n, ttl = "orders", 4, 10 * time.Second
	sorted := func(v []int) []int { slices.Sort(v); return v }

	held, share, err := s.Renew(ctx, g, "a", n, ttl)
	require.NoError(t, err)
	require.Empty(t, held)
	require.Equal(t, 4, share, "alone: every partition")
	got, err := s.Acquire(ctx, g, "a", n, share, ttl)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2, 3}, sorted(got))

	_, share, err = s.Renew(ctx, g, "b", n, ttl)
	require.NoError(t, err)
	require.Equal(t, 2, share)
	got, err = s.Acquire(ctx, g, "b", n, share, ttl)
	require.NoError(t, err)
	require.Empty(t, got, "every partition is leased to a")

	held, share, err = s.Renew(ctx, g, "a", n, ttl)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1, 2, 3}, sorted(held))
	require.Equal(t, 2, share)
	require.NoError(t, s.Release(ctx, g, "a", []int{2, 3}))
	got, err = s.Acquire(ctx, g, "b", n, 2, ttl)
	require.NoError(t, err)
	require.Equal(t, []int{2, 3}, sorted(got))

	// Three members, 4 partitions: the first in member order gets 2, the others 1.
	_, share, err = s.Renew(ctx, g, "c", n, ttl)
	require.NoError(t, err)
	require.Equal(t, 1, share)
	_, share, err = s.Renew(ctx, g, "a", n, ttl)
	require.NoError(t, err)
	require.Equal(t, 2, share)

	require.NoError(t, s.Leave(ctx, g, "a"))
	held, share, err = s.Renew(ctx, g, "b", n, ttl)
	require.NoError(t, err)
	require.Equal(t, []int{2, 3}, sorted(held))
	require.Equal(t, 2, share, "b and c left")
	got, err = s.Acquire(ctx, g, "c", n, 2, ttl)
	require.NoError(t, err)
	require.Equal(t, []int{0, 1}, sorted(got), "a's partitions are free at once after Leave")

	// A lease that expires is free for the others; its old holder no longer renews it.
	_, _, err = s.Renew(ctx, g, "d", n, 300*time.Millisecond)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, g, "c", []int{1}))
	got, err = s.Acquire(ctx, g, "d", n, 1, 300*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, []int{1}, got)
	time.Sleep(500 * time.Millisecond)
	got, err = s.Acquire(ctx, g, "c", n, 1, ttl)
	require.NoError(t, err)
	require.Equal(t, []int{1}, got)
	held, _, err = s.Renew(ctx, g, "d", n, ttl)
	require.NoError(t, err)
	require.Empty(t, held, "d's expired lease is c's now")

	// Groups are independent.
	_, share, err = s.Renew(ctx, "other", "a", 3, ttl)
	require.NoError(t, err)
	require.Equal(t, 3, share)
}
