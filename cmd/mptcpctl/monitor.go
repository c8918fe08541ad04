package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"
)

// monitorEvent is one line of `mptcpctl monitor`; with --json it is printed
// as one JSON object.
type monitorEvent struct {
	Time       string   `json:"time"`
	Event      string   `json:"event"`
	Connection uint64   `json:"connection,omitempty"`
	Token      string   `json:"token,omitempty"`
	Subflow    *subflow `json:"subflow,omitempty"`
	Address    string   `json:"address,omitempty"`
	ID         *uint8   `json:"id,omitempty"`
	Error      uint32   `json:"error,omitempty"`
	Reset      uint32   `json:"reset_reason,omitempty"`
	Detail     string   `json:"detail,omitempty"`
}

func cmdMonitor(x *ctx, args []string) error {
	if err := wantArgs("monitor", args, 0, "no arguments"); err != nil {
		return err
	}
	c := x.c
	sigs := make(chan *dbus.Signal, 256)
	c.conn.Signal(sigs)
	if err := c.conn.AddMatchSignal(dbus.WithMatchSender(busName), dbus.WithMatchPathNamespace(managerPath)); err != nil {
		return callError(err)
	}
	if err := c.conn.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, busName)); err != nil {
		return callError(err)
	}
	// Tokens of the connections that exist now, so their closing can be named.
	conns, err := c.connections()
	if err != nil {
		return err
	}
	tokens := map[dbus.ObjectPath]uint32{}
	for _, cn := range conns {
		tokens[dbus.ObjectPath(cn.Path)] = cn.Token
	}
	if !x.json {
		fmt.Fprintf(x.out, "Monitoring mptcp-pmd (%d connection(s) open); Ctrl-C ends.\n", len(conns))
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(stop)
	for {
		select {
		case <-stop:
			return nil
		case s, ok := <-sigs:
			if !ok {
				return &exitError{code: exitUnavailable, err: fmt.Errorf("lost the connection to the bus")}
			}
			for _, ev := range describe(s, tokens) {
				printEvent(x, ev)
			}
		}
	}
}

