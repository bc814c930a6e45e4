package publisher

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/rabbitkit/rabbitkit/internal/testbroker"
)

// nextChange returns the next OnStateChange call, failing the test after 5s.
func nextChange(t *testing.T, changes <-chan StateChange) StateChange {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no state change")
		return StateChange{}
	}
}

func waitReady(p *Publisher, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return p.WaitReady(ctx)
}

// TestFakeWaitReadyAndErrors: WaitReady, Stats.LastError and StateChange.Err through a channel
// set-up that fails, a connection lost with and without a reason, and an alarm.
func TestFakeWaitReadyAndErrors(t *testing.T) {
	changes := make(chan StateChange, 64)
	f := newFakeConnector()
	refused := &amqp.Error{Code: amqp.AccessRefused, Reason: "ACCESS_REFUSED - configure access to exchange 'x' refused"}
	f.ChanErr.Store(refused) // before the sender's first channel
	f.Down.Store(true)       // the dial waits
	p, _, _ := fakePublisher(t, func(c *Config) {
		c.dial = f
		c.OnStateChange = func(sc StateChange) { changes <- sc }
	})
	if st := p.Stats(); st.LastError != nil || !st.LastErrorAt.IsZero() {
		t.Fatalf("LastError before any attempt: %v at %v", st.LastError, st.LastErrorAt)
	}
	if err := waitReady(p, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || err.Error() != "publisher: not ready: context deadline exceeded" {
		t.Fatalf("WaitReady before any error: %v", err)
	}
	f.Down.Store(false)
	c1 := nextConn(t, f)

	// The channel set-up keeps failing: WaitReady ends with ctx and names the 403.
	err := waitReady(p, 300*time.Millisecond)
	var ae *amqp.Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ae) || ae.Code != amqp.AccessRefused ||
		!strings.Contains(err.Error(), "publisher: not ready: context deadline exceeded; last error: ") {
		t.Fatalf("WaitReady while the channel set-up fails: %v", err)
	}
	if st := p.Stats(); !errors.Is(st.LastError, refused) || st.LastErrorAt.IsZero() || st.State != StateConnecting {
		t.Fatalf("stats while the channel set-up fails: state %v, last error %v at %v", st.State, st.LastError, st.LastErrorAt)
	}

	// The operator fixes it: ready.
	f.ChanErr.Store(nil)
	if err := waitReady(p, 5*time.Second); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if sc := nextChange(t, changes); sc.From != StateConnecting || sc.To != StateReady || sc.Err != nil {
		t.Fatalf("change to ready: %+v", sc)
	}
	if err := waitReady(p, time.Millisecond); err != nil {
		t.Fatalf("WaitReady while ready: %v", err)
	}
	nextChan(t, c1)

	// Connection lost with a reason: the change carries it, and so does Stats.
	forced := &amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure"}
	c1.Fail(forced)
	if sc := nextChange(t, changes); sc.From != StateReady || sc.To != StateConnecting || !errors.Is(sc.Err, forced) {
		t.Fatalf("change on a forced close: %+v", sc)
	}
	if st := p.Stats(); !errors.Is(st.LastError, forced) {
		t.Fatalf("LastError after a forced close: %v", st.LastError)
	}

	// Lost without a reason: never a nil error, never a nil *amqp.Error inside a non-nil error.
	c2 := nextConn(t, f)
	nextChan(t, c2)
	if sc := nextChange(t, changes); sc.To != StateReady {
		t.Fatalf("change %+v, want ready", sc)
	}
	c2.Fail(nil)
	sc := nextChange(t, changes)
	if sc.To != StateConnecting || !errors.Is(sc.Err, errConnLost) {
		t.Fatalf("change on a close without a reason: %+v", sc)
	}
	_ = sc.Err.Error() // a typed nil inside would panic here

	// An alarm: the session stays up, the change says why.
	c3 := nextConn(t, f)
	nextChan(t, c3)
	if sc := nextChange(t, changes); sc.To != StateReady {
		t.Fatalf("change %+v, want ready", sc)
	}
	c3.Block(amqp.Blocking{Active: true, Reason: "low on memory"})
	if sc := nextChange(t, changes); sc.To != StateBlocked || sc.Err == nil || !strings.Contains(sc.Err.Error(), "low on memory") {
		t.Fatalf("change on connection.blocked: %+v", sc)
	}
	if err := waitReady(p, time.Second); err != nil {
		t.Fatalf("WaitReady while blocked (the session is up): %v", err)
	}
	c3.Block(amqp.Blocking{Active: false})
	if sc := nextChange(t, changes); sc.To != StateReady || sc.Err != nil {
		t.Fatalf("change on connection.unblocked: %+v", sc)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitReady after Close: %v, want ErrClosed", err)
	}
	if sc := nextChange(t, changes); sc.To != StateClosed || sc.Err != nil {
		t.Fatalf("change on Close: %+v", sc)
	}
}

// TestWaitReady against the shared broker: a wrong password and a refused vhost are told by
// WaitReady and Stats.LastError, not only in the log; the right URL is ready.
func TestWaitReady(t *testing.T) {
	shared := testbroker.SharedURL(t)
	withURL := func(mod func(*url.URL)) string {
		u, err := url.Parse(shared)
		if err != nil {
			t.Fatal(err)
		}
		mod(u)
		return u.String()
	}
	// RabbitMQ answers a refused login only after 3 s (SILENT_CLOSE_DELAY, against password
	// guessing): amqp091-go does not advertise authentication_failure_close, so the broker sends no
	// connection.close and drops the socket after the delay. A 3 s WaitReady would race that drop;
	// the wrong password gets 5 s, and the error must come within 4 s of New.
	tests := []struct {
		name string
		url  string
		wait time.Duration
		want []string // in the error; nil: ready
	}{
		{"right-url", shared, 3 * time.Second, nil},
		{"wrong-password", withURL(func(u *url.URL) { u.User = url.UserPassword(u.User.Username(), "wrong-pw") }),
			5 * time.Second, []string{"403", "username or password not allowed"}},
		{"refused-vhost", withURL(func(u *url.URL) { u.Path = "/rk-no-such-vhost" }),
			3 * time.Second, []string{"530", "rk-no-such-vhost"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t, shared, "classic", nil)
			began := time.Now()
			p := mustNew(t, s.config(t, tc.url, t.TempDir()))
			err := waitReady(p, tc.wait)
			st := p.Stats()
			if tc.want == nil {
				if err != nil || st.State != StateReady {
					t.Fatalf("WaitReady: %v (state %v, last error %v)", err, st.State, st.LastError)
				}
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("WaitReady: %v, want the deadline", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("WaitReady's error %q does not name %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "wrong-pw") {
				t.Errorf("WaitReady's error shows the password: %q", err)
			}
			var ae *amqp.Error
			if !errors.As(err, &ae) {
				t.Errorf("WaitReady's error %q does not wrap the *amqp.Error", err)
			}
			if st.State != StateConnecting || st.LastError == nil || !strings.Contains(st.LastError.Error(), tc.want[0]) {
				t.Errorf("stats: state %v, last error %v", st.State, st.LastError)
			} else if at := st.LastErrorAt.Sub(began); at > 4*time.Second {
				t.Errorf("first connection error known %v after New", at)
			}
		})
	}
}
