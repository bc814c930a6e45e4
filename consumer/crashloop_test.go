package consumer_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rabbitkit/rabbitkit/consumer"
	"github.com/rabbitkit/rabbitkit/internal/testbroker"
	"github.com/rabbitkit/rabbitkit/protocol"
)

// A handler that calls os.Exit on one message, run under a supervisor loop that restarts the
// process: the first crash is the message's first delivery; every redelivery's start is recorded
// before the handler runs, so after DefaultMaxCrashes more crashes the next delivery parks it with
// the reason instead of starting it. Everything else is applied exactly once, and the message is
// in the parking queue. Without the start counts the supervisor loop never ends (the test's 12
// restarts run out).
func TestCrashLoopMessageIsParked(t *testing.T) {
	f := newFixture(t, testbroker.SharedURL(t))
	ch := f.channel()
	all := publishStreams(f, ch, []string{"a", "b"}, 1, 20)
	poison := key("src", "a", 1, 7)
	var want []string
	for _, k := range all {
		if k != poison {
			want = append(want, k)
		}
	}
	crashes := 0
	for run := 0; ; run++ {
		require.Less(t, run, 12, "the supervisor gave up: the message crashes the consumer forever")
		cmd, out := runChild(t, f, len(want), "", childExitOn+"="+poison)
		err := waitChild(t, cmd, out, 90*time.Second)
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 7 {
			crashes++
			continue
		}
		require.NoError(t, err, "child: %s", out)
		break
	}
	require.Equal(t, consumer.DefaultMaxCrashes+1, crashes, "the first delivery plus MaxCrashes recorded starts")

	s, err := consumer.OpenBoltStore(f.path, consumer.BoltOptions{})
	require.NoError(t, err)
	requireExactlyOnce(t, effectsOf(t, s), want)
	require.NoError(t, s.Close())

	d, ok, err := ch.Get(f.parked, true)
	require.NoError(t, err)
	require.True(t, ok, "the crashing message is not in the parking queue")
	st, _, err := protocol.Decode(d.MessageId, d.Headers)
	require.NoError(t, err)
	require.Equal(t, poison, st.String())
	reason, _ := d.Headers[protocol.HeaderParkReason].(string)
	require.True(t, strings.Contains(reason, "started 3 times on redeliveries without finishing"), reason)
	require.Zero(t, f.messages(ch, f.queue))
}
