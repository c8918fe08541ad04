package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// monitorEvent is one line of `mptcpctl monitor`; with --json it is printed
// as one JSON object. Event is one of: monitoring (the first line with
// --json: the monitor is ready); daemon; created, established,
// closed; sf_established, sf_closed, sf_priority; announced, removed (by
// the peer); local_announced, local_removed (by us); endpoint_added,
// endpoint_removed, endpoint_changed; limits; address_usable,
// address_unusable; control; kernel_pm; policy.
type monitorEvent struct {
	Time       string    `json:"time"`
	Event      string    `json:"event"`
	Connection uint64    `json:"connection,omitempty"`
	Token      string    `json:"token,omitempty"`
	Subflow    *subflow  `json:"subflow,omitempty"`
	ID         *uint8    `json:"id,omitempty"`
	Address    string    `json:"address,omitempty"` // ADDRESS:PORT of an announcement; ADDRESS of a local address
	Interface  string    `json:"interface,omitempty"`
	Endpoint   *endpoint `json:"endpoint,omitempty"`
	Limits     *limits   `json:"limits,omitempty"`
	Mode       string    `json:"control_mode,omitempty"`
	Controller string    `json:"controller,omitempty"`
	Error      uint32    `json:"error,omitempty"`
	ErrorName  string    `json:"error_name,omitempty"` // "ETIMEDOUT"
	Reset      uint32    `json:"reset_reason,omitempty"`
	ResetName  string    `json:"reset_reason_name,omitempty"` // "administratively-prohibited"
	Detail     string    `json:"detail,omitempty"`
}

func cmdMonitor(x *cmdCtx, args []string) error {
	c, err := x.noArgs("monitor", args)
	if err != nil {
		return err
	}
	// Subscribe first, then read the state, so that nothing falls between.
	sigs := make(chan *dbus.Signal, 256)
	c.conn.Signal(sigs)
	// The setup's requests wait at most the timeout (and end with a
	// signal); then the monitor runs until interrupted.
	if err := c.addMatch(dbus.WithMatchSender(busName), dbus.WithMatchPathNamespace(managerPath)); err != nil {
		return err
	}
	if err := c.addMatch(dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, busName)); err != nil {
		return err
	}
	st := newMonitorState()
	if err := st.load(c); err != nil {
		return err
	}
	// The first line says that the subscription stands: what happens from
	// now on is shown.
	if x.json {
		x.printEvent(monitorEvent{Time: now(), Event: "monitoring", Detail: count(len(st.tokens), "connection") + " open"})
	} else {
		fmt.Fprintf(x.out, "Monitoring mptcp-pmd (%s open); Ctrl-C ends.\n", count(len(st.tokens), "connection"))
	}
	for {
		select {
		case <-x.ctx.Done():
			return nil // SIGINT or SIGTERM: the monitor's normal end
		case s, ok := <-sigs:
			if !ok {
				return &exitError{code: exitUnavailable, err: fmt.Errorf("lost the connection to the bus")}
			}
			evs := st.describe(s)
			for _, ev := range evs {
				ev.Time = now()
				x.printEvent(ev)
				if ev.Event == "daemon" && st.up {
					st.load(c) // a new daemon: its state, not the last one's
				}
			}
		}
	}
}

func now() string { return time.Now().Format("15:04:05.000000") }

func (x *cmdCtx) printEvent(ev monitorEvent) {
	if x.json {
		b, _ := json.Marshal(ev)
		fmt.Fprintf(x.out, "%s\n", b)
		return
	}
	fmt.Fprintln(x.out, ev.text())
}

// text is the event's line for a terminal.
func (ev monitorEvent) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s [%16s]", ev.Time, strings.ToUpper(ev.Event))
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
	if ev.Interface != "" {
		b.WriteString(" dev " + ev.Interface)
	}
	if e := ev.Endpoint; e != nil {
		fmt.Fprintf(&b, " id %d %s", e.ID, e.Address)
		if e.Port != 0 {
			fmt.Fprintf(&b, " port %d", e.Port)
		}
		fmt.Fprintf(&b, " flags %s", flagList(e.Flags))
		if e.Interface != "" {
			b.WriteString(" dev " + e.Interface)
		}
		b.WriteString(" origin " + e.Origin)
	}
	if l := ev.Limits; l != nil {
		fmt.Fprintf(&b, " subflows %d, add_addr_accepted %d", l.Subflows, l.AddAddrAccepted)
	}
	if ev.Mode != "" {
		b.WriteString(" " + ev.Mode)
		if ev.Controller != "" {
			b.WriteString(" " + ev.Controller)
		}
	}
	if ev.Error != 0 {
		fmt.Fprintf(&b, " error %s", ev.ErrorName)
	}
	if ev.Reset != 0 {
		fmt.Fprintf(&b, " reset %s", ev.ResetName)
	}
	if ev.Detail != "" {
		b.WriteString(" " + ev.Detail)
	}
	return b.String()
}

