package pginbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/rabbitkit/rabbitkit/consumer"
)

// phase says where in a transaction an error happened.
type phase uint8

const (
	phaseTx     phase = iota // BEGIN and every statement before COMMIT: nothing committed
	phaseCommit              // COMMIT was (or may have been) sent: the outcome may be unknown
)

// errRetry marks an attempt the store reruns itself (serialization failure, deadlock, a row that
// vanished between INSERT and SELECT FOR UPDATE).
type errRetry struct{ err error }

func (e *errRetry) Error() string { return e.err.Error() }
func (e *errRetry) Unwrap() error { return e.err }

// errRerun rolls back an attempt in which an effect failed; Commit reruns the batch without it.
var errRerun = errors.New("pginbox: rerun without the failed op")

// sqlState returns the SQLSTATE of a server error anywhere in err's chain (pgx's *pgconn.PgError,
// or any driver's error with a SQLState method, as lib/pq's), or "".
func sqlState(err error) (code string, fatal bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, strings.EqualFold(pe.Severity, "FATAL") || strings.EqualFold(pe.Severity, "PANIC")
	}
	var st interface{ SQLState() string }
	if errors.As(err, &st) {
		return st.SQLState(), false
	}
	return "", false
}

// retryableState: the transaction was rolled back by the server and may simply be run again.
func retryableState(code string) bool { return code == "40001" || code == "40P01" }

// unavailableState: the server is going away, restarting, out of resources, or the statement was
// cancelled by a timeout: worth retrying later.
func unavailableState(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"): // connection exception
		return true
	case strings.HasPrefix(code, "53"): // insufficient resources (too many connections, disk full, out of memory)
		return true
	case code == "57P01", code == "57P02", code == "57P03": // admin shutdown, crash shutdown, cannot connect now
		return true
	case code == "57014": // query_canceled: statement_timeout or a cancel request
		return true
	case code == "55P03": // lock_not_available: lock_timeout
		return true
	}
	return false
}

// connError reports whether err says the connection (or the way to it) failed, rather than the
// server refusing a statement.
func connError(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) || errors.Is(err, pgconn.ErrConnClosed) {
		return true
	}
	if pgconn.Timeout(err) || pgconn.SafeToRetry(err) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// classify wraps err, a failure of what, for the caller of Commit (and Peek, Load, View):
//
//   - 40001, 40P01: *errRetry (the store reruns the attempt; after Options.MaxTxRetries it wraps
//     consumer.ErrStoreUnavailable);
//   - before COMMIT: a lost or refused connection, a timeout, ctx's end, SQLSTATE class 08 or 53,
//     57P01–57P03, 57014, 55P03: consumer.ErrStoreUnavailable;
//   - during COMMIT: 40003, a FATAL server error, or a lost connection or timeout after COMMIT may
//     have been sent: consumer.ErrStoreUnavailable and consumer.ErrCommitUnknown; a connection
//     error raised before anything was sent (pgconn.SafeToRetry) only ErrStoreUnavailable;
//   - anything else: consumer.ErrStore (the Run stops).
//
// broken tells that the connection was found closed after the error.
func classify(what string, err error, ph phase, broken bool) error {
	if err == nil {
		return nil
	}
	code, fatal := sqlState(err)
	if retryableState(code) {
		return &errRetry{fmt.Errorf("pginbox: %s: %w", what, err)}
	}
	if ph == phaseCommit {
		switch {
		case code == "40003", fatal:
			return fmt.Errorf("pginbox: %s: %w: %w: %w", what, consumer.ErrStoreUnavailable, consumer.ErrCommitUnknown, err)
		case code != "":
			// The server answered COMMIT with an error: it rolled back (a deferred constraint, say).
			if unavailableState(code) {
				return fmt.Errorf("pginbox: %s: %w: %w", what, consumer.ErrStoreUnavailable, err)
			}
			return fmt.Errorf("%w: pginbox: %s: %w", consumer.ErrStore, what, err)
		case errors.Is(err, pgx.ErrTxCommitRollback):
			return fmt.Errorf("%w: pginbox: %s: the transaction was aborted by an earlier error (did a handler ignore an SQL error?): %w", consumer.ErrStore, what, err)
		case pgconn.SafeToRetry(err):
			return fmt.Errorf("pginbox: %s (not sent): %w: %w", what, consumer.ErrStoreUnavailable, err)
		case connError(err) || broken:
			return fmt.Errorf("pginbox: %s: %w: %w: %w", what, consumer.ErrStoreUnavailable, consumer.ErrCommitUnknown, err)
		}
		// An error of unknown kind while COMMIT was in flight: the outcome is unknown too.
		return fmt.Errorf("pginbox: %s: %w: %w: %w", what, consumer.ErrStoreUnavailable, consumer.ErrCommitUnknown, err)
	}
	if unavailableState(code) || (code == "" && (connError(err) || broken)) {
		return fmt.Errorf("pginbox: %s: %w: %w", what, consumer.ErrStoreUnavailable, err)
	}
	return fmt.Errorf("%w: pginbox: %s: %w", consumer.ErrStore, what, err)
}
