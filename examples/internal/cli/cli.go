// Package cli is the command-line plumbing the example binaries share: usage text, flag parsing with
// conventional exit codes, and error reporting.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

// Parse gives fs the usage text (followed by the flag list) and parses args. -h and -help print the
// usage and exit 0; a bad flag exits 2.
func Parse(fs *flag.FlagSet, usage string, args []string) {
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage, "\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
}

// Exit prints "<name>: <err>" to stderr and exits with code when err is not nil.
func Exit(name string, err error, code int) {
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(code)
	}
}
