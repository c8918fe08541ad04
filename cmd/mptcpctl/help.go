package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one mptcpctl command: "status", or a group's subcommand such
// as "endpoint add".
type command struct {
	name    string // one or two words
	args    string // the synopsis after the name
	summary string // one line for the list of commands
	help    string // more, for `mptcpctl help NAME`; may be empty
	run     func(x *cmdCtx, args []string) error
}

// commands in the order `mptcpctl help` lists them. Set in init: the help
// command refers to the list.
var commands []*command

func init() {
	commands = []*command{
		{"status", "", "daemon, policy, control, limits, counts", statusHelp, cmdStatus},
		{"connections", "", "MPTCP connections and their subflows", "", cmdConnections},
		{"connection show", "CONN [--stats]", "one connection, its subflows and announcements", connHelp, cmdConnectionShow},
		{"endpoints", "", "in-kernel endpoints and who made them", endpointsHelp, cmdEndpoints},
		{"endpoint add", "ADDRESS [--port PORT] [--flags FLAG,...] [--interface IF] [--id ID]", "add an endpoint", endpointAddHelp, cmdEndpointAdd},
		{"endpoint del", "ID", "remove an endpoint", "", cmdEndpointDel},
		{"endpoint set", "ID FLAG,...|none", "change an endpoint's backup and fullmesh flags", "", cmdEndpointSet},
		{"endpoint flush", "", "remove every endpoint", "", cmdEndpointFlush},
		{"limits", "", "the in-kernel path manager's limits", "", cmdLimits},
		{"limits set", "SUBFLOWS ADD_ADDR_ACCEPTED", "set the limits", limitsSetHelp, cmdLimitsSet},
		{"preferences", "", "how each interface's paths are used", preferencesHelp, cmdPreferences},
		{"preference set", "INTERFACE cheap|expensive|backup|off|default", "set an interface's preference", preferencesHelp, cmdPreferenceSet},
		{"addresses", "", "local addresses, usable or why filtered out", addressesHelp, cmdAddresses},
		{"counters", "[--all]", "the kernel's MPTCP counters (MPTcpExt), those not zero", countersHelp, cmdCounters},
		{"monitor", "", "print events as they happen (Ctrl-C ends)", monitorHelp, cmdMonitor},
		{"top", "[--interval DURATION] [--count N]", "live rates per connection and subflow (Ctrl-C ends)", topHelp, cmdTop},
		{"revoke", "", "take control back from the registered controller", revokeHelp, cmdRevoke},
		{"diagnose", "[--output FILE]", "what a bug report needs, in one file", diagnoseHelp, cmdDiagnose},
		{"subflow add", "CONN LOCAL[:PORT] REMOTE:PORT [--backup] [--local-id ID] [--interface IF]", "create a subflow", userspaceHelp, cmdSubflowAdd},
		{"subflow del", "CONN LOCAL:PORT REMOTE:PORT", "close a subflow", userspaceHelp, cmdSubflowDel},
		{"subflow backup", "CONN LOCAL[:PORT] REMOTE:PORT on|off", "set or clear a subflow's backup flag", userspaceHelp, cmdSubflowBackup},
		{"announce", "CONN ADDRESS[:PORT] [--id ID]", "announce an address to the peer", announceHelp, cmdAnnounce},
		{"remove", "CONN ID", "withdraw an announced address", userspaceHelp, cmdRemove},
		{"help", "[COMMAND]", "this list, or the help of one command", "", cmdHelp},
	}
}

const intro = `Usage: mptcpctl [--json] [--timeout DURATION] COMMAND [ARGS]

Query and control mptcp-pmd, the Multipath TCP path manager, over D-Bus.
`

const outro = `
CONN is a connection number as "connections" shows it (3 or #3), or its
token in hex (0x8fa8e6a2, or the eight digits alone).

Options (anywhere on the command line):
  --json     print listings as JSON (monitor: one JSON object per line)
  --timeout DURATION
             wait at most DURATION for each answer from the daemon or the
             bus: 5s, 500ms, 1m30s, or a number of seconds (default 25s)
  --help     print the help of the command

Ctrl-C (SIGINT) and SIGTERM end mptcpctl at once, whatever it waits for.

Exit status: 0 success, 1 the daemon refused or failed, 2 usage,
3 daemon or bus not reachable, 4 permission denied, 5 not found,
6 no answer within the timeout (daemon or bus stuck), 130 interrupted
by SIGINT, 143 terminated by SIGTERM (monitor: 0, its normal end).
`

