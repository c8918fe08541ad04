package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/godbus/dbus/v5"
)

// parseInterspersed parses flags that may stand before, between or after
// the positional arguments, and returns the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageErrorf("%s: %v", fs.Name(), err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func wantArgs(name string, args []string, n int, form string) error {
	if len(args) != n {
		return usageErrorf("%s takes %s", name, form)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func hostPort(addr string, port uint16) string {
	if strings.Contains(addr, ":") {
		addr = "[" + addr + "]"
	}
	return addr + ":" + strconv.Itoa(int(port))
}

func side(server bool) string {
	if server {
		return "server"
	}
	return "client"
}

func cmdStatus(x *ctx, args []string) error {
	if err := wantArgs("status", args, 0, "no arguments"); err != nil {
		return err
	}
	m, err := x.c.manager()
	if err != nil {
		return err
	}
	conns, err := x.c.connections()
	if err != nil {
		return err
	}
	m.Connections = len(conns)
	if x.json {
		return printJSON(x.out, m)
	}
	controller := dash(m.Controller)
	tw := table(x.out)
	fmt.Fprintf(tw, "Daemon:\tmptcp-pmd %s\n", m.Version)
	fmt.Fprintf(tw, "Policy:\t%s\n", m.Policy)
	fmt.Fprintf(tw, "Control:\t%s (controller %s)\n", m.ControlMode, controller)
	fmt.Fprintf(tw, "Kernel PM:\t%s\n", m.KernelPathManager)
	fmt.Fprintf(tw, "Limits:\tsubflows %d, add_addr_accepted %d\n", m.Limits.Subflows, m.Limits.AddAddrAccepted)
	fmt.Fprintf(tw, "Endpoints:\t%d\n", len(m.Endpoints))
	fmt.Fprintf(tw, "Local addresses:\t%d\n", len(m.LocalAddresses))
	fmt.Fprintf(tw, "Connections:\t%d\n", len(conns))
	return tw.Flush()
}

func cmdConnections(x *ctx, args []string) error {
	if err := wantArgs("connections", args, 0, "no arguments"); err != nil {
		return err
	}
	conns, err := x.c.connections()
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, conns)
	}
	tw := table(x.out)
	fmt.Fprintln(tw, "#\tTOKEN\tSTATE\tSIDE\tLOCAL\tREMOTE\tSUBFLOWS")
	for _, c := range conns {
		fmt.Fprintf(tw, "%d\t%08x\t%s\t%s\t%s\t%s\t%d\n", c.Number, c.Token, c.State, side(c.ServerSide),
			hostPort(c.LocalAddress, c.LocalPort), hostPort(c.RemoteAddress, c.RemotePort), len(c.Subflows))
		for _, s := range c.Subflows {
			fmt.Fprintf(tw, "\t\tsubflow\t%s\t%s\t%s\t%s\n", subflowIDs(s),
				hostPort(s.LocalAddress, s.LocalPort), hostPort(s.RemoteAddress, s.RemotePort), subflowNote(s))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(x.out, "\n%d connection(s).\n", len(conns))
	return nil
}

func subflowIDs(s subflow) string { return fmt.Sprintf("id %d/%d", s.LocalID, s.RemoteID) }

func subflowNote(s subflow) string {
	var n []string
	if s.Interface != "" {
		n = append(n, "dev "+s.Interface)
	}
	if s.Backup {
		n = append(n, "backup")
	}
	return strings.Join(n, " ")
}

func cmdConnection(x *ctx, args []string) error {
	if len(args) != 2 || args[0] != "show" {
		return usageErrorf("usage: connection show CONN")
	}
	path, err := x.c.resolve(args[1])
	if err != nil {
		return err
	}
	var props map[string]dbus.Variant
	if err := x.c.conn.Object(busName, path).Call(propsIface+".GetAll", 0, connIface).Store(&props); err != nil {
		return callError(err)
	}
	c, err := decodeConnection(path, props)
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, c)
	}
	tw := table(x.out)
	fmt.Fprintf(tw, "Connection:\t%d (%s)\n", c.Number, c.Path)
	fmt.Fprintf(tw, "Token:\t%08x\n", c.Token)
	fmt.Fprintf(tw, "State:\t%s, %s side\n", c.State, side(c.ServerSide))
	fmt.Fprintf(tw, "Local:\t%s\n", hostPort(c.LocalAddress, c.LocalPort))
	fmt.Fprintf(tw, "Remote:\t%s\n", hostPort(c.RemoteAddress, c.RemotePort))
	for _, s := range c.Subflows {
		fmt.Fprintf(tw, "Subflow:\t%s %s -> %s %s\n", subflowIDs(s), hostPort(s.LocalAddress, s.LocalPort),
			hostPort(s.RemoteAddress, s.RemotePort), subflowNote(s))
	}
	for _, a := range c.RemoteAddresses {
		fmt.Fprintf(tw, "Peer announced:\tid %d %s\n", a.ID, hostPort(a.Address, a.Port))
	}
	for _, a := range c.AnnouncedAddresses {
		fmt.Fprintf(tw, "We announced:\tid %d %s\n", a.ID, hostPort(a.Address, a.Port))
	}
	return tw.Flush()
}

