package pginbox_test

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/consumer/pginbox"
	"github.com/rabbitkit/rabbitkit/consumer/storetest"
)

// Store keeps the consumer.Store contract, and the shared-scope part of it.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness[pgx.Tx]{
		Fresh: func(t *testing.T) func(t *testing.T) consumer.Store[pgx.Tx] {
			pool, _ := freshPool(t, 8)
			return func(t *testing.T) consumer.Store[pgx.Tx] { return open(t, pool, pginbox.Options{}) }
		},
		Incr:  incr,
		Count: count,
	})
}
