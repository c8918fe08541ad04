package main

// End-to-end tests of the daemon: the built binaries, a namespace lab with
// real MPTCP connections, a private bus with the project's policy. They
// prove the "Must show" of the D-Bus API against the kernel's own view
// (an independent event listener, ss).

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// TestConnectionObjects: a connection made in the daemon's namespace
// becomes an object with the kernel's token and the socket's addresses,
// becomes established, and vanishes when it closes; a daemon at the server
// end sees ServerSide.
func TestConnectionObjects(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"})
	kev := listenKernel(t, s.lab.Client)
	d := startDaemon(t, s.lab.Client, s.bus)
	if objs := d.managedObjects(t); len(objs) != 0 {
		t.Fatalf("GetManagedObjects before any connection: %v", objs)
	}
	// A daemon in the server namespace, on a bus of its own.
	srvBus := dbustest.StartBus(t, dbustest.SystemDefaults())
	srvRec := recordSignals(t, srvBus)
	srvKev := listenKernel(t, s.lab.Server)
	sd := startDaemon(t, s.lab.Server, srvBus)

	server := s.lab.Server.Serve(t, netip.AddrPortFrom(s.lab.Server.Addrs4[0], 0))
	c := dial(t, s.lab.Client, netip.Addr{}, server)
	local, remote := addrPort(t, c.LocalAddr()), addrPort(t, c.RemoteAddr())

	created := kev.wait(t, "CREATED of the client connection", func(ev pm.Event) bool {
		return ev.Type == pm.EventCreated && ev.LocalPort == local.Port()
	})
	obj := addedConn(t, s.rec, 0, "the client connection", func(c connObject) bool { return c.LocalPort == local.Port() })
	want := connObject{
		Path: dbusapi.ConnectionPath(1), Token: created.Token, ServerSide: false, State: "created",
		LocalAddress: local.Addr().String(), LocalPort: local.Port(),
		RemoteAddress: remote.Addr().String(), RemotePort: remote.Port(),
	}
	checkConn(t, "InterfacesAdded", obj, want)
	s.rec.wait(t, "State established", stateEstablished(obj.Path))
	want.State = "established"
	checkConn(t, "GetAll", d.connection(t, obj.Path), want)
	objs := d.managedObjects(t)
	if len(objs) != 1 {
		t.Fatalf("GetManagedObjects: %d objects, want 1: %v", len(objs), objs)
	}
	checkConn(t, "GetManagedObjects", objs[obj.Path], want)
	var byToken dbus.ObjectPath
	if err := d.obj(dbusapi.ManagerPath).Call(mgrMethod+"GetConnectionByToken", 0, created.Token).Store(&byToken); err != nil || byToken != obj.Path {
		t.Errorf("GetConnectionByToken(%08x) = %q, %v; want %s", created.Token, byToken, err, obj.Path)
	}

	// The server end: its own token, ServerSide, the addresses reversed.
	srvCreated := srvKev.wait(t, "CREATED at the server", func(ev pm.Event) bool {
		return ev.Type == pm.EventCreated && ev.RemotePort == local.Port()
	})
	srvObj := addedConn(t, srvRec, 0, "the server connection", func(c connObject) bool { return c.RemotePort == local.Port() })
	checkConn(t, "server InterfacesAdded", srvObj, connObject{
		Path: dbusapi.ConnectionPath(1), Token: srvCreated.Token, ServerSide: true, State: srvObj.State,
		LocalAddress: remote.Addr().String(), LocalPort: remote.Port(),
		RemoteAddress: local.Addr().String(), RemotePort: local.Port(),
	})
	eventually(t, 5*time.Second, "server connection established", func() bool {
		return sd.connection(t, srvObj.Path).State == "established"
	})

	c.Close()
	s.rec.wait(t, "InterfacesRemoved", removed(obj.Path))
	if objs := d.managedObjects(t); len(objs) != 0 {
		t.Errorf("GetManagedObjects after close: %v", objs)
	}
	var props map[string]dbus.Variant
	err := d.obj(obj.Path).Call(propertiesGetAllMethod, 0, dbusapi.ConnectionInterface).Store(&props)
	if !isDBusError(err, dbusapi.ErrorNotFound) {
		t.Errorf("GetAll on a closed connection: %v, want %s", err, dbusapi.ErrorNotFound)
	}
	srvRec.wait(t, "server InterfacesRemoved", removed(srvObj.Path))
	if objs := sd.managedObjects(t); len(objs) != 0 {
		t.Errorf("server GetManagedObjects after close: %v", objs)
	}
}