const (
	diagnoseHelp = `Collects, into FILE (mode 0600) or on standard output: the kernel's
version and net.mptcp sysctls, the daemon's status, limits, endpoints,
addresses, preferences, warnings, connections and MPTCP counters, its
configuration file, "ip mptcp limits show" and "endpoint show", "ss -Mni",
and the daemon's last 300 journal records. Each part that cannot be read
says why; the others are still written. It holds no secrets (the
configuration has none), but addresses: look before you share it.`
	topHelp = `Every interval (default 1s) reads every connection's statistics
(Manager.GetStatistics) and prints, busiest first, each connection's owner
(systemd unit, cgroup or uid), the bytes it sent and received per second
and retransmitted in all, and each subflow's rates and round-trip time,
"active" or "standby" (backup). Plain text, one refresh after the other
(the screen is cleared between them on a terminal); with --json one object
per refresh. --count N ends after N refreshes.`
	countersHelp = `The MPTcpExt counters of the daemon's network namespace, as nstat shows
them, read by the daemon (Manager.GetCounters); --all shows the zero ones
too. The daemon signals (CounterIncreased) and logs the growth of those
that mean trouble, such as MPTcpExtMPFallbackTokenInit or
MPTcpExtMPJoinSynTxCreatSkErr.`
	preferencesHelp = `An interface's preference says how paths through it are used: cheap
ones carry traffic; expensive ones (metered, mobile data) and backup ones
stand by (backup endpoints and subflows; the handover policy moves traffic
there only when no cheap path works); off ones are not used. Without a
setting, an interface is expensive when NetworkManager says its device is
metered or its name is that of a mobile-data device (ww*, rmnet*), and
cheap otherwise; the configuration may set one ([interfaces.NAME]
preference). "preference set" wins over both at once, for live connections
too, and lasts across restarts of the daemon, not reboots; "default" goes
back to the configured or default preference.`
	statusHelp = `The daemon's version, its built-in policy, who is in control (the
built-in policy, or a registered controller and its bus name), the path
manager of the daemon's network namespace (net.mptcp.path_manager), the
limits, and how many endpoints, usable local addresses and connections
there are; and, if any, how many signals the daemon dropped because the
bus did not take them as fast as they came.`
	revokeHelp = `Ends the registered controller's claim (Manager.RevokeController): the
controller is told (Release "revoked") and the built-in policy takes over
again. For a controller that is stuck; needs the same rights as any change.`
	connHelp = `Shows the initial subflow, every subflow with its local and remote
address ids, the addresses the peer announced (ADD_ADDR received) and the
addresses announced to the peer. With --stats, also the owner (process,
uid, systemd unit, cgroup) and what the connection and each subflow carry,
read from the kernel now: bytes sent, acknowledged, received and
retransmitted, round-trip time, congestion window; "standby" marks a
backup subflow, "active" the others.`
	endpointsHelp = `ORIGIN says who made an endpoint: policy (the daemon's built-in policy),
admin (a privileged caller, such as this command), controller (the
registered controller) or external (found in the kernel, made by someone
else, such as NetworkManager or ip mptcp).`
	endpointAddHelp = `FLAG is one of signal, subflow, backup, fullmesh, laminar (comma-separated;
signal and fullmesh exclude each other). ADDRESS may name the interface of
an IPv6 link-local address with a zone (fe80::1%eth0). ID 0, the default,
lets the kernel choose; the id is printed.`
	limitsSetHelp = `SUBFLOWS is the most additional subflows per connection,
ADD_ADDR_ACCEPTED the most addresses accepted from a peer's announcements
(the kernel allows 0 to 8).`
	addressesHelp = `Lists every address of the host's interfaces with the verdict of the
daemon's address filters (its [filter] configuration): the usable ones are
those the built-in policy uses and "status" counts.`
	monitorHelp = `Prints one line per event: connections created, established and closed;
subflows established, closed and changing priority; addresses announced and
withdrawn by the peer and by us; endpoints added, removed and changed;
limits; local addresses becoming usable or not; control passing to a
controller and back; the daemon leaving and joining the bus. With --json,
one JSON object per line, with an "event" member naming the event.

Its first reads of the daemon's state wait at most --timeout; then it
runs until Ctrl-C (SIGINT) or SIGTERM ends it, with exit status 0.`
	userspaceHelp = `This command needs the connection to be under the userspace path manager
(net.mptcp.path_manager=userspace in the daemon's network namespace when
the connection was made); the daemon answers "not supported" otherwise.`
	announceHelp = `The daemon keeps a listening socket on ADDRESS:PORT while the
announcement stands, so that the peer's join is accepted. Without PORT (or
with port 0) it listens on a port the kernel chooses and announces that.
ID 0, the default, lets the daemon choose the id (the same address always
gets the same id); the id is printed.

` + userspaceHelp
)

