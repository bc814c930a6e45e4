package pginbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rabbitkit/rabbitkit/consumer"
)

type stateErr string

func (e stateErr) Error() string    { return "driver error " + string(e) }
func (e stateErr) SQLState() string { return string(e) }

func TestClassify(t *testing.T) {
	pg := func(code, severity string) error {
		return &pgconn.PgError{Code: code, Severity: severity, Message: "m"}
	}
	netErr := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	type want int
	const (
		store want = iota
		unavailable
		unknown
		retry
	)
	cases := []struct {
		name string
		err  error
		ph   phase
		brk  bool
		want want
	}{
		{"serialization failure", pg("40001", "ERROR"), phaseTx, false, retry},
		{"deadlock", fmt.Errorf("wrapped: %w", pg("40P01", "ERROR")), phaseTx, false, retry},
		{"serialization failure at commit", pg("40001", "ERROR"), phaseCommit, false, retry},
		{"admin shutdown", pg("57P01", "FATAL"), phaseTx, false, unavailable},
		{"crash shutdown", pg("57P02", "FATAL"), phaseTx, false, unavailable},
		{"cannot connect now", pg("57P03", "FATAL"), phaseTx, false, unavailable},
		{"connection exception", pg("08006", "FATAL"), phaseTx, false, unavailable},
		{"too many connections", pg("53300", "FATAL"), phaseTx, false, unavailable},
		{"statement timeout", pg("57014", "ERROR"), phaseTx, false, unavailable},
		{"lock timeout", pg("55P03", "ERROR"), phaseTx, false, unavailable},
		{"undefined table", pg("42P01", "ERROR"), phaseTx, false, store},
		{"unique violation", pg("23505", "ERROR"), phaseTx, false, store},
		{"lib/pq style 40001", stateErr("40001"), phaseTx, false, retry},
		{"lib/pq style 08006", stateErr("08006"), phaseTx, false, unavailable},
		{"lib/pq style 42P01", stateErr("42P01"), phaseTx, false, store},
		{"ctx canceled", context.Canceled, phaseTx, false, unavailable},
		{"ctx deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), phaseTx, false, unavailable},
		{"EOF", io.ErrUnexpectedEOF, phaseTx, false, unavailable},
		{"net error", netErr, phaseTx, false, unavailable},
		{"conn closed", fmt.Errorf("x: %w", pgconn.ErrConnClosed), phaseTx, false, unavailable},
		{"bad conn", driver.ErrBadConn, phaseTx, false, unavailable},
		{"sql conn done", sql.ErrConnDone, phaseTx, false, unavailable},
		{"connect error", &pgconn.ConnectError{}, phaseTx, false, unavailable},
		{"unknown error, broken conn", errors.New("odd"), phaseTx, true, unavailable},
		{"unknown error", errors.New("odd"), phaseTx, false, store},
		{"commit: statement completion unknown", pg("40003", "ERROR"), phaseCommit, false, unknown},
		{"commit: fatal shutdown", pg("57P01", "FATAL"), phaseCommit, false, unknown},
		{"commit: deferred constraint", pg("23503", "ERROR"), phaseCommit, false, store},
		{"commit: server out of disk", pg("53100", "ERROR"), phaseCommit, false, unavailable},
		{"commit: rolled back", pgx.ErrTxCommitRollback, phaseCommit, false, store},
		{"commit: conn closed mid-flight", fmt.Errorf("x: %w", pgconn.ErrConnClosed), phaseCommit, false, unknown},
		{"commit: net error", netErr, phaseCommit, false, unknown},
		{"commit: timeout", context.DeadlineExceeded, phaseCommit, false, unknown},
		{"commit: odd error", errors.New("odd"), phaseCommit, false, unknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := classify("op", c.err, c.ph, c.brk)
			if !errors.Is(got, c.err) {
				t.Errorf("%v does not wrap %v", got, c.err)
			}
			var re *errRetry
			isRetry := errors.As(got, &re)
			isUnavail := errors.Is(got, consumer.ErrStoreUnavailable)
			isUnknown := errors.Is(got, consumer.ErrCommitUnknown)
			isStore := errors.Is(got, consumer.ErrStore)
			var g want
			switch {
			case isRetry && !isUnavail && !isStore:
				g = retry
			case isUnknown && isUnavail && !isStore:
				g = unknown
			case isUnavail && !isUnknown && !isStore:
				g = unavailable
			case isStore && !isUnavail && !isUnknown:
				g = store
			default:
				t.Fatalf("%v: inconsistent classification (retry %v, unavailable %v, unknown %v, store %v)", got, isRetry, isUnavail, isUnknown, isStore)
			}
			if g != c.want {
				t.Errorf("classify(%v) = %v (%d), want %d", c.err, got, g, c.want)
			}
		})
	}
}

func TestTableNames(t *testing.T) {
	for _, ok := range []string{"rabbitkit_inbox", "app.inbox", "_x", "Inbox2"} {
		if _, err := newQueries(ok); err != nil {
			t.Errorf("newQueries(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a.b.c", "1abc", "in box", `in"box`, "a;drop", ".x", "x.", "a-b", "x123456789012345678901234567890123456789012345678901"} {
		if _, err := newQueries(bad); !errors.Is(err, consumer.ErrInvalidConfig) {
			t.Errorf("newQueries(%q) = %v, want ErrInvalidConfig", bad, err)
		}
	}
	a, _ := newQueries("app.inbox")
	b, _ := newQueries("inbox")
	if a.lockKey == b.lockKey {
		t.Error("app.inbox and inbox share a migration lock key")
	}
	if a.t != `"app"."inbox"` || a.schemaT != `"app"."inbox_schema"` {
		t.Errorf("quoted names %s, %s", a.t, a.schemaT)
	}
}

func TestArrayLiterals(t *testing.T) {
	if got := byteaArrayLiteral([][]byte{{0, 0xff}, {}, []byte(`"\`)}); got != `{"\\x00ff","\\x","\\x225c"}` {
		t.Errorf("bytea literal %s", got)
	}
	if got := byteaArrayLiteral(nil); got != `{}` {
		t.Errorf("empty bytea literal %s", got)
	}
	if got := int8ArrayLiteral([]int64{1, 0, -5}, []bool{true, false, true}); got != `{1,NULL,-5}` {
		t.Errorf("int8 literal %s", got)
	}
}