func printEvent(x *ctx, ev monitorEvent) {
	ev.Time = time.Now().Format("15:04:05.000000")
	if x.json {
		b, _ := json.Marshal(ev)
		fmt.Fprintf(x.out, "%s\n", b)
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s [%14s]", ev.Time, strings.ToUpper(ev.Event))
	if ev.Connection != 0 {
		fmt.Fprintf(&b, " conn %d", ev.Connection)
	}
	if ev.Token != "" {
		fmt.Fprintf(&b, " token=%s", ev.Token)
	}
	if s := ev.Subflow; s != nil {
		fmt.Fprintf(&b, " %s %s -> %s", subflowIDs(*s), hostPort(s.LocalAddress, s.LocalPort), hostPort(s.RemoteAddress, s.RemotePort))
		if n := subflowNote(*s); n != "" {
			b.WriteString(" " + n)
		}
	}
	if ev.ID != nil {
		fmt.Fprintf(&b, " id %d", *ev.ID)
	}
	if ev.Address != "" {
		b.WriteString(" " + ev.Address)
	}
	if ev.Error != 0 || ev.Reset != 0 {
		fmt.Fprintf(&b, " error %d reset %d", ev.Error, ev.Reset)
	}
	if ev.Detail != "" {
		b.WriteString(" " + ev.Detail)
	}
	fmt.Fprintln(x.out, b.String())
}

func connNumber(p dbus.ObjectPath) uint64 {
	var n uint64
	fmt.Sscan(strings.TrimPrefix(string(p), connPathBase), &n)
	return n
}

// describe turns one D-Bus signal into the monitor's events (none for a
// signal it does not show).
func describe(s *dbus.Signal, tokens map[dbus.ObjectPath]uint32) []monitorEvent {
	tok := func(p dbus.ObjectPath) string {
		if t, ok := tokens[p]; ok {
			return fmt.Sprintf("%08x", t)
		}
		return ""
	}
	member := s.Name[strings.LastIndexByte(s.Name, '.')+1:]
	iface := strings.TrimSuffix(s.Name, "."+member)
	switch {
	case iface == "org.freedesktop.DBus" && member == "NameOwnerChanged" && len(s.Body) == 3:
		if s.Body[2] == "" {
			return []monitorEvent{{Event: "daemon", Detail: "mptcp-pmd left the bus"}}
		}
		return []monitorEvent{{Event: "daemon", Detail: "mptcp-pmd is on the bus"}}
	case iface == objMgrIface && member == "InterfacesAdded" && len(s.Body) == 2:
		p, _ := s.Body[0].(dbus.ObjectPath)
		ifaces, _ := s.Body[1].(map[string]map[string]dbus.Variant)
		props, ok := ifaces[connIface]
		if !ok {
			return nil
		}
		cn, err := decodeConnection(p, props)
		if err != nil {
			return nil
		}
		tokens[p] = cn.Token
		return []monitorEvent{{Event: "created", Connection: cn.Number, Token: tok(p),
			Detail: fmt.Sprintf("%s -> %s %s side", hostPort(cn.LocalAddress, cn.LocalPort), hostPort(cn.RemoteAddress, cn.RemotePort), side(cn.ServerSide))}}
	case iface == objMgrIface && member == "InterfacesRemoved" && len(s.Body) >= 1:
		p, _ := s.Body[0].(dbus.ObjectPath)
		ev := monitorEvent{Event: "closed", Connection: connNumber(p), Token: tok(p)}
		delete(tokens, p)
		return []monitorEvent{ev}
	case iface == propsIface && member == "PropertiesChanged" && len(s.Body) >= 2:
		name, _ := s.Body[0].(string)
		changed, _ := s.Body[1].(map[string]dbus.Variant)
		var evs []monitorEvent
		if name == connIface {
			if v, ok := changed["State"]; ok && v.Value() == "established" {
				evs = append(evs, monitorEvent{Event: "established", Connection: connNumber(s.Path), Token: tok(s.Path)})
			}
		}
		if name == managerIface {
			for _, k := range []string{"ControlMode", "Controller", "Policy", "KernelPathManager"} {
				if v, ok := changed[k]; ok {
					evs = append(evs, monitorEvent{Event: "manager", Detail: fmt.Sprintf("%s=%v", k, v.Value())})
				}
			}
			for _, k := range []string{"Endpoints", "Limits", "LocalAddresses"} {
				if _, ok := changed[k]; ok {
					evs = append(evs, monitorEvent{Event: "manager", Detail: k + " changed"})
				}
			}
		}
		return evs
	case iface == connIface:
		ev := monitorEvent{Connection: connNumber(s.Path), Token: tok(s.Path)}
		switch member {
		case "SubflowEstablished", "SubflowClosed", "SubflowPriorityChanged":
			var sf subflow
			if len(s.Body) < 8 || dbus.Store(s.Body[:8], &sf.LocalID, &sf.RemoteID, &sf.LocalAddress, &sf.LocalPort,
				&sf.RemoteAddress, &sf.RemotePort, &sf.Backup, &sf.Interface) != nil {
				return nil
			}
			ev.Subflow = &sf
			ev.Event = map[string]string{"SubflowEstablished": "sf_established", "SubflowClosed": "sf_closed",
				"SubflowPriorityChanged": "sf_priority"}[member]
			if member == "SubflowClosed" && len(s.Body) == 10 {
				ev.Error, _ = s.Body[8].(uint32)
				ev.Reset, _ = s.Body[9].(uint32)
			}
		case "AddressAnnounced":
			var id uint8
			var addr string
			var port uint16
			if dbus.Store(s.Body, &id, &addr, &port) != nil {
				return nil
			}
			ev.Event, ev.ID, ev.Address = "announced", &id, hostPort(addr, port)
		case "AddressRemoved":
			var id uint8
			if dbus.Store(s.Body, &id) != nil {
				return nil
			}
			ev.Event, ev.ID = "removed", &id
		default:
			return nil
		}
		return []monitorEvent{ev}
	}
	return nil
}