func cmdSubflow(x *ctx, args []string) error {
	if len(args) == 0 {
		return usageErrorf("usage: subflow add|del|backup CONN ...")
	}
	switch args[0] {
	case "add":
		fs := flag.NewFlagSet("subflow add", flag.ContinueOnError)
		backup := fs.Bool("backup", false, "")
		localID := fs.Uint("local-id", 0, "")
		localPort := fs.Uint("local-port", 0, "")
		iface := fs.String("interface", "", "")
		pos, err := parseInterspersed(fs, args[1:])
		if err != nil {
			return err
		}
		if err := wantArgs("subflow add", pos, 3, "CONN LOCAL REMOTE:PORT"); err != nil {
			return err
		}
		if *localID > 255 || *localPort > 65535 {
			return usageErrorf("--local-id must be 0..255 and --local-port 0..65535")
		}
		local, _, err := parseAddrPort(pos[1], true)
		if err != nil {
			return err
		}
		remote, rport, err := parseAddrPort(pos[2], false)
		if err != nil {
			return err
		}
		opts := map[string]dbus.Variant{}
		if *backup {
			opts["backup"] = dbus.MakeVariant(true)
		}
		if *localID != 0 {
			opts["local_id"] = dbus.MakeVariant(uint8(*localID))
		}
		if *localPort != 0 {
			opts["local_port"] = dbus.MakeVariant(uint16(*localPort))
		}
		if *iface != "" {
			opts["interface"] = dbus.MakeVariant(*iface)
		}
		path, err := x.c.resolve(pos[0])
		if err != nil {
			return err
		}
		return callError0(x.c.callConn(path, "CreateSubflow", local.String(), remote.String(), rport, opts).Err)
	case "del", "backup":
		n, form := 3, "CONN LOCAL:PORT REMOTE:PORT"
		if args[0] == "backup" {
			n, form = 4, form+" on|off"
		}
		pos := args[1:]
		if err := wantArgs("subflow "+args[0], pos, n, form); err != nil {
			return err
		}
		local, lport, err := parseAddrPort(pos[1], false)
		if err != nil {
			return err
		}
		remote, rport, err := parseAddrPort(pos[2], false)
		if err != nil {
			return err
		}
		path, err := x.c.resolve(pos[0])
		if err != nil {
			return err
		}
		if args[0] == "del" {
			return callError0(x.c.callConn(path, "RemoveSubflow", local.String(), lport, remote.String(), rport).Err)
		}
		var on bool
		switch pos[3] {
		case "on":
			on = true
		case "off":
		default:
			return usageErrorf("subflow backup takes on or off, not %q", pos[3])
		}
		return callError0(x.c.callConn(path, "SetSubflowBackup", local.String(), lport, remote.String(), rport, on).Err)
	}
	return usageErrorf("unknown subflow command %q (add, del, backup)", args[0])
}

func cmdAnnounce(x *ctx, args []string) error {
	fs := flag.NewFlagSet("announce", flag.ContinueOnError)
	id := fs.Uint("id", 0, "")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("announce", pos, 2, "CONN ADDRESS[:PORT] [--id ID]"); err != nil {
		return err
	}
	if *id > 255 {
		return usageErrorf("--id must be 0..255")
	}
	addr, port, err := parseAddrPort(pos[1], true)
	if err != nil {
		return err
	}
	path, err := x.c.resolve(pos[0])
	if err != nil {
		return err
	}
	var got uint8
	if err := x.c.callConn(path, "AnnounceAddress", addr.String(), port, uint8(*id)).Store(&got); err != nil {
		return callError(err)
	}
	fmt.Fprintf(x.out, "announced %s with id %d\n", hostPort(addr.String(), port), got)
	return nil
}

func cmdRemove(x *ctx, args []string) error {
	if err := wantArgs("remove", args, 2, "CONN ID"); err != nil {
		return err
	}
	id, err := strconv.ParseUint(args[1], 10, 8)
	if err != nil {
		return usageErrorf("%q is not an address id (1..255)", args[1])
	}
	path, err := x.c.resolve(args[0])
	if err != nil {
		return err
	}
	return callError0(x.c.callConn(path, "RemoveAddress", uint8(id)).Err)
}

func callError0(err error) error {
	if err != nil {
		return callError(err)
	}
	return nil
}
