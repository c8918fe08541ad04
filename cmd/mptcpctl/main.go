// Command mptcpctl queries and controls mptcp-pmd, the Multipath TCP path
// manager daemon, over its D-Bus API (org.mptcp.PathManager1) only.
//
// The commands are listed in help.go; `mptcpctl help` prints them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes scripts can rely on.
const (
	exitOK          = 0
	exitFailure     = 1 // the daemon refused or failed the request
	exitUsage       = 2 // bad command line
	exitUnavailable = 3 // no system bus, or the daemon is not running
	exitPermission  = 4 // the caller may not do this
	exitNotFound    = 5 // no such connection, endpoint or address
)

// exitError is an error with the exit code it should end mptcpctl with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// errHelp is returned by a command asked for its help (which it printed).
var errHelp = errors.New("help printed")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs mptcpctl with the command line args and returns the exit code.
// ctx ends long-running commands (monitor).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	x := &cmdCtx{ctx: ctx, out: stdout}
	defer x.close()
	err := x.dispatch(args)
	if err == nil || errors.Is(err, errHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "mptcpctl: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == exitUsage {
			fmt.Fprintln(stderr, "Run 'mptcpctl help' for usage.")
		}
		return ee.code
	}
	return exitFailure
}

// cmdCtx is what every command gets: where to print, how, and the
// connection to the daemon, made on first use so that a usage error or a
// help request needs no bus.
type cmdCtx struct {
	ctx  context.Context
	out  io.Writer
	json bool
	c    *client
}

// client returns the connection to the daemon, dialling it the first time.
func (x *cmdCtx) client() (*client, error) {
	if x.c == nil {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		x.c = c
	}
	return x.c, nil
}

// noArgs checks that the command name got no arguments and returns the
// connection to the daemon.
func (x *cmdCtx) noArgs(name string, args []string) (*client, error) {
	if _, err := x.parse(name, nil, args, 0); err != nil {
		return nil, err
	}
	return x.client()
}

func (x *cmdCtx) close() {
	if x.c != nil {
		x.c.close()
	}
}

// dispatch parses the global options, finds the command and runs it.
func (x *cmdCtx) dispatch(args []string) error {
	for len(args) > 0 {
		switch args[0] {
		case "--json", "-json":
			x.json = true
		case "-h", "-help", "--help":
			return x.help(nil)
		default:
			if len(args[0]) > 1 && args[0][0] == '-' {
				return usageErrorf("unknown option %s", args[0])
			}
			cmd, rest, err := lookup(args)
			if err != nil {
				return err
			}
			return cmd.run(x, rest)
		}
		args = args[1:]
	}
	x.help(nil)
	return usageErrorf("no command given")
}
