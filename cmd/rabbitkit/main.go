// Command rabbitkit is the operator's tool for rabbitkit's stores: a publisher's journal (look into
// it, re-drive or drop parked messages, compact it) and, as they land, the consumer's dedup store,
// the PostgreSQL outbox and the consumer's parking queue.
//
// Install it with:
//
//	go install github.com/rabbitkit/rabbitkit/cmd/rabbitkit@latest
//
// Usage:
//
//	rabbitkit journal [-json] [-limit N] [-yes] stats|pending|parked|show|redrive|drop|compact FILE [ARGS]
//	rabbitkit consumer [-json] state FILE | -pg DSN [-table NAME]
//	rabbitkit outbox [-json] [-limit N] stats|pending|parked|redrive -pg DSN [-table NAME] [ARGS]
//	rabbitkit parked [-json] list|show|redrive QUEUE -url URL [INDEX...|all|-id MESSAGE-ID]
//
// Exit codes: 0 done, 1 an error (printed on stderr as "rabbitkit: ..."), 2 a usage error (bad
// flag, unknown command or missing argument). Output is a table for people, or with -json a stable
// JSON shape for scripts (docs/OPERATIONS.md, "The rabbitkit CLI").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const mainUsage = `Usage:
  rabbitkit journal COMMAND FILE [ARGS]   a publisher's bbolt journal (rabbitkit journal -h)
  rabbitkit consumer state FILE | -pg DSN the dedup state of a consumer's store (rabbitkit consumer -h)
  rabbitkit outbox COMMAND -pg DSN        a PostgreSQL outbox's backlog, re-drive (rabbitkit outbox -h)
  rabbitkit parked COMMAND QUEUE -url URL a consumer's parking queue: list, show, redrive (rabbitkit parked -h)

Exit codes: 0 ok, 1 error, 2 usage.
`

// errUsage marks an error as the caller's misuse of the command line: exit code 2.
var errUsage = errors.New("usage")

// usageErr returns an error that exits 2, printing msg.
func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

func main() {
	os.Exit(runMain(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// runMain runs the command line args and returns the exit code; tests call it directly.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return 2
	}
	var err error
	switch args[0] {
	case "journal":
		err = journalMain(ctx, args[1:], stdout, stderr)
	case "consumer":
		err = consumerMain(ctx, args[1:], stdout, stderr)
	case "outbox":
		err = outboxMain(ctx, args[1:], stdout, stderr)
	case "parked":
		err = parkedMain(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, mainUsage)
		return 0
	default:
		fmt.Fprint(stderr, mainUsage)
		err = usageErr("unknown command %q", args[0])
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "rabbitkit:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "rabbitkit:", err)
		return 1
	}
}

// parseFlags parses args with fs, which prints usage and its flags to stderr on -h or a bad flag.
// Flags may come before or after the positional arguments.
func parseFlags(fs *flag.FlagSet, usage string, args []string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage, "\nFlags:\n")
		fs.PrintDefaults()
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", errUsage, err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
