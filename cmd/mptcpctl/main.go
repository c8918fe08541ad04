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
	"time"
)

// Exit codes scripts can rely on.
const (
	exitOK          = 0
	exitFailure     = 1 // the daemon refused or failed the request
	exitUsage       = 2 // bad command line
	exitUnavailable = 3 // no system bus, or the daemon is not running
	exitPermission  = 4 // the caller may not do this
	exitNotFound    = 5 // no such connection, endpoint or address
	exitTimeout     = 6 // the daemon (or the bus) did not answer within the timeout
	// Ended by a signal: 128 + its number, as a shell reports a process a
	// signal killed (signalError.exitCode).
	exitInterrupted = 128 + int(syscall.SIGINT)  // 130: SIGINT (Ctrl-C)
	exitTerminated  = 128 + int(syscall.SIGTERM) // 143: SIGTERM
)

// defaultTimeout is how long mptcpctl waits for each answer from the bus
// or the daemon unless --timeout says otherwise: busctl's default, and the
// system bus's own reply timeout.
const defaultTimeout = 25 * time.Second

// signalGrace is how long main waits, after SIGINT or SIGTERM, for the
// command to return (every wait of a command ends with the signal's
// context) before it exits anyway: a command blocked writing its output
// to a pipe nobody reads does not hold mptcpctl up longer than this.
const signalGrace = 250 * time.Millisecond

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

// signalError is why mptcpctl's context ended when it got SIGINT or
// SIGTERM (context.Cause).
type signalError struct{ sig syscall.Signal }

func (e *signalError) Error() string {
	if e.sig == syscall.SIGTERM {
		return "terminated (SIGTERM)"
	}
	return "interrupted (SIGINT)"
}

// exitCode is 130 for SIGINT, 143 for SIGTERM.
func (e *signalError) exitCode() int { return 128 + int(e.sig) }

func main() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan int, 1)
	go func() { done <- run(ctx, os.Args[1:], os.Stdout, os.Stderr) }()
	select {
	case code := <-done:
		os.Exit(code)
	case s := <-sigs:
		// Every wait of the command ends with ctx: it returns at once
		// (monitor with success, anything else with the signal's exit
		// code). Should it not, a second signal or the grace period ends
		// mptcpctl all the same.
		se := &signalError{sig: s.(syscall.Signal)}
		cancel(se)
		select {
		case code := <-done:
			os.Exit(code)
		case <-sigs:
		case <-time.After(signalGrace):
		}
		fmt.Fprintf(os.Stderr, "mptcpctl: %v\n", se)
		os.Exit(se.exitCode())
	}
}

// run runs mptcpctl with the command line args and returns the exit code.
// ctx ends every wait for the bus or the daemon, and monitor; when its
// cause is a signalError, a command that fails because of it exits with
// the signal's code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	x := &cmdCtx{ctx: ctx, out: stdout, timeout: defaultTimeout, terminal: isTerminal(stdout)}
	defer x.close()
	err := x.dispatch(args)
	if err == nil || errors.Is(err, errHelp) {
		return exitOK
	}
	var se *signalError
	if errors.As(context.Cause(ctx), &se) {
		fmt.Fprintf(stderr, "mptcpctl: %v\n", se)
		return se.exitCode()
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
	ctx     context.Context
	out     io.Writer
	json    bool
	timeout time.Duration // the most each request waits for its answer (--timeout)
	c       *client
	// terminal: out is a terminal (top clears the screen between
	// refreshes).
	terminal bool
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// client returns the connection to the daemon, dialling it the first time.
// The command line must be parsed: the client keeps the timeout.
func (x *cmdCtx) client() (*client, error) {
	if x.c == nil {
		c, err := dial(x.ctx, x.timeout)
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
		case "--timeout", "-timeout":
			if len(args) < 2 {
				return usageErrorf("--timeout needs a value: a duration such as 5s or 500ms, or a number of seconds")
			}
			if err := x.setTimeout(args[1]); err != nil {
				return err
			}
			args = args[1:]
		default:
			if v, ok := timeoutArg(args[0]); ok {
				if err := x.setTimeout(v); err != nil {
					return err
				}
				break
			}
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