// checkConn compares the scalar properties of a connection object.
func checkConn(t *testing.T, where string, got, want connObject) {
	t.Helper()
	g, w := got, want
	g.Subflows, g.RemoteAddresses, g.AnnouncedAddresses = nil, nil, nil
	w.Subflows, w.RemoteAddresses, w.AnnouncedAddresses = nil, nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s:\n got %+v\nwant %+v", where, g, w)
	}
}

// isDBusError reports whether err is the D-Bus error with the name.
// TestSubflows: CreateSubflow through mptcpctl and through the Python
// example makes subflows the kernel shows and the daemon signals and lists;
// SetSubflowBackup changes the backup flag for the daemon and for the peer;
// RemoveSubflow closes the subflow.
func TestSubflows(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace", Paths: 3})
	srvKev := listenKernel(t, s.lab.Server)
	d := startDaemon(t, s.lab.Client, s.bus)
	c, obj := s.established(t, d)
	remote := addrPort(t, c.RemoteAddr())
	if len(obj.Subflows) != 0 {
		t.Logf("initial Subflows: %+v", obj.Subflows)
	}

	// mptcpctl subflow add, bound to the interface of path 1.
	local1 := s.lab.Client.Addrs4[1]
	from := s.rec.mark()
	if out, errOut, code := ctl(t, s.bus, "subflow", "add", "1", local1.String(), remote.String(), "--interface", s.lab.Client.Ifaces[1]); code != 0 {
		t.Fatalf("mptcpctl subflow add: status %d: %s%s", code, out, errOut)
	}
	sig := s.rec.waitAfter(t, from, "SubflowEstablished from "+local1.String(), subflowSignal(t, obj.Path, sigSubflowEstablished, local1, remote))
	sf1 := subflowOf(t, sig)
	if sf1.Interface != s.lab.Client.Ifaces[1] || sf1.LocalPort == 0 || sf1.LocalID == 0 || sf1.Backup {
		t.Errorf("SubflowEstablished = %+v, want interface %s, a local port and id, no backup", sf1, s.lab.Client.Ifaces[1])
	}
	sub1 := netip.AddrPortFrom(local1, sf1.LocalPort)
	if socks := tcpSockets(t, s.lab.Client); !socks[sockKey(sub1, remote)] {
		t.Errorf("ss does not show the subflow %s -> %s: %v", sub1, remote, socks)
	}
	eventually(t, 5*time.Second, "Subflows lists the subflow", func() bool {
		return slices.Contains(d.connection(t, obj.Path).Subflows, sf1)
	})

	// The Python example, from the address of path 2.
	local2 := s.lab.Client.Addrs4[2]
	from = s.rec.mark()
	out, errOut, code := python(t, s.bus, "dist/examples/subflows.py", string(obj.Path), local2.String(), remote.Addr().String(), fmt.Sprint(remote.Port()))
	if code != 0 || !strings.HasPrefix(out, "SubflowEstablished ") || !strings.Contains(out, local2.String()+":") {
		t.Fatalf("subflows.py: status %d: %s%s", code, out, errOut)
	}
	sf2 := subflowOf(t, s.rec.waitAfter(t, from, "SubflowEstablished from "+local2.String(), subflowSignal(t, obj.Path, sigSubflowEstablished, local2, remote)))
	if want := fmt.Sprintf("id %d/%d %s:%d -> %s", sf2.LocalID, sf2.RemoteID, local2, sf2.LocalPort, remote); !strings.Contains(out, want) {
		t.Errorf("subflows.py printed %q, want it to name %s", out, want)
	}
	sub2 := netip.AddrPortFrom(local2, sf2.LocalPort)
	if socks := tcpSockets(t, s.lab.Client); !socks[sockKey(sub2, remote)] {
		t.Errorf("ss does not show the subflow %s -> %s: %v", sub2, remote, socks)
	}
	eventually(t, 5*time.Second, "Subflows lists both subflows", func() bool {
		sfs := d.connection(t, obj.Path).Subflows
		return slices.Contains(sfs, sf1) && slices.Contains(sfs, sf2)
	})

	// Backup on, then off: the property follows and the peer is told.
	for _, on := range []bool{true, false} {
		word := map[bool]string{true: "on", false: "off"}[on]
		if out, errOut, code := ctl(t, s.bus, "subflow", "backup", "1", sub1.String(), remote.String(), word); code != 0 {
			t.Fatalf("mptcpctl subflow backup %s: status %d: %s%s", word, code, out, errOut)
		}
		eventually(t, 5*time.Second, "Subflows shows backup "+word, func() bool {
			for _, sf := range d.connection(t, obj.Path).Subflows {
				if sf.LocalAddress == local1.String() && sf.LocalPort == sub1.Port() {
					return sf.Backup == on
				}
			}
			return false
		})
		srvKev.wait(t, "SUB_PRIORITY backup "+word+" at the peer", func(ev pm.Event) bool {
			return ev.Type == pm.EventSubPriority && ev.RemoteAddr == local1 && ev.RemotePort == sub1.Port() && ev.Backup == on
		})
	}

	// RemoveSubflow: closed, signalled, gone from ss and from Subflows.
	from = s.rec.mark()
	if out, errOut, code := ctl(t, s.bus, "subflow", "del", "1", sub1.String(), remote.String()); code != 0 {
		t.Fatalf("mptcpctl subflow del: status %d: %s%s", code, out, errOut)
	}
	s.rec.waitAfter(t, from, "SubflowClosed", subflowSignal(t, obj.Path, sigSubflowClosed, local1, remote))
	eventually(t, 5*time.Second, "ss no longer shows the removed subflow", func() bool {
		return !tcpSockets(t, s.lab.Client)[sockKey(sub1, remote)]
	})
	got := d.connection(t, obj.Path).Subflows
	if slices.ContainsFunc(got, func(sf subflowInfo) bool { return sf.LocalAddress == local1.String() }) || !slices.Contains(got, sf2) {
		t.Errorf("Subflows after RemoveSubflow = %+v, want %+v without %s", got, sf2, sub1)
	}
}