// monitorState is what the monitor knows of the daemon's state, to name
// the connection a signal is about and to tell what a property change
// changed.
type monitorState struct {
	up        bool // the daemon is on the bus
	m         manager
	tokens    map[dbus.ObjectPath]uint32
	announced map[dbus.ObjectPath][]announced
}

func newMonitorState() *monitorState {
	return &monitorState{tokens: map[dbus.ObjectPath]uint32{}, announced: map[dbus.ObjectPath][]announced{}}
}

// load reads the daemon's current state.
func (st *monitorState) load(c *client) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	conns, err := c.connections()
	if err != nil {
		return err
	}
	st.up, st.m = true, m
	clear(st.tokens)
	clear(st.announced)
	for _, cn := range conns {
		st.addConn(cn)
	}
	return nil
}

func (st *monitorState) addConn(cn connection) {
	p := dbus.ObjectPath(cn.Path)
	st.tokens[p] = uint32(cn.Token)
	st.announced[p] = cn.AnnouncedAddresses
}

func (st *monitorState) token(p dbus.ObjectPath) string {
	if t, ok := st.tokens[p]; ok {
		return fmt.Sprintf("%08x", t)
	}
	return ""
}

// describe turns one D-Bus signal into the monitor's events (none for a
// signal it does not show) and updates the state.
func (st *monitorState) describe(s *dbus.Signal) []monitorEvent {
	member := s.Name[strings.LastIndexByte(s.Name, '.')+1:]
	iface := strings.TrimSuffix(s.Name, "."+member)
	switch {
	case iface == "org.freedesktop.DBus" && member == "NameOwnerChanged" && len(s.Body) == 3:
		if s.Body[2] == "" {
			st.up = false
			clear(st.tokens)
			clear(st.announced)
			return []monitorEvent{{Event: "daemon", Detail: "mptcp-pmd left the bus"}}
		}
		st.up = true
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
		st.addConn(cn)
		evs := []monitorEvent{{Event: "created", Connection: cn.Number, Token: st.token(p),
			Detail: fmt.Sprintf("%s -> %s %s side", hostPort(cn.LocalAddress, cn.LocalPort), hostPort(cn.RemoteAddress, cn.RemotePort), side(cn.ServerSide))}}
		if cn.State == "established" {
			evs = append(evs, monitorEvent{Event: "established", Connection: cn.Number, Token: st.token(p)})
		}
		return evs
	case iface == objMgrIface && member == "InterfacesRemoved" && len(s.Body) >= 1:
		p, _ := s.Body[0].(dbus.ObjectPath)
		ev := monitorEvent{Event: "closed", Connection: connNumber(p), Token: st.token(p)}
		delete(st.tokens, p)
		delete(st.announced, p)
		return []monitorEvent{ev}
	case iface == propsIface && member == "PropertiesChanged" && len(s.Body) >= 2:
		name, _ := s.Body[0].(string)
		changed, _ := s.Body[1].(map[string]dbus.Variant)
		switch name {
		case connIface:
			return st.connectionChanged(s.Path, changed)
		case managerIface:
			return st.managerChanged(changed)
		}
	case iface == connIface:
		return st.connectionSignal(s, member)
	}
	return nil
}

