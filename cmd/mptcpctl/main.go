// Command mptcpctl queries and controls mptcp-pmd, the Multipath TCP path
// manager daemon, over its D-Bus API (org.mptcp.PathManager1).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
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

const usage = `Usage: mptcpctl [--json] COMMAND [ARGS]

Query and control mptcp-pmd, the Multipath TCP path manager, over D-Bus.

Commands:
  status                                 daemon, policy, control and kernel state
  connections                            MPTCP connections and their subflows
  connection show CONN                   one connection in detail
  monitor                                print events as they happen (Ctrl-C ends)
  subflow add CONN LOCAL REMOTE:PORT [--backup] [--local-id ID] [--local-port P] [--interface IF]
  subflow del CONN LOCAL:PORT REMOTE:PORT
  subflow backup CONN LOCAL:PORT REMOTE:PORT on|off
  announce CONN ADDRESS[:PORT] [--id ID] announce a local address to the peer
  remove CONN ID                         withdraw an announced address

CONN is a connection number as "connections" shows it (3 or #3), or its
token in hex (0x8fa8e6a2, or the eight digits alone).

Options:
  --json     print listings as JSON (monitor: one JSON object per line)

Exit status: 0 success, 1 the daemon refused, 2 usage, 3 daemon or bus not
reachable, 4 permission denied, 5 not found.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mptcpctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	jsonOut := fs.Bool("json", false, "")
	help := fs.Bool("help", false, "")
	fs.BoolVar(help, "h", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "mptcpctl: %v\n\n%s", err, usage)
		return exitUsage
	}
	if *help || fs.NArg() == 0 {
		fmt.Fprint(stdout, usage)
		if *help {
			return exitOK
		}
		return exitUsage
	}
	err := dispatch(&ctx{out: stdout, json: *jsonOut}, fs.Args())
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "mptcpctl: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == exitUsage {
			fmt.Fprintln(stderr, "Run 'mptcpctl --help' for usage.")
		}
		return ee.code
	}
	return exitFailure
}

// ctx is what every command gets: where to print and how.
type ctx struct {
	out  io.Writer
	json bool
	c    *client
}

func dispatch(x *ctx, args []string) error {
	cmd, rest := args[0], args[1:]
	run, ok := commands[cmd]
	if !ok {
		return usageErrorf("unknown command %q", cmd)
	}
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.close()
	x.c = c
	return run(x, rest)
}

var commands map[string]func(*ctx, []string) error

func init() {
	commands = map[string]func(*ctx, []string) error{
		"status":      cmdStatus,
		"connections": cmdConnections,
		"connection":  cmdConnection,
		"monitor":     cmdMonitor,
		"subflow":     cmdSubflow,
		"announce":    cmdAnnounce,
		"remove":      cmdRemove,
	}
}