// TestAnnounceAddress: a daemon at the server end (userspace path manager)
// announces a second address with port 0; the client (in-kernel path
// manager, accepting ADD_ADDR) joins through the daemon's listener; removing
// the address makes the kernel withdraw it and the join go.
func TestAnnounceAddress(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ServerPM: "userspace"})
	cliKev := listenKernel(t, s.lab.Client)
	d := startDaemon(t, s.lab.Server, s.bus)
	server := s.lab.Server.Serve(t, netip.AddrPortFrom(s.lab.Server.Addrs4[0], 0))
	c := dial(t, s.lab.Client, s.lab.Client.Addrs4[0], server)
	local := addrPort(t, c.LocalAddr())
	obj := addedConn(t, s.rec, 0, "the server connection", func(o connObject) bool { return o.RemotePort == local.Port() })
	if !obj.ServerSide {
		t.Fatalf("server connection %+v is not ServerSide", obj)
	}
	eventually(t, 5*time.Second, "server connection established", func() bool {
		return d.connection(t, obj.Path).State == "established"
	})

	ann := s.lab.Server.Addrs4[1]
	from := s.rec.mark()
	var id uint8
	if err := d.obj(obj.Path).Call(connMethod+"AnnounceAddress", 0, ann.String(), uint16(0), uint8(0)).Store(&id); err != nil {
		t.Fatalf("AnnounceAddress(%s, 0, 0): %v", ann, err)
	}
	if id == 0 {
		t.Fatalf("AnnounceAddress returned id 0")
	}
	got := d.connection(t, obj.Path).AnnouncedAddresses
	if len(got) != 1 || got[0].ID != id || got[0].Address != ann.String() || got[0].Port == 0 {
		t.Fatalf("AnnouncedAddresses = %+v, want id %d %s with the listener's port", got, id, ann)
	}
	annPort := got[0].Port
	// The peer heard the announcement with that port ...
	cliKev.wait(t, "ANNOUNCED at the client", func(ev pm.Event) bool {
		return ev.Type == pm.EventAnnounced && ev.RemoteAddr == ann && ev.RemotePort == annPort && ev.RemoteID == id
	})
	// ... and joined through the listener behind it.
	sig := s.rec.waitAfter(t, from, "SubflowEstablished to the announced address", func(sg *dbus.Signal) bool {
		if sg.Path != obj.Path || sg.Name != sigSubflowEstablished {
			return false
		}
		sf := subflowOf(t, sg)
		return sf.LocalAddress == ann.String() && sf.LocalPort == annPort
	})
	join := subflowOf(t, sig)
	if !strings.HasPrefix(join.RemoteAddress, "10.55.") || !strings.HasSuffix(join.RemoteAddress, ".1") || join.LocalID != id {
		t.Errorf("join %+v: want it from a client address 10.55.x.1 to local id %d", join, id)
	}
	if socks := tcpSockets(t, s.lab.Server); !socks[fmt.Sprintf("%s:%d %s:%d", ann, annPort, join.RemoteAddress, join.RemotePort)] {
		t.Errorf("ss at the server does not show the join: %v", socks)
	}

	from = s.rec.mark()
	if err := d.obj(obj.Path).Call(connMethod+"RemoveAddress", 0, id).Err; err != nil {
		t.Fatalf("RemoveAddress(%d): %v", id, err)
	}
	if got := d.connection(t, obj.Path).AnnouncedAddresses; len(got) != 0 {
		t.Errorf("AnnouncedAddresses after RemoveAddress = %+v, want none", got)
	}
	cliKev.wait(t, "REMOVED at the client", func(ev pm.Event) bool {
		return ev.Type == pm.EventRemoved && ev.RemoteID == id
	})
	s.rec.waitAfter(t, from, "SubflowClosed of the join", func(sg *dbus.Signal) bool {
		return sg.Path == obj.Path && sg.Name == sigSubflowClosed && subflowOf(t, sg).LocalPort == annPort
	})
	eventually(t, 5*time.Second, "the join is gone from ss", func() bool {
		for k := range tcpSockets(t, s.lab.Server) {
			if strings.HasPrefix(k, fmt.Sprintf("%s:%d ", ann, annPort)) {
				return false
			}
		}
		return true
	})
	// The listener went with the announcement.
	if out := s.lab.Server.Run(t, "ss", "-ltnH", "src", fmt.Sprintf("%s:%d", ann, annPort)); strings.TrimSpace(out) != "" {
		t.Errorf("a listener is still open on %s:%d: %s", ann, annPort, out)
	}
}