func (st *monitorState) connectionChanged(p dbus.ObjectPath, changed map[string]dbus.Variant) []monitorEvent {
	var evs []monitorEvent
	base := monitorEvent{Connection: connNumber(p), Token: st.token(p)}
	if v, ok := changed["State"]; ok && v.Value() == "established" {
		ev := base
		ev.Event = "established"
		evs = append(evs, ev)
	}
	if v, ok := changed["AnnouncedAddresses"]; ok {
		var now []announced
		if dbus.Store([]any{v.Value()}, &now) != nil {
			return evs
		}
		was := st.announced[p]
		for _, a := range now {
			if !slices.Contains(was, a) {
				ev := base
				ev.Event, ev.ID, ev.Address = "local_announced", &a.ID, hostPort(a.Address, a.Port)
				evs = append(evs, ev)
			}
		}
		for _, a := range was {
			if !slices.ContainsFunc(now, func(b announced) bool { return b.ID == a.ID }) {
				ev := base
				ev.Event, ev.ID, ev.Address = "local_removed", &a.ID, hostPort(a.Address, a.Port)
				evs = append(evs, ev)
			}
		}
		st.announced[p] = now
	}
	return evs
}

func (st *monitorState) managerChanged(changed map[string]dbus.Variant) []monitorEvent {
	was := st.m
	now := was
	// Decode into new slices: dbus.Store would reuse was's.
	now.Endpoints, now.LocalAddresses = nil, nil
	if storeProps(changed, managerFields(&now)) != nil {
		return nil
	}
	if _, ok := changed["Endpoints"]; !ok {
		now.Endpoints = was.Endpoints
	}
	if _, ok := changed["LocalAddresses"]; !ok {
		now.LocalAddresses = was.LocalAddresses
	}
	st.m = now
	var evs []monitorEvent
	if now.ControlMode != was.ControlMode || now.Controller != was.Controller {
		evs = append(evs, monitorEvent{Event: "control", Mode: now.ControlMode, Controller: now.Controller})
	}
	if now.Policy != was.Policy {
		evs = append(evs, monitorEvent{Event: "policy", Detail: now.Policy})
	}
	if now.KernelPathManager != was.KernelPathManager {
		evs = append(evs, monitorEvent{Event: "kernel_pm", Detail: now.KernelPathManager})
	}
	if now.Limits != was.Limits {
		evs = append(evs, monitorEvent{Event: "limits", Limits: &now.Limits})
	}
	if _, ok := changed["Endpoints"]; ok {
		evs = append(evs, endpointEvents(was.Endpoints, now.Endpoints)...)
	}
	if _, ok := changed["LocalAddresses"]; ok {
		for _, a := range now.LocalAddresses {
			if !slices.Contains(was.LocalAddresses, a) {
				evs = append(evs, monitorEvent{Event: "address_usable", Address: a.Address, Interface: a.Interface})
			}
		}
		for _, a := range was.LocalAddresses {
			if !slices.Contains(now.LocalAddresses, a) {
				evs = append(evs, monitorEvent{Event: "address_unusable", Address: a.Address, Interface: a.Interface})
			}
		}
	}
	return evs
}

// endpointEvents tells apart the endpoints added, removed and changed
// (same id, something else differs).
func endpointEvents(was, now []endpoint) []monitorEvent {
	byID := func(list []endpoint, id uint8) (endpoint, bool) {
		i := slices.IndexFunc(list, func(e endpoint) bool { return e.ID == id })
		if i < 0 {
			return endpoint{}, false
		}
		return list[i], true
	}
	var evs []monitorEvent
	for _, e := range now {
		old, ok := byID(was, e.ID)
		switch {
		case !ok:
			evs = append(evs, monitorEvent{Event: "endpoint_added", Endpoint: &e})
		case !sameEndpoint(old, e):
			evs = append(evs, monitorEvent{Event: "endpoint_changed", Endpoint: &e})
		}
	}
	for _, e := range was {
		if _, ok := byID(now, e.ID); !ok {
			evs = append(evs, monitorEvent{Event: "endpoint_removed", Endpoint: &e})
		}
	}
	return evs
}

func sameEndpoint(a, b endpoint) bool {
	return a.Address == b.Address && a.Port == b.Port && slices.Equal(a.Flags, b.Flags) &&
		a.Interface == b.Interface && a.Origin == b.Origin
}

func (st *monitorState) connectionSignal(s *dbus.Signal, member string) []monitorEvent {
	ev := monitorEvent{Connection: connNumber(s.Path), Token: st.token(s.Path)}
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
			if ev.Error != 0 {
				ev.ErrorName = pm.ErrnoName(ev.Error)
			}
			if ev.Reset != 0 {
				ev.ResetName = pm.ResetReason(ev.Reset).String()
			}
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