// lookup finds the command named by the first one or two words of args
// and returns the remaining arguments.
func lookup(args []string) (*command, []string, error) {
	if len(args) > 1 {
		if c := find(args[0] + " " + args[1]); c != nil {
			return c, args[2:], nil
		}
	}
	if c := find(args[0]); c != nil {
		return c, args[1:], nil
	}
	if group := subcommands(args[0]); len(group) > 0 {
		var names []string
		for _, c := range group {
			names = append(names, strings.TrimPrefix(c.name, args[0]+" "))
		}
		if len(args) == 1 {
			return nil, nil, usageErrorf("%s needs a subcommand: %s", args[0], strings.Join(names, ", "))
		}
		return nil, nil, usageErrorf("unknown %s subcommand %q (%s)", args[0], args[1], strings.Join(names, ", "))
	}
	return nil, nil, usageErrorf("unknown command %q", args[0])
}

func find(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// subcommands returns the commands of a group ("endpoint add", ...).
func subcommands(group string) []*command {
	var out []*command
	for _, c := range commands {
		if strings.HasPrefix(c.name, group+" ") {
			out = append(out, c)
		}
	}
	return out
}

// synopsis is a command's usage line.
func (c *command) synopsis() string {
	return strings.TrimSpace("mptcpctl " + c.name + " " + c.args)
}

// printHelp prints a command's help.
func (c *command) printHelp(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n\n%s.\n", c.synopsis(), capitalize(c.summary))
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", c.help)
	}
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// help prints the help of the commands named by words (all of them if
// none) and returns errHelp.
func (x *cmdCtx) help(words []string) error {
	if len(words) == 0 {
		fmt.Fprint(x.out, intro+"\nCommands:\n")
		const width = 30 // of the synopsis column; longer ones get a line of their own
		for _, c := range commands {
			syn := strings.TrimSpace(c.name + " " + c.args)
			if len(syn) > width {
				fmt.Fprintf(x.out, "  %s\n  %*s", syn, width, "")
			} else {
				fmt.Fprintf(x.out, "  %-*s", width, syn)
			}
			fmt.Fprintf(x.out, "  %s\n", c.summary)
		}
		fmt.Fprint(x.out, outro)
		return errHelp
	}
	name := strings.Join(words, " ")
	var match []*command
	if c := find(name); c != nil {
		match = append(match, c)
	}
	match = append(match, subcommands(name)...)
	if len(match) == 0 {
		return usageErrorf("no command %q", name)
	}
	for i, c := range match {
		if i > 0 {
			fmt.Fprintln(x.out)
		}
		c.printHelp(x.out)
	}
	return errHelp
}

func cmdHelp(x *cmdCtx, args []string) error {
	words, err := x.parse("help", nil, args, -1)
	if err != nil {
		return err
	}
	return x.help(words)
}

// parse parses the arguments of command name: its options (--json,
// --timeout, --help and those defined on fs, which may be nil) may stand
// before, between or after the positional arguments, until "--". It
// returns the positional arguments, which must number n (any number if
// n < 0). --help prints the command's help and returns errHelp.
func (x *cmdCtx) parse(name string, fs *flag.FlagSet, args []string, n int) ([]string, error) {
	cmd := find(name)
	if fs == nil {
		fs = flag.NewFlagSet(name, flag.ContinueOnError)
	}
	fs.SetOutput(io.Discard)
	fs.BoolVar(&x.json, "json", x.json, "")
	timeout := &timeoutFlag{x: x}
	fs.Var(timeout, "timeout", "")
	var help bool
	fs.BoolVar(&help, "help", false, "")
	fs.BoolVar(&help, "h", false, "")
	var pos []string
	for {
		err := fs.Parse(args)
		if help {
			cmd.printHelp(x.out)
			return nil, errHelp
		}
		if timeout.err != nil {
			return nil, timeout.err
		}
		if err != nil {
			return nil, usageErrorf("%s: %v (usage: %s)", name, err, cmd.synopsis())
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if used := args[:len(args)-len(rest)]; len(used) > 0 && used[len(used)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	if n >= 0 && len(pos) != n {
		return nil, usageErrorf("usage: %s", cmd.synopsis())
	}
	return pos, nil
}
