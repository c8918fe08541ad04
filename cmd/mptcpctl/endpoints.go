package main

import (
	"flag"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The in-kernel path manager: endpoints and limits.

// endpointFlags are the flag words a user may give (the contract's, less
// implicit, which only the kernel sets).
var endpointFlags = []string{"signal", "subflow", "backup", "fullmesh", "laminar"}

// parseFlagList parses "signal,backup"; "none" (or "") is no flag.
func parseFlagList(s string) ([]string, error) {
	out := []string{}
	if s == "none" || s == "" {
		return out, nil
	}
	for _, w := range strings.Split(s, ",") {
		if !slices.Contains(endpointFlags, w) {
			return nil, usageErrorf("unknown endpoint flag %q (want %s, or none)", w, strings.Join(endpointFlags, ", "))
		}
		out = append(out, w)
	}
	return out, nil
}

// parseID parses an endpoint or address id, 1..255.
func parseID(s string) (uint8, error) {
	id, err := strconv.ParseUint(s, 10, 8)
	if err != nil || id == 0 {
		return 0, usageErrorf("%q is not an id (1..255)", s)
	}
	return uint8(id), nil
}

func cmdEndpoints(x *cmdCtx, args []string) error {
	c, err := x.noArgs("endpoints", args)
	if err != nil {
		return err
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, m.Endpoints)
	}
	tw := table(x.out)
	fmt.Fprintln(tw, "ID\tADDRESS\tPORT\tFLAGS\tINTERFACE\tORIGIN")
	for _, e := range m.Endpoints {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Address, portOrDash(e.Port), flagList(e.Flags),
			dash(e.Interface), e.Origin)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(x.out, "\n%s.\n", count(len(m.Endpoints), "endpoint"))
	return nil
}

func cmdEndpointAdd(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("endpoint add", flag.ContinueOnError)
	port := fs.Uint("port", 0, "")
	flags := fs.String("flags", "", "")
	iface := fs.String("interface", "", "")
	id := fs.Uint("id", 0, "")
	pos, err := x.parse("endpoint add", fs, args, 1)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(pos[0])
	if err != nil {
		return usageErrorf("%q is not an IP address", pos[0])
	}
	if *port > 65535 || *id > 255 {
		return usageErrorf("--port must be 0..65535 and --id 0..255")
	}
	words, err := parseFlagList(*flags)
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var got uint8
	if err := c.callManager("AddEndpoint", addr.String(), uint16(*port), words, *iface, uint8(*id)).Store(&got); err != nil {
		return callError(err)
	}
	if x.json {
		return printJSON(x.out, map[string]uint8{"id": got})
	}
	fmt.Fprintf(x.out, "added endpoint %d\n", got)
	return nil
}

func cmdEndpointDel(x *cmdCtx, args []string) error {
	pos, err := x.parse("endpoint del", nil, args, 1)
	if err != nil {
		return err
	}
	id, err := parseID(pos[0])
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	return callError(c.callManager("RemoveEndpoint", id).Err)
}

func cmdEndpointSet(x *cmdCtx, args []string) error {
	pos, err := x.parse("endpoint set", nil, args, 2)
	if err != nil {
		return err
	}
	id, err := parseID(pos[0])
	if err != nil {
		return err
	}
	words, err := parseFlagList(pos[1])
	if err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	return callError(c.callManager("SetEndpointFlags", id, words).Err)
}

func cmdEndpointFlush(x *cmdCtx, args []string) error {
	c, err := x.noArgs("endpoint flush", args)
	if err != nil {
		return err
	}
	return callError(c.callManager("FlushEndpoints").Err)
}

func cmdRevoke(x *cmdCtx, args []string) error {
	c, err := x.noArgs("revoke", args)
	if err != nil {
		return err
	}
	return callError(c.callManager("RevokeController").Err)
}

func cmdLimits(x *cmdCtx, args []string) error {
	c, err := x.noArgs("limits", args)
	if err != nil {
		return err
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, m.Limits)
	}
	tw := table(x.out)
	fmt.Fprintf(tw, "Subflows:\t%d\n", m.Limits.Subflows)
	fmt.Fprintf(tw, "ADD_ADDR accepted:\t%d\n", m.Limits.AddAddrAccepted)
	return tw.Flush()
}

func cmdLimitsSet(x *cmdCtx, args []string) error {
	pos, err := x.parse("limits set", nil, args, 2)
	if err != nil {
		return err
	}
	var l [2]uint32
	for i, s := range pos {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return usageErrorf("%q is not a limit (a number, 0 to 8)", s)
		}
		l[i] = uint32(n)
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	return callError(c.callManager("SetLimits", l[0], l[1]).Err)
}
