package main

import (
	"flag"
	"fmt"
	"net/netip"

	"github.com/godbus/dbus/v5"
)

// The userspace path manager's actions on one connection.

func cmdSubflowAdd(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("subflow add", flag.ContinueOnError)
	backup := fs.Bool("backup", false, "")
	localID := fs.Uint("local-id", 0, "")
	iface := fs.String("interface", "", "")
	pos, err := x.parse("subflow add", fs, args, 3)
	if err != nil {
		return err
	}
	if *localID > 255 {
		return usageErrorf("--local-id must be 0..255")
	}
	local, lport, err := parseAddrPort(pos[1], true)
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
	if lport != 0 {
		opts["local_port"] = dbus.MakeVariant(lport)
	}
	if *iface != "" {
		opts["interface"] = dbus.MakeVariant(*iface)
	}
	c, path, err := x.connArg(pos[0])
	if err != nil {
		return err
	}
	return callError(c.callConn(path, "CreateSubflow", local.String(), remote.String(), rport, opts).Err)
}

// subflowArgs are the arguments that name one subflow: CONN LOCAL[:PORT]
// REMOTE:PORT.
type subflowArgs struct {
	c      *client
	path   dbus.ObjectPath
	local  netip.Addr
	lport  uint16
	remote netip.Addr
	rport  uint16
}

// parseSubflow parses pos[0:3] as a subflow's connection and ends; with
// bareLocal the local port may be left out.
func (x *cmdCtx) parseSubflow(pos []string, bareLocal bool) (subflowArgs, error) {
	var a subflowArgs
	var err error
	if a.local, a.lport, err = parseAddrPort(pos[1], bareLocal); err != nil {
		return a, err
	}
	if a.remote, a.rport, err = parseAddrPort(pos[2], false); err != nil {
		return a, err
	}
	a.c, a.path, err = x.connArg(pos[0])
	return a, err
}

func cmdSubflowDel(x *cmdCtx, args []string) error {
	pos, err := x.parse("subflow del", nil, args, 3)
	if err != nil {
		return err
	}
	a, err := x.parseSubflow(pos, false)
	if err != nil {
		return err
	}
	return callError(a.c.callConn(a.path, "RemoveSubflow", a.local.String(), a.lport, a.remote.String(), a.rport).Err)
}

func cmdSubflowBackup(x *cmdCtx, args []string) error {
	pos, err := x.parse("subflow backup", nil, args, 4)
	if err != nil {
		return err
	}
	var on bool
	switch pos[3] {
	case "on":
		on = true
	case "off":
	default:
		return usageErrorf("subflow backup takes on or off, not %q", pos[3])
	}
	a, err := x.parseSubflow(pos, true)
	if err != nil {
		return err
	}
	return callError(a.c.callConn(a.path, "SetSubflowBackup", a.local.String(), a.lport, a.remote.String(), a.rport, on).Err)
}

func cmdAnnounce(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("announce", flag.ContinueOnError)
	id := fs.Uint("id", 0, "")
	pos, err := x.parse("announce", fs, args, 2)
	if err != nil {
		return err
	}
	if *id > 255 {
		return usageErrorf("--id must be 0..255")
	}
	addr, port, err := parseAddrPort(pos[1], true)
	if err != nil {
		return err
	}
	c, path, err := x.connArg(pos[0])
	if err != nil {
		return err
	}
	var got uint8
	if err := c.callConn(path, "AnnounceAddress", addr.String(), port, uint8(*id)).Store(&got); err != nil {
		return callError(err)
	}
	// Port 0 announced the port of a listener the daemon chose: read it back.
	if cn, err := c.connection(path); err == nil && port == 0 {
		for _, a := range cn.AnnouncedAddresses {
			if a.ID == got {
				port = a.Port
			}
		}
	}
	if x.json {
		return printJSON(x.out, announced{ID: got, Address: addr.String(), Port: port})
	}
	fmt.Fprintf(x.out, "announced %s with id %d\n", hostPort(addr.String(), port), got)
	return nil
}

func cmdRemove(x *cmdCtx, args []string) error {
	pos, err := x.parse("remove", nil, args, 2)
	if err != nil {
		return err
	}
	id, err := parseID(pos[1])
	if err != nil {
		return err
	}
	c, path, err := x.connArg(pos[0])
	if err != nil {
		return err
	}
	return callError(c.callConn(path, "RemoveAddress", id).Err)
}

// connArg parses a CONN argument, connects to the daemon and finds the
// connection's object.
func (x *cmdCtx) connArg(arg string) (*client, dbus.ObjectPath, error) {
	ref, err := parseConn(arg)
	if err != nil {
		return nil, "", err
	}
	c, err := x.client()
	if err != nil {
		return nil, "", err
	}
	path, err := c.resolve(ref)
	return c, path, err
}