// kernelState is what the kernel shows of the client namespace: its TCP
// sockets (the subflows), its endpoints and its limits.
func kernelState(t *testing.T, h *pmtest.Host) string {
	t.Helper()
	socks := slices.Sorted(maps.Keys(tcpSockets(t, h)))
	return strings.Join(socks, "\n") + "\nendpoints:\n" + h.Run(t, "ip", "mptcp", "endpoint", "show") +
		"limits:\n" + h.Run(t, "ip", "mptcp", "limits", "show")
}

// TestBadInput: each call the contract refuses returns the named error and
// changes nothing, neither the daemon's objects nor the kernel's state.
func TestBadInput(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"})
	kev := listenKernel(t, s.lab.Client)
	d := startDaemon(t, s.lab.Client, s.bus)
	c, obj := s.established(t, d)
	remote := addrPort(t, c.RemoteAddr())
	local1 := s.lab.Client.Addrs4[1].String()

	// A connection made under the in-kernel path manager. The daemon
	// reads the path manager for a new connection when its last read is
	// 100 ms old (one made sooner is corrected a second later).
	s.lab.Client.SetPathManager(t, "kernel")
	time.Sleep(150 * time.Millisecond)
	from := s.rec.mark()
	kc := dial(t, s.lab.Client, s.lab.Client.Addrs4[0], remote)
	kLocal := addrPort(t, kc.LocalAddr())
	kObj := addedConn(t, s.rec, from, "the in-kernel PM connection", func(o connObject) bool { return o.LocalPort == kLocal.Port() })
	s.rec.waitAfter(t, from, "in-kernel PM connection established", stateEstablished(kObj.Path))
	s.lab.Client.SetPathManager(t, "userspace")

	var token uint32
	d.obj(obj.Path).Call(propertiesGetMethod, 0, dbusapi.ConnectionInterface, "Token").Store(&token)
	unknownToken := ^token
	if unknownToken == kObj.Token {
		unknownToken++
	}
	noConn := dbusapi.ConnectionPath(999)
	none := map[string]dbus.Variant{}
	port := remote.Port()
	ra := remote.Addr().String()

	beforeObjs := d.managedObjects(t)
	beforeKernel := kernelState(t, s.lab.Client)
	beforeEvents := len(kev.events())

	mgr, conn, kconn := d.obj(dbusapi.ManagerPath), d.obj(obj.Path), d.obj(kObj.Path)
	for _, tc := range []struct {
		name string
		call *dbus.Call
		want string
	}{
		{"CreateSubflow local 10.0.0.300", conn.Call(connMethod+"CreateSubflow", 0, "10.0.0.300", ra, port, none), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow local empty", conn.Call(connMethod+"CreateSubflow", 0, "", ra, port, none), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow remote with a zone", conn.Call(connMethod+"CreateSubflow", 0, "fd00:55:1::1", "fe80::1%c0", port, none), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow local with a zone", conn.Call(connMethod+"CreateSubflow", 0, "fe80::1%c0", "fd00:55::2", port, none), dbusapi.ErrorInvalidArguments},
		{"AnnounceAddress 10.0.0.300", conn.Call(connMethod+"AnnounceAddress", 0, "10.0.0.300", uint16(0), uint8(0)), dbusapi.ErrorInvalidArguments},
		{"RemoveSubflow remote empty", conn.Call(connMethod+"RemoveSubflow", 0, local1, uint16(1000), "", port), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow unknown option", conn.Call(connMethod+"CreateSubflow", 0, local1, ra, port,
			map[string]dbus.Variant{"weight": dbus.MakeVariant(uint8(1))}), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow backup as a string", conn.Call(connMethod+"CreateSubflow", 0, local1, ra, port,
			map[string]dbus.Variant{"backup": dbus.MakeVariant("yes")}), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow local_id as u", conn.Call(connMethod+"CreateSubflow", 0, local1, ra, port,
			map[string]dbus.Variant{"local_id": dbus.MakeVariant(uint32(5))}), dbusapi.ErrorInvalidArguments},
		{"GetConnectionByToken unknown", mgr.Call(mgrMethod+"GetConnectionByToken", 0, unknownToken), dbusapi.ErrorNotFound},
		{"CreateSubflow on an unknown object", d.obj(noConn).Call(connMethod+"CreateSubflow", 0, local1, ra, port, none), dbusapi.ErrorNotFound},
		{"GetAll on an unknown object", d.obj(noConn).Call(propertiesGetAllMethod, 0, dbusapi.ConnectionInterface), dbusapi.ErrorNotFound},
		{"RemoveAddress id 0", conn.Call(connMethod+"RemoveAddress", 0, uint8(0)), dbusapi.ErrorInvalidArguments},
		{"RemoveEndpoint id 0", mgr.Call(mgrMethod+"RemoveEndpoint", 0, uint8(0)), dbusapi.ErrorInvalidArguments},
		{"SetEndpointFlags id 0", mgr.Call(mgrMethod+"SetEndpointFlags", 0, uint8(0), []string{"backup"}), dbusapi.ErrorInvalidArguments},
		{"CreateSubflow on an in-kernel PM connection", kconn.Call(connMethod+"CreateSubflow", 0, local1, ra, port, none), dbusapi.ErrorNotSupported},
		{"AnnounceAddress on an in-kernel PM connection", kconn.Call(connMethod+"AnnounceAddress", 0, local1, uint16(0), uint8(0)), dbusapi.ErrorNotSupported},
		{"RemoveSubflow that does not exist", conn.Call(connMethod+"RemoveSubflow", 0, local1, uint16(1000), ra, port), dbusapi.ErrorNotFound},
		{"SetSubflowBackup of a subflow that does not exist", conn.Call(connMethod+"SetSubflowBackup", 0, local1, uint16(1000), ra, port, true), dbusapi.ErrorNotFound},
		{"AddEndpoint unknown flag", mgr.Call(mgrMethod+"AddEndpoint", 0, local1, uint16(0), []string{"subflow", "turbo"}, "", uint8(0)), dbusapi.ErrorInvalidArguments},
		{"SetEndpointFlags unknown flag", mgr.Call(mgrMethod+"SetEndpointFlags", 0, uint8(1), []string{"turbo"}), dbusapi.ErrorInvalidArguments},
	} {
		de, ok := asDBusError(tc.call.Err)
		if !ok || de.Name != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, tc.call.Err, tc.want)
			continue
		}
		if msg, _ := de.Body[0].(string); msg == "" {
			t.Errorf("%s: %s without a message", tc.name, de.Name)
		}
		t.Logf("%s: %s: %v", tc.name, de.Name, de.Body)
	}

	if after := d.managedObjects(t); !reflect.DeepEqual(after, beforeObjs) {
		t.Errorf("objects changed:\nbefore %+v\n after %+v", beforeObjs, after)
	}
	if after := kernelState(t, s.lab.Client); after != beforeKernel {
		t.Errorf("kernel state changed:\nbefore %s\n after %s", beforeKernel, after)
	}
	time.Sleep(100 * time.Millisecond) // an event a refused call caused would be here by now
	if evs := kev.events()[beforeEvents:]; len(evs) != 0 {
		t.Errorf("kernel events after refused calls: %+v", evs)
	}
}

