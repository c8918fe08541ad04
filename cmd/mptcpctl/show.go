package main

import (
	"flag"
	"fmt"
)

// The read-only views: status, connections, connection show, addresses.

func cmdStatus(x *cmdCtx, args []string) error {
	c, err := x.noArgs("status", args)
	if err != nil {
		return err
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	conns, err := c.connections()
	if err != nil {
		return err
	}
	m.Connections = len(conns)
	if x.json {
		return printJSON(x.out, m)
	}
	control := "built-in policy"
	if m.ControlMode != "builtin" {
		control = fmt.Sprintf("%s %s", m.ControlMode, dash(m.Controller))
	}
	tw := table(x.out)
	fmt.Fprintf(tw, "Daemon:\tmptcp-pmd %s\n", m.Version)
	fmt.Fprintf(tw, "Policy:\t%s\n", m.Policy)
	fmt.Fprintf(tw, "Control:\t%s\n", control)
	fmt.Fprintf(tw, "Kernel PM:\t%s\n", m.KernelPathManager)
	fmt.Fprintf(tw, "Limits:\tsubflows %d, add_addr_accepted %d\n", m.Limits.Subflows, m.Limits.AddAddrAccepted)
	fmt.Fprintf(tw, "Endpoints:\t%d\n", len(m.Endpoints))
	fmt.Fprintf(tw, "Usable addresses:\t%d\n", len(m.LocalAddresses))
	fmt.Fprintf(tw, "Connections:\t%d\n", len(conns))
	if m.SignalsDropped > 0 {
		fmt.Fprintf(tw, "Signals dropped:\t%d (the bus did not take them as fast as they came; see mptcp-pmd(8))\n", m.SignalsDropped)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, w := range m.Warnings {
		fmt.Fprintf(x.out, "Warning: %s\n", w)
	}
	return nil
}

func cmdConnections(x *cmdCtx, args []string) error {
	c, err := x.noArgs("connections", args)
	if err != nil {
		return err
	}
	conns, err := c.connections()
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, conns)
	}
	tw := table(x.out)
	fmt.Fprintln(tw, "#\tTOKEN\tSTATE\tSIDE\tLOCAL\tREMOTE\tSUBFLOWS")
	for _, c := range conns {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\n", c.Number, c.Token, c.State, side(c.ServerSide),
			hostPort(c.LocalAddress, c.LocalPort), hostPort(c.RemoteAddress, c.RemotePort), len(c.Subflows))
		for _, s := range c.Subflows {
			fmt.Fprintf(tw, "\t\tsubflow\t%s\t%s\t%s\t%s\n", subflowIDs(s),
				hostPort(s.LocalAddress, s.LocalPort), hostPort(s.RemoteAddress, s.RemotePort), subflowNote(s))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(x.out, "\n%s.\n", count(len(conns), "connection"))
	return nil
}

func cmdConnectionShow(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("connection show", flag.ContinueOnError)
	withStats := fs.Bool("stats", false, "")
	pos, err := x.parse("connection show", fs, args, 1)
	if err != nil {
		return err
	}
	c, path, err := x.connArg(pos[0])
	if err != nil {
		return err
	}
	cn, err := c.connection(path)
	if err != nil {
		return err
	}
	var st connStats
	if *withStats {
		if st, err = c.statistics(path); err != nil {
			return err
		}
	}
	if x.json {
		if *withStats {
			return printJSON(x.out, struct {
				connection
				Statistics connStats `json:"statistics"`
			}{cn, st})
		}
		return printJSON(x.out, cn)
	}
	tw := table(x.out)
	fmt.Fprintf(tw, "Connection:\t%d (%s)\n", cn.Number, cn.Path)
	fmt.Fprintf(tw, "Token:\t%s\n", cn.Token)
	fmt.Fprintf(tw, "State:\t%s, %s side\n", cn.State, side(cn.ServerSide))
	fmt.Fprintf(tw, "Local:\t%s\n", hostPort(cn.LocalAddress, cn.LocalPort))
	fmt.Fprintf(tw, "Remote:\t%s\n", hostPort(cn.RemoteAddress, cn.RemotePort))
	fmt.Fprintf(tw, "Deny join to id 0:\t%s\n", yesNo(cn.DenyJoinID0))
	fmt.Fprintf(tw, "Subflows:\t%d\n", len(cn.Subflows))
	for _, s := range cn.Subflows {
		fmt.Fprintf(tw, "  %s\t%s -> %s %s\n", subflowIDs(s), hostPort(s.LocalAddress, s.LocalPort),
			hostPort(s.RemoteAddress, s.RemotePort), subflowNote(s))
	}
	for _, list := range []struct {
		title string
		addrs []announced
	}{{"Peer announced", cn.RemoteAddresses}, {"We announced", cn.AnnouncedAddresses}} {
		fmt.Fprintf(tw, "%s:\t%d\n", list.title, len(list.addrs))
		for _, a := range list.addrs {
			fmt.Fprintf(tw, "  id %d\t%s\n", a.ID, hostPort(a.Address, a.Port))
		}
	}
	if *withStats {
		if err := tw.Flush(); err != nil {
			return err
		}
		tw = table(x.out) // its own columns
		fmt.Fprintf(tw, "Owner:\t%s\n", st.owner())
		if st.Rule != "" {
			fmt.Fprintf(tw, "Rule:\t%s (policy %s)\n", st.Rule, st.Policy)
		}
		fmt.Fprintf(tw, "Data:\tsent %s, received %s, acknowledged %s, retransmitted %s\n",
			bytesStr(st.BytesSent), bytesStr(st.BytesReceived), bytesStr(st.BytesAcked), bytesStr(st.BytesRetrans))
		fmt.Fprintf(tw, "Per subflow:\t%d\n", len(st.Subflows))
		if err := tw.Flush(); err != nil {
			return err
		}
		tw = table(x.out)
		for _, s := range st.Subflows {
			role := "active"
			if s.Backup {
				role = "standby"
			}
			fmt.Fprintf(tw, "  %s -> %s\t%s %s\tsent %s\tacked %s\treceived %s\trtt %.2f ms\tcwnd %d\tretrans %d\n",
				hostPort(s.LocalAddress, s.LocalPort), hostPort(s.RemoteAddress, s.RemotePort), dash(s.Interface), role,
				bytesStr(s.BytesSent), bytesStr(s.BytesAcked), bytesStr(s.BytesReceived), float64(s.RTTus)/1000, s.Cwnd, s.Retransmits)
		}
	}
	return tw.Flush()
}

func cmdAddresses(x *cmdCtx, args []string) error {
	c, err := x.noArgs("addresses", args)
	if err != nil {
		return err
	}
	addrs, err := c.addresses()
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, addrs)
	}
	usable := 0
	tw := table(x.out)
	fmt.Fprintln(tw, "INTERFACE\tADDRESS\tUSABLE\tREASON")
	for _, a := range addrs {
		if a.Usable {
			usable++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", dash(a.Interface), a.Address, yesNo(a.Usable), dash(a.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(x.out, "\n%d usable, %d filtered out.\n", usable, len(addrs)-usable)
	return nil
}

// bytesStr prints a byte count in B, kB, MB or GB (powers of 1000).
func bytesStr(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2f MB", float64(n)/1e6)
	case n >= 1e4:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}
