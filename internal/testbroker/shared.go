// Package testbroker gives tests a real RabbitMQ: the shared broker every test may use, private
// nodes that a test may kill, restart or put under an alarm, and an in-process toxiproxy that injects
// connection faults between client and broker. It is for tests only.
package testbroker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the shared broker started by `make test` (scripts/ensure-rabbitmq.sh).
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// SharedURL returns the URL of the shared broker ($RABBITKIT_AMQP_URL or DefaultURL) and fails the
// test when it does not answer: `make test` starts it, so a missing broker is a set-up error, not a
// reason to skip. Under -short (`make unit`) the test is skipped instead: unit runs need no broker.
func SharedURL(t testing.TB) string {
	t.Helper()
	SkipShort(t)
	url := os.Getenv("RABBITKIT_AMQP_URL")
	if url == "" {
		url = DefaultURL
	}
	c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("testbroker: the shared RabbitMQ at %s does not answer (run `make test`, which starts it): %v", url, err)
	}
	_ = c.Close()
	return url
}

// SkipShort skips t under -short (`make unit`, which runs without a broker or a database).
func SkipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real broker or database: run `make test`")
	}
}

// Name returns a unique name for a queue or exchange: "rk-<prefix>-<random>".
func Name(t testing.TB, prefix string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix = strings.NewReplacer("/", "-", " ", "-").Replace(prefix)
	return "rk-" + prefix + "-" + hex.EncodeToString(b[:])
}

// DeleteQueues deletes the queues at the end of the test (on its own connection).
func DeleteQueues(t testing.TB, url string, queues ...string) {
	t.Helper()
	t.Cleanup(func() {
		withChannel(url, func(ch *amqp.Channel) {
			for _, q := range queues {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
		})
	})
}

// DeleteExchanges deletes the exchanges at the end of the test (on its own connection).
func DeleteExchanges(t testing.TB, url string, exchanges ...string) {
	t.Helper()
	t.Cleanup(func() {
		withChannel(url, func(ch *amqp.Channel) {
			for _, e := range exchanges {
				_ = ch.ExchangeDelete(e, false, false)
			}
		})
	})
}

func withChannel(url string, fn func(ch *amqp.Channel)) {
	c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	fn(ch)
}

// WaitAMQP polls url until an AMQP connection opens or ctx ends.
func WaitAMQP(ctx context.Context, url string) error {
	for {
		c, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// AddUser creates a user on vhost "/" of the shared broker, which must be the local default node
// (rabbitmqctl without -n), and returns url with that user's credentials. perms are the configure,
// write and read regular expressions; none means ".*" for all three. The user is deleted when the
// test ends.
func AddUser(t testing.TB, url string, perms ...string) string {
	t.Helper()
	u, err := amqp.ParseURI(url)
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	if h := u.Host; h != "127.0.0.1" && h != "localhost" && h != "::1" {
		// `make test` always runs a local broker; a remote one (RABBITKIT_AMQP_URL) cannot be
		// managed with the local rabbitmqctl.
		t.Skipf("testbroker: AddUser manages users with the local rabbitmqctl; the shared broker %s is remote", u.Host)
	}
	name := Name(t, "user")
	var b [12]byte
	_, _ = rand.Read(b[:])
	pass := hex.EncodeToString(b[:])
	ctl := func(args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("testbroker: rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ctl("add_user", name, pass)
	t.Cleanup(func() { ctl("delete_user", name) })
	if len(perms) == 0 {
		perms = []string{".*", ".*", ".*"}
	}
	if len(perms) != 3 {
		t.Fatalf("testbroker: AddUser wants configure, write and read permissions, got %q", perms)
	}
	ctl(append([]string{"set_permissions", "-p", "/", name}, perms...)...)
	u.Username, u.Password = name, pass
	return u.String()
}