var monitorEvent = regexp.MustCompile(`\[\s*([A-Z_]+)\]`)

// ctlJSONConn is a connection as `mptcpctl connections --json` prints it.
type ctlJSONConn struct {
	Number        uint64 `json:"number"`
	Path          string `json:"path"`
	Token         string `json:"token"` // eight hex digits, as in the table
	ServerSide    bool   `json:"server_side"`
	State         string `json:"state"`
	LocalAddress  string `json:"local_address"`
	LocalPort     uint16 `json:"local_port"`
	RemoteAddress string `json:"remote_address"`
	RemotePort    uint16 `json:"remote_port"`
	Subflows      []struct {
		LocalAddress  string `json:"local_address"`
		LocalPort     uint16 `json:"local_port"`
		RemoteAddress string `json:"remote_address"`
		RemotePort    uint16 `json:"remote_port"`
	} `json:"subflows"`
}

// TestMptcpctl: the built mptcpctl against the real daemon: its exit codes,
// status, connections (as a table and as JSON, compared with the kernel)
// and monitor.
func TestMptcpctl(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"})
	kev := listenKernel(t, s.lab.Client)

	// No daemon on the bus yet.
	if out, errOut, code := ctl(t, s.bus, "status"); code != 3 || !strings.Contains(errOut, "not running") {
		t.Errorf("mptcpctl status without a daemon: status %d, want 3: %s%s", code, out, errOut)
	}
	d := startDaemon(t, s.lab.Client, s.bus)
	if out, errOut, code := ctl(t, s.bus, "frobnicate"); code != 2 {
		t.Errorf("mptcpctl frobnicate: status %d, want 2: %s%s", code, out, errOut)
	}
	if out, errOut, code := ctl(t, s.bus, "connection", "show", "99"); code != 5 {
		t.Errorf("mptcpctl connection show 99: status %d, want 5: %s%s", code, out, errOut)
	}
	if out, errOut, code := ctl(t, s.bus, "subflow", "add", "99", "10.55.1.1", "10.55.0.2:80"); code != 5 {
		t.Errorf("mptcpctl subflow add 99: status %d, want 5: %s%s", code, out, errOut)
	}

	mon := startBackground(t, ctlCommand(t, s.bus, "monitor"), "Monitoring")
	c, obj := s.established(t, d)
	remote := addrPort(t, c.RemoteAddr())
	local := addrPort(t, c.LocalAddr())
	local1 := s.lab.Client.Addrs4[1]
	from := s.rec.mark()
	if out, errOut, code := ctl(t, s.bus, "subflow", "add", "1", local1.String(), remote.String()); code != 0 {
		t.Fatalf("mptcpctl subflow add: status %d: %s%s", code, out, errOut)
	}
	sf := subflowOf(t, s.rec.waitAfter(t, from, "SubflowEstablished", subflowSignal(t, obj.Path, sigSubflowEstablished, local1, remote)))
	eventually(t, 5*time.Second, "Subflows lists the subflow", func() bool { return len(d.connection(t, obj.Path).Subflows) == 1 })

	out, errOut, code := ctl(t, s.bus, "status")
	if code != 0 {
		t.Fatalf("mptcpctl status: status %d: %s%s", code, out, errOut)
	}
	for _, re := range []string{`(?m)^Policy:\s+none$`, `(?m)^Kernel PM:\s+userspace$`, `(?m)^Connections:\s+1$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("mptcpctl status does not match %s:\n%s", re, out)
		}
	}

	created := kev.wait(t, "CREATED", func(ev pm.Event) bool { return ev.Type == pm.EventCreated && ev.LocalPort == local.Port() })
	out, errOut, code = ctl(t, s.bus, "connections")
	if code != 0 {
		t.Fatalf("mptcpctl connections: status %d: %s%s", code, out, errOut)
	}
	for _, want := range []string{fmt.Sprintf("%08x", created.Token), local.String(), remote.String(), fmt.Sprintf("%s:%d", local1, sf.LocalPort)} {
		if !strings.Contains(out, want) {
			t.Errorf("mptcpctl connections does not show %s:\n%s", want, out)
		}
	}
	out, errOut, code = ctl(t, s.bus, "--json", "connections")
	if code != 0 {
		t.Fatalf("mptcpctl --json connections: status %d: %s%s", code, out, errOut)
	}
	var conns []ctlJSONConn
	if err := json.Unmarshal([]byte(out), &conns); err != nil {
		t.Fatalf("mptcpctl --json connections: %v:\n%s", err, out)
	}
	if len(conns) != 1 {
		t.Fatalf("mptcpctl --json connections: %d connections, want 1:\n%s", len(conns), out)
	}
	got := conns[0]
	if got.Number != 1 || got.Path != string(obj.Path) || got.Token != fmt.Sprintf("%08x", created.Token) || got.ServerSide || got.State != "established" ||
		got.LocalAddress != local.Addr().String() || got.LocalPort != local.Port() ||
		got.RemoteAddress != remote.Addr().String() || got.RemotePort != remote.Port() {
		t.Errorf("mptcpctl --json connections: %+v; the kernel: token %08x %s -> %s", got, created.Token, local, remote)
	}
	// Every subflow listed is a TCP socket in the kernel.
	socks := tcpSockets(t, s.lab.Client)
	if len(got.Subflows) != 1 {
		t.Errorf("mptcpctl --json connections: subflows %+v, want the one added", got.Subflows)
	}
	for _, sf := range got.Subflows {
		k := fmt.Sprintf("%s:%d %s:%d", sf.LocalAddress, sf.LocalPort, sf.RemoteAddress, sf.RemotePort)
		if !socks[k] {
			t.Errorf("subflow %s is not in ss: %v", k, socks)
		}
	}

	from = s.rec.mark()
	c.Close()
	s.rec.waitAfter(t, from, "InterfacesRemoved", removed(obj.Path))
	eventually(t, 5*time.Second, "mptcpctl monitor shows the closing", func() bool { return strings.Contains(mon.out.String(), "CLOSED]") })
	out, code = mon.stop(t)
	if code != 0 {
		t.Errorf("mptcpctl monitor ended with status %d:\n%s", code, out)
	}
	var events []string
	for _, line := range strings.Split(out, "\n") {
		if m := monitorEvent.FindStringSubmatch(line); m != nil {
			events = append(events, m[1])
		}
	}
	want := []string{"CREATED", "ESTABLISHED", "SF_ESTABLISHED", "CLOSED"}
	if !isSubsequence(want, events) {
		t.Errorf("mptcpctl monitor events %v do not contain %v in order:\n%s", events, want, out)
	}
}

// isSubsequence reports whether want appears in got in order, possibly with
// other elements in between.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// TestPythonMonitor: dist/examples/monitor.py sees a connection appear,
// become established, get a subflow and close, one line each, and exits
// after --count events.
func TestPythonMonitor(t *testing.T) {
	requirePython(t)
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"})
	d := startDaemon(t, s.lab.Client, s.bus)
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pythonPath, filepath.Join(root, "dist/examples/monitor.py"), "--count", "4", "--timeout", "20")
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.bus.Address())
	mon := startBackground(t, cmd, "monitoring")

	c, obj := s.established(t, d)
	remote := addrPort(t, c.RemoteAddr())
	local := addrPort(t, c.LocalAddr())
	local1 := s.lab.Client.Addrs4[1]
	from := s.rec.mark()
	if err := d.obj(obj.Path).Call(connMethod+"CreateSubflow", 0, local1.String(), remote.Addr().String(), remote.Port(), map[string]dbus.Variant{}).Err; err != nil {
		t.Fatalf("CreateSubflow: %v", err)
	}
	sf := subflowOf(t, s.rec.waitAfter(t, from, "SubflowEstablished", subflowSignal(t, obj.Path, sigSubflowEstablished, local1, remote)))
	from = s.rec.mark()
	c.Close()
	s.rec.waitAfter(t, from, "InterfacesRemoved", removed(obj.Path))
	out, code := mon.wait(t)
	if code != 0 {
		t.Fatalf("monitor.py: status %d:\n%s", code, out)
	}
	want := []string{
		fmt.Sprintf("created %s token=%08x client %s -> %s", obj.Path, obj.Token, local, remote),
		fmt.Sprintf("established %s", obj.Path),
		fmt.Sprintf("SubflowEstablished %s id %d/%d %s:%d -> %s", obj.Path, sf.LocalID, sf.RemoteID, local1, sf.LocalPort, remote),
		fmt.Sprintf("closed %s", obj.Path),
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var got []string
	for _, l := range lines[1:] { // after the "monitoring" line
		for _, w := range want {
			if strings.HasPrefix(l, w) {
				got = append(got, w)
			}
		}
	}
	if !isSubsequence(want, got) || len(lines) != 5 {
		t.Errorf("monitor.py printed:\n%s\nwant 4 events including, in order:\n%s", out, strings.Join(want, "\n"))
	}
}

// TestStartErrors: the daemon refuses to start, with a message that says
// why, when the name is taken, the configuration is wrong, or MPTCP is off.
func TestStartErrors(t *testing.T) {
	pmtest.RequireLab(t)
	t.Run("name taken", func(t *testing.T) {
		s := newSetup(t, pmtest.LabOptions{})
		startDaemon(t, s.lab.Client, s.bus)
		out, code := runDaemon(t, s.lab.Server, s.bus, daemonSpec{})
		if code == 0 || !strings.Contains(out, dbusapi.BusName) {
			t.Errorf("second daemon: status %d, want non-zero and a message naming %s:\n%s", code, dbusapi.BusName, out)
		}
		t.Logf("status %d: %s", code, out)
	})
	t.Run("bad config", func(t *testing.T) {
		h := pmtest.NewNamespace(t)
		bus := dbustest.StartBus(t, dbustest.SystemDefaults())
		arg := configArg(t, "policy = \"none\"\nfrobnicate = true\n")
		file := strings.TrimPrefix(arg, "--config=")
		out, code := runDaemon(t, h, bus, daemonSpec{Args: []string{arg}})
		if code == 0 || !strings.Contains(out, file+":2") || !strings.Contains(out, "frobnicate") {
			t.Errorf("unknown key: status %d, want non-zero and a message naming %s:2 and the key:\n%s", code, file, out)
		}
		t.Logf("status %d: %s", code, out)
	})
	t.Run("MPTCP disabled", func(t *testing.T) {
		h := pmtest.NewNamespace(t)
		h.Run(t, "sysctl", "-qw", "net.mptcp.enabled=0")
		bus := dbustest.StartBus(t, dbustest.SystemDefaults())
		out, code := runDaemon(t, h, bus, daemonSpec{})
		if code == 0 || !strings.Contains(out, "net.mptcp.enabled=1") {
			t.Errorf("MPTCP disabled: status %d, want non-zero and a message saying net.mptcp.enabled=1:\n%s", code, out)
		}
		t.Logf("status %d: %s", code, out)
	})
}

// TestGioExample runs dist/examples/connections-gio.py, the example that
// uses GLib's GIO instead of python3-dbus, against the real daemon: it
// must list the connection with its token, addresses and subflow.
func TestGioExample(t *testing.T) {
	requirePython(t)
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace"})
	d := startDaemon(t, s.lab.Client, s.bus)
	c, obj := s.established(t, d)
	remote := addrPort(t, c.RemoteAddr())
	local := addrPort(t, c.LocalAddr())
	local1 := s.lab.Client.Addrs4[1]
	from := s.rec.mark()
	if err := d.obj(obj.Path).Call(connMethod+"CreateSubflow", 0, local1.String(), remote.Addr().String(), remote.Port(), map[string]dbus.Variant{"interface": dbus.MakeVariant("c1")}).Err; err != nil {
		t.Fatalf("CreateSubflow: %v", err)
	}
	sf := subflowOf(t, s.rec.waitAfter(t, from, "SubflowEstablished", subflowSignal(t, obj.Path, sigSubflowEstablished, local1, remote)))
	out, stderr, code := python(t, s.bus, "dist/examples/connections-gio.py")
	if code != 0 {
		t.Fatalf("connections-gio.py: status %d: %s", code, stderr)
	}
	want := []string{
		fmt.Sprintf("%s token=%08x established client %s -> %s", obj.Path, obj.Token, local, remote),
		fmt.Sprintf("  subflow id %d/%d %s:%d -> %s dev c1", sf.LocalID, sf.RemoteID, local1, sf.LocalPort, remote),
	}
	if got := strings.Split(strings.TrimSpace(out), "\n"); !slices.Equal(got, want) {
		t.Errorf("connections-gio.py printed\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
}

// TestInterfaceNameNotUTF8: Linux allows an interface name of bytes that
// are not UTF-8, which D-Bus cannot carry. The daemon shows such a name
// with U+FFFD: LocalAddresses, the subflows it makes from that interface,
// and GetManagedObjects all work.
func TestInterfaceNameNotUTF8(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{ClientPM: "userspace", Paths: 2})
	cli := s.lab.Client
	raw := "c\xff1"
	cli.Run(t, "ip", "link", "set", "dev", cli.Ifaces[1], "down")
	cli.Run(t, "ip", "link", "set", "dev", cli.Ifaces[1], "name", raw)
	cli.Run(t, "ip", "link", "set", "dev", raw, "up")
	shown := "c\uFFFD1"
	d := startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")

	eventually(t, 5*time.Second, "LocalAddresses with "+shown, func() bool {
		v, err := d.obj(dbusapi.ManagerPath).GetProperty(dbusapi.ManagerInterface + ".LocalAddresses")
		return err == nil && strings.Contains(fmt.Sprint(v.Value()), shown)
	})
	server := s.lab.Server.Serve(t, netip.AddrPortFrom(s.lab.Server.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	local := addrPort(t, c.LocalAddr())
	obj := addedConn(t, s.rec, 0, "the connection", func(c connObject) bool { return c.LocalPort == local.Port() })
	eventually(t, 5*time.Second, "a subflow from "+shown, func() bool {
		for _, sf := range d.managedObjects(t)[obj.Path].Subflows {
			if sf.Interface == shown && sf.LocalAddress == cli.Addrs4[1].String() {
				return true
			}
		}
		return false
	})
}
