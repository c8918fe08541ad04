package dbusapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

func withState(f *fakeBackend) {
	f.manager = manager1
	f.conns = []service.Connection{conn1, conn2}
	f.tokens = map[uint32]uint64{conn1.Token: conn1.ID, conn2.Token: conn2.ID}
}

func TestGetManagedObjects(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := h.obj(ManagerPath).Call(objectManagerInterface+".GetManagedObjects", 0).Store(&objs); err != nil {
		t.Fatal(err)
	}
	want := map[dbus.ObjectPath]map[string]any{
		"/org/mptcp/PathManager1/connection/1": conn1Wire,
		"/org/mptcp/PathManager1/connection/2": conn2Wire,
	}
	if len(objs) != len(want) {
		t.Fatalf("GetManagedObjects has %d objects, want %d: %v", len(objs), len(want), objs)
	}
	for path, props := range want {
		ifaces, ok := objs[path]
		if !ok {
			t.Errorf("%s missing", path)
			continue
		}
		checkConnectionObject(t, path, ifaces, props)
	}
}

// TestGetManagedObjectsReplies: the reply the server writes itself goes
// to the caller that wants it, and only to it: a call that asks for no
// reply gets none, a call with arguments gets godbus's refusal, and
// nothing stays owed.
func TestGetManagedObjectsReplies(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	w := wireOf(h.srvConn)
	if w == nil || !w.rawReplies.Load() {
		t.Fatal("the server does not write its replies itself")
	}
	obj := h.obj(ManagerPath)
	// No reply wanted: none comes (the next reply is the Ping's).
	if call := obj.Go(objectManagerInterface+".GetManagedObjects", dbus.FlagNoReplyExpected, nil); call.Err != nil {
		t.Fatal(call.Err)
	}
	if err := obj.Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
		t.Fatal(err)
	}
	err := obj.Call(objectManagerInterface+".GetManagedObjects", 0, "extra").Err
	var derr dbus.Error
	if !errors.As(err, &derr) || derr.Name != "org.freedesktop.DBus.Error.InvalidArgs" {
		t.Errorf("GetManagedObjects with an argument: %v, want InvalidArgs", err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
			if err := obj.Call(objectManagerInterface+".GetManagedObjects", 0).Store(&objs); err != nil || len(objs) != 2 {
				t.Errorf("GetManagedObjects: %d objects, %v", len(objs), err)
			}
		}()
	}
	wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.owed) != 0 {
		t.Errorf("replies still owed: %v", w.owed)
	}
}

// TestGetManagedObjectsLarge: a reply written in many pieces (connections
// of different sizes, so that their entries are padded differently) reads
// back as the mirror's objects; one that cannot be encoded (an interface
// name that is not UTF-8) is an error reply, not a broken stream.
func TestGetManagedObjectsLarge(t *testing.T) {
	bus := dbustest.StartBus(t)
	srv, err := New(dialServer(t, bus), newFakeBackend(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const n = 3000
	want := make(map[dbus.ObjectPath]service.Connection, n)
	for i := range n {
		c := conn1
		c.ID, c.Token = uint64(i+1), uint32(i+1)
		c.Subflows = c.Subflows[:i%(len(c.Subflows)+1)]
		c.State = strings.Repeat("x", i%7)
		srv.Publish(service.ConnectionAdded{Connection: c})
		want[ConnectionPath(c.ID)] = c
	}
	client := bus.Dial(t)
	obj := client.Object(srv.conn.Names()[0], ManagerPath)
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := obj.Call(objectManagerInterface+".GetManagedObjects", 0).Store(&objs); err != nil {
		t.Fatal(err)
	}
	if len(objs) != n {
		t.Fatalf("%d objects, want %d", len(objs), n)
	}
	for path, c := range want {
		// As values: Store makes new variants of what it decoded.
		values := func(m map[string]map[string]dbus.Variant) string {
			return fmt.Sprint(m) // fmt sorts map keys
		}
		exp := throughGodbus(t, connectionObject(c)).(map[string]map[string]dbus.Variant)
		if got := objs[path]; fmt.Sprint(valuesOf(got)) != fmt.Sprint(valuesOf(exp)) {
			t.Fatalf("%s:\n got %v\nwant %v", path, values(got), values(exp))
		}
	}

	bad := conn1
	bad.ID = n + 1
	bad.Subflows = []service.Subflow{{Interface: "eth\xff"}}
	srv.Publish(service.ConnectionAdded{Connection: bad})
	err = obj.Call(objectManagerInterface+".GetManagedObjects", 0).Store(&objs)
	var derr dbus.Error
	if !errors.As(err, &derr) || derr.Name != "org.freedesktop.DBus.Error.Failed" || !strings.Contains(fmt.Sprint(derr.Body...), "UTF-8") {
		t.Fatalf("with an interface name that is not UTF-8: %v, want Failed saying why", err)
	}
	if err := obj.Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
		t.Fatalf("the connection after the refused reply: %v", err)
	}
}

// valuesOf returns the values of an object's properties, without their
// variants' signatures.
func valuesOf(m map[string]map[string]dbus.Variant) map[string]map[string]any {
	out := make(map[string]map[string]any, len(m))
	for iface, props := range m {
		out[iface] = make(map[string]any, len(props))
		for k, v := range props {
			out[iface][k] = v.Value()
		}
	}
	return out
}

// BenchmarkGetManagedObjects10000 measures a GetManagedObjects round trip
// at 10,000 connections as a godbus client sees it (call-ms, its decoding
// and conversion included), the server's part (server-ms: the mirror's
// connections copied, sorted and encoded) and godbus's decoding of the reply alone
// (decode-ms).
func BenchmarkGetManagedObjects10000(b *testing.B) {
	bus := dbustest.StartBus(b)
	srv, err := New(dialServer(b, bus), newFakeBackend(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for i := range 10000 {
		c := conn1
		c.ID, c.Token = uint64(i+1), uint32(i+1)
		srv.Publish(service.ConnectionAdded{Connection: c})
	}
	client := bus.Dial(b)
	obj := client.Object(srv.conn.Names()[0], ManagerPath)
	var call, server, decode time.Duration
	for b.Loop() {
		t0 := time.Now()
		var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
		if err := obj.Call(objectManagerInterface+".GetManagedObjects", 0).Store(&objs); err != nil || len(objs) != 10000 {
			b.Fatalf("%d objects, %v", len(objs), err)
		}
		t1 := time.Now()
		cs := srv.managed()
		raw, err := appendMessage(make([]byte, 0, 1024*len(cs)), header{typ: dbus.TypeMethodReply, serial: 1, replySerial: 1}, cs)
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := dbus.DecodeMessage(bytes.NewReader(raw)); err != nil {
			b.Fatal(err)
		}
		call, server, decode = call+t1.Sub(t0), server+t2.Sub(t1), decode+time.Since(t2)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(call), "call-ms")
	b.ReportMetric(ms(server), "server-ms")
	b.ReportMetric(ms(decode), "decode-ms")
}

// checkConnectionObject checks one object's entry of GetManagedObjects or
// InterfacesAdded.
func checkConnectionObject(t *testing.T, path dbus.ObjectPath, ifaces map[string]map[string]dbus.Variant, props map[string]any) {
	t.Helper()
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range ifaces {
			if !yield(k) {
				return
			}
		}
	})
	wantNames := []string{"org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.Properties", ConnectionInterface}
	if !slices.Equal(names, wantNames) {
		t.Errorf("%s interfaces = %v, want %v", path, names, wantNames)
	}
	if got := values(ifaces[ConnectionInterface]); !reflect.DeepEqual(got, props) {
		t.Errorf("%s properties:\n got %#v\nwant %#v", path, got, props)
	}
	for _, std := range wantNames[:3] {
		if len(ifaces[std]) != 0 {
			t.Errorf("%s: %s has properties %v", path, std, ifaces[std])
		}
	}
}

func TestObjectManagerAddRemove(t *testing.T) {
	h := newHarness(t, Options{}, nil)
	sigs := h.subscribe(t)

	h.srv.Publish(service.ConnectionAdded{Connection: conn1})
	s := next(t, sigs)
	if s.Name != objectManagerInterface+".InterfacesAdded" || s.Path != ManagerPath {
		t.Fatalf("got %s on %s, want InterfacesAdded on the manager", s.Name, s.Path)
	}
	if len(s.Body) != 2 || s.Body[0] != ConnectionPath(1) {
		t.Fatalf("InterfacesAdded body %v", s.Body)
	}
	ifaces, ok := s.Body[1].(map[string]map[string]dbus.Variant)
	if !ok {
		t.Fatalf("InterfacesAdded dictionary is %T", s.Body[1])
	}
	checkConnectionObject(t, ConnectionPath(1), ifaces, conn1Wire)

	// The object is there for reads and method calls.
	var token uint32
	if err := h.obj(ConnectionPath(1)).StoreProperty(ConnectionInterface+".Token", &token); err != nil || token != conn1.Token {
		t.Errorf("Token = %d, %v", token, err)
	}

	h.srv.Publish(service.ConnectionRemoved{Connection: conn1})
	s = next(t, sigs)
	if s.Name != objectManagerInterface+".InterfacesRemoved" || s.Path != ManagerPath {
		t.Fatalf("got %s on %s, want InterfacesRemoved on the manager", s.Name, s.Path)
	}
	wantIfaces := []string{ConnectionInterface, "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"}
	if len(s.Body) != 2 || s.Body[0] != ConnectionPath(1) || !reflect.DeepEqual(s.Body[1], wantIfaces) {
		t.Errorf("InterfacesRemoved body %v, want [%s %v]", s.Body, ConnectionPath(1), wantIfaces)
	}
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := h.obj(ManagerPath).Call(objectManagerInterface+".GetManagedObjects", 0).Store(&objs); err != nil || len(objs) != 0 {
		t.Errorf("GetManagedObjects after removal = %v, %v", objs, err)
	}
	if _, err := h.obj(ConnectionPath(1)).GetProperty(ConnectionInterface + ".Token"); errName(err) != ErrorNotFound {
		t.Errorf("Token of a removed connection: %v, want NotFound", err)
	}
	// A second removal announces nothing.
	h.srv.Publish(service.ConnectionRemoved{Connection: conn1})
	h.srv.Publish(service.ConnectionAdded{Connection: conn2})
	if s := next(t, sigs); s.Name != objectManagerInterface+".InterfacesAdded" || s.Body[0] != ConnectionPath(2) {
		t.Errorf("after a repeated removal got %s %v, want InterfacesAdded of connection 2", s.Name, s.Body)
	}
}

func TestProperties(t *testing.T) {
	h := newHarness(t, Options{}, withState)

	var all map[string]dbus.Variant
	if err := h.obj(ManagerPath).Call(propertiesInterface+".GetAll", 0, ManagerInterface).Store(&all); err != nil {
		t.Fatal(err)
	}
	if got := values(all); !reflect.DeepEqual(got, manager1Wire) {
		t.Errorf("manager GetAll:\n got %#v\nwant %#v", got, manager1Wire)
	}
	all = nil
	if err := h.obj(ConnectionPath(2)).Call(propertiesInterface+".GetAll", 0, ConnectionInterface).Store(&all); err != nil {
		t.Fatal(err)
	}
	if got := values(all); !reflect.DeepEqual(got, conn2Wire) {
		t.Errorf("connection GetAll:\n got %#v\nwant %#v", got, conn2Wire)
	}
	for name, want := range conn1Wire {
		v, err := h.obj(ConnectionPath(1)).GetProperty(ConnectionInterface + "." + name)
		if err != nil || !reflect.DeepEqual(v.Value(), want) {
			t.Errorf("Get(%s) = %#v, %v; want %#v", name, v.Value(), err, want)
		}
	}
	// The standard interfaces have no properties.
	all = nil
	if err := h.obj(ManagerPath).Call(propertiesInterface+".GetAll", 0, objectManagerInterface).Store(&all); err != nil || len(all) != 0 {
		t.Errorf("GetAll(ObjectManager) = %v, %v", all, err)
	}

	for _, tc := range []struct {
		path   dbus.ObjectPath
		method string
		args   []any
		want   string
	}{
		{ManagerPath, "Set", []any{ManagerInterface, "Policy", dbus.MakeVariant("none")}, "org.freedesktop.DBus.Error.PropertyReadOnly"},
		{ConnectionPath(1), "Set", []any{ConnectionInterface, "Token", dbus.MakeVariant(uint32(1))}, "org.freedesktop.DBus.Error.PropertyReadOnly"},
		{ManagerPath, "Set", []any{ManagerInterface, "Nope", dbus.MakeVariant("x")}, "org.freedesktop.DBus.Error.UnknownProperty"},
		{ManagerPath, "Get", []any{ManagerInterface, "Nope"}, "org.freedesktop.DBus.Error.UnknownProperty"},
		{ManagerPath, "Get", []any{ConnectionInterface, "Token"}, "org.freedesktop.DBus.Error.UnknownInterface"},
		{ConnectionPath(1), "GetAll", []any{"org.example.Nope"}, "org.freedesktop.DBus.Error.UnknownInterface"},
		{ConnectionPath(1), "GetAll", []any{objectManagerInterface}, "org.freedesktop.DBus.Error.UnknownInterface"},
		{ConnectionPath(9), "Get", []any{ConnectionInterface, "Token"}, ErrorNotFound},
		{ConnectionsPath, "GetAll", []any{ConnectionInterface}, ErrorNotFound},
	} {
		_, err := h.call(tc.path, propertiesInterface+"."+tc.method, tc.args...)
		if errName(err) != tc.want {
			t.Errorf("%s %s%v: %v, want %s", tc.path, tc.method, tc.args, err, tc.want)
		}
	}
}

func TestPropertiesChanged(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	sigs := h.subscribe(t)

	m := manager1
	m.Limits = service.Limits{Subflows: 2, AddAddrAccepted: 1}
	m.Controller, m.ControlMode = ":1.99", service.ModeController
	h.srv.Publish(service.ManagerChanged{Manager: m, Changed: []string{"Limits", "Controller", "ControlMode", "NotAProperty"}})
	s := next(t, sigs)
	checkChanged(t, s, ManagerPath, ManagerInterface, map[string]any{
		"Limits": []any{uint32(2), uint32(1)}, "Controller": ":1.99", "ControlMode": "controller",
	})
	var limits []any
	if v, err := h.obj(ManagerPath).GetProperty(ManagerInterface + ".Limits"); err != nil {
		t.Error(err)
	} else if limits, _ = v.Value().([]any); !reflect.DeepEqual(limits, []any{uint32(2), uint32(1)}) {
		t.Errorf("Limits after the change = %v", v)
	}

	// Nothing known changed: no signal. The next signal is the connection's.
	h.srv.Publish(service.ManagerChanged{Manager: m, Changed: []string{"NotAProperty"}})
	c := conn1
	c.State = service.StateEstablished
	c.Subflows = c.Subflows[:1]
	h.srv.Publish(service.ConnectionChanged{Connection: c, Changed: []string{"Subflows", "State"}})
	s = next(t, sigs)
	checkChanged(t, s, ConnectionPath(1), ConnectionInterface, map[string]any{
		"State":    "established",
		"Subflows": conn1Wire["Subflows"].([][]any)[:1],
	})
	if v, err := h.obj(ConnectionPath(1)).GetProperty(ConnectionInterface + ".Subflows"); err != nil || len(v.Value().([][]any)) != 1 {
		t.Errorf("Subflows after the change = %v, %v", v, err)
	}
}

func checkChanged(t *testing.T, s *dbus.Signal, path dbus.ObjectPath, iface string, want map[string]any) {
	t.Helper()
	if s.Name != propertiesInterface+".PropertiesChanged" || s.Path != path {
		t.Fatalf("got %s on %s, want PropertiesChanged on %s", s.Name, s.Path, path)
	}
	if len(s.Body) != 3 || s.Body[0] != iface {
		t.Fatalf("PropertiesChanged body %v", s.Body)
	}
	if got := values(s.Body[1].(map[string]dbus.Variant)); !reflect.DeepEqual(got, want) {
		t.Errorf("changed properties:\n got %#v\nwant %#v", got, want)
	}
	if inv, ok := s.Body[2].([]string); !ok || len(inv) != 0 {
		t.Errorf("invalidated properties %#v, want none", s.Body[2])
	}
}

// TestSignalsInOrder sends 1000 notifications of every kind and checks that
// the client receives the matching signals, with the contract's bodies, in
// the same order.
func TestSignalsInOrder(t *testing.T) {
	h := newHarness(t, Options{}, nil)
	sigs := h.subscribe(t)
	h.srv.Publish(service.ConnectionAdded{Connection: conn1})
	if s := next(t, sigs); s.Name != objectManagerInterface+".InterfacesAdded" {
		t.Fatalf("first signal %s, want InterfacesAdded", s.Name)
	}
	sf := conn1.Subflows[1]
	type expect struct {
		name string
		body []any
	}
	const n = 1000
	want := make([]expect, 0, n)
	for i := range n {
		sf.LocalPort = uint16(i)
		sfBody := []any{sf.LocalID, sf.RemoteID, "fd00:55:1::2", uint16(i), "fd00:55:1::1", sf.RemotePort, sf.Backup, ""}
		switch i % 5 {
		case 0:
			h.srv.Publish(service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowEstablished, Subflow: sf})
			want = append(want, expect{"SubflowEstablished", sfBody})
		case 1:
			h.srv.Publish(service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowClosed, Subflow: sf, Error: 104, ResetReason: uint32(i)})
			want = append(want, expect{"SubflowClosed", append(slices.Clone(sfBody), uint32(104), uint32(i))})
		case 2:
			h.srv.Publish(service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowPriorityChanged, Subflow: sf})
			want = append(want, expect{"SubflowPriorityChanged", sfBody})
		case 3:
			h.srv.Publish(service.AddressAnnounced{ConnectionID: 1, Address: service.AnnouncedAddress{ID: uint8(i), Address: netip.MustParseAddr("10.55.2.1"), Port: uint16(i)}})
			want = append(want, expect{"AddressAnnounced", []any{uint8(i), "10.55.2.1", uint16(i)}})
		case 4:
			h.srv.Publish(service.AddressRemoved{ConnectionID: 1, RemoteID: uint8(i)})
			want = append(want, expect{"AddressRemoved", []any{uint8(i)}})
		}
	}
	// Signals of an unknown connection are not sent.
	h.srv.Publish(service.AddressRemoved{ConnectionID: 99, RemoteID: 1})
	h.srv.Publish(service.ConnectionRemoved{Connection: conn1})

	for i, w := range want {
		s := next(t, sigs)
		if s.Path != ConnectionPath(1) || s.Name != ConnectionInterface+"."+w.name || !reflect.DeepEqual(s.Body, w.body) {
			t.Fatalf("signal %d: %s on %s %#v, want %s %#v", i, s.Name, s.Path, s.Body, w.name, w.body)
		}
	}
	if s := next(t, sigs); s.Name != objectManagerInterface+".InterfacesRemoved" {
		t.Errorf("after the events got %s %v, want InterfacesRemoved", s.Name, s.Body)
	}
}

// TestLoadKeepsNewerState checks that a snapshot taken while a notification
// was published does not overwrite the notification's newer state.
func TestLoadKeepsNewerState(t *testing.T) {
	h := newHarness(t, Options{}, nil)
	older, newer := manager1, manager1
	older.Policy, newer.Policy = "older", "newer"
	h.be.mu.Lock()
	h.be.manager, h.be.loads = older, 0
	h.be.onLoad = func(n int) {
		if n == 1 {
			// Published while the first snapshot is taken; the service's
			// next snapshot includes it.
			h.srv.Publish(service.ManagerChanged{Manager: newer, Changed: []string{"Policy"}})
			h.be.mu.Lock()
			h.be.manager = newer
			h.be.mu.Unlock()
		}
	}
	h.be.mu.Unlock()
	if err := h.srv.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	var policy string
	if err := h.obj(ManagerPath).StoreProperty(ManagerInterface+".Policy", &policy); err != nil || policy != "newer" {
		t.Errorf("Policy = %q, %v; want newer", policy, err)
	}
	h.be.mu.Lock()
	defer h.be.mu.Unlock()
	if h.be.loads != 2 {
		t.Errorf("load took %d snapshots, want 2", h.be.loads)
	}
}

// TestMethodsReachBackend checks that each method's arguments arrive at the
// backend translated, with the caller's identity, and that results come back.
func TestMethodsReachBackend(t *testing.T) {
	auth := &allowAll{}
	h := newHarness(t, Options{Authorizer: auth}, withState)
	me := service.Caller{Name: h.client.Names()[0], UID: uint32(os.Geteuid())}
	c1 := ConnectionPath(1)
	ap := netip.MustParseAddrPort
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		path   dbus.ObjectPath
		method string
		args   []any
		reply  []any
		want   call
	}{
		{ManagerPath, "AddEndpoint", []any{"10.55.1.1", uint16(0), []string{"signal", "backup"}, "c1", uint8(0)}, []any{uint8(42)},
			call{"AddEndpoint", me, []any{policy.Endpoint{Address: pm.Address{Addr: ip("10.55.1.1"), Flags: pm.FlagSignal | pm.FlagBackup}, Interface: "c1"}}}},
		{ManagerPath, "AddEndpoint", []any{"fe80::1%c2", uint16(80), []string{}, "", uint8(9)}, []any{uint8(42)},
			call{"AddEndpoint", me, []any{policy.Endpoint{Address: pm.Address{ID: 9, Addr: ip("fe80::1"), Port: 80}, Interface: "c2"}}}},
		{ManagerPath, "AddEndpoint", []any{"fe80::1%c2", uint16(80), []string{}, "c2", uint8(9)}, []any{uint8(42)},
			call{"AddEndpoint", me, []any{policy.Endpoint{Address: pm.Address{ID: 9, Addr: ip("fe80::1"), Port: 80}, Interface: "c2"}}}},
		{ManagerPath, "RemoveEndpoint", []any{uint8(3)}, nil, call{"RemoveEndpoint", me, []any{uint8(3)}}},
		{ManagerPath, "SetEndpointFlags", []any{uint8(3), []string{"backup"}}, nil, call{"SetEndpointFlags", me, []any{uint8(3), pm.FlagBackup}}},
		{ManagerPath, "FlushEndpoints", nil, nil, call{"FlushEndpoints", me, nil}},
		{ManagerPath, "SetLimits", []any{uint32(5), uint32(6)}, nil, call{"SetLimits", me, []any{service.Limits{Subflows: 5, AddAddrAccepted: 6}}}},
		{ManagerPath, "RegisterController", []any{dbus.ObjectPath("/ctl"), map[string]dbus.Variant{}}, nil, call{"RegisterController", me, []any{"/ctl"}}},
		{ManagerPath, "UnregisterController", []any{dbus.ObjectPath("/ctl")}, nil, call{"UnregisterController", me, []any{"/ctl"}}},
		{c1, "AnnounceAddress", []any{"10.55.1.2", uint16(0), uint8(0)}, []any{uint8(7)},
			call{"AnnounceAddress", me, []any{uint64(1), ip("10.55.1.2"), uint16(0), uint8(0)}}},
		{c1, "RemoveAddress", []any{uint8(7)}, nil, call{"RemoveAddress", me, []any{uint64(1), uint8(7)}}},
		{c1, "CreateSubflow", []any{"10.55.1.2", "10.55.1.1", uint16(80), map[string]dbus.Variant{}}, nil,
			call{"CreateSubflow", me, []any{uint64(1), service.SubflowRequest{LocalAddress: ip("10.55.1.2"), RemoteAddress: ip("10.55.1.1"), RemotePort: 80}}}},
		{c1, "CreateSubflow", []any{"fd00::2", "fd00::1", uint16(80), map[string]dbus.Variant{
			"local_id": dbus.MakeVariant(uint8(4)), "local_port": dbus.MakeVariant(uint16(5000)),
			"backup": dbus.MakeVariant(true), "interface": dbus.MakeVariant("s1"),
		}}, nil, call{"CreateSubflow", me, []any{uint64(1), service.SubflowRequest{
			LocalAddress: ip("fd00::2"), RemoteAddress: ip("fd00::1"), RemotePort: 80,
			LocalID: 4, LocalPort: 5000, Backup: true, Interface: "s1",
		}}}},
		{c1, "RemoveSubflow", []any{"10.55.1.2", uint16(5000), "10.55.1.1", uint16(80)}, nil,
			call{"RemoveSubflow", me, []any{uint64(1), ap("10.55.1.2:5000"), ap("10.55.1.1:80")}}},
		{c1, "SetSubflowBackup", []any{"::ffff:10.55.1.2", uint16(5000), "10.55.1.1", uint16(80), true}, nil,
			call{"SetSubflowBackup", me, []any{uint64(1), ap("[::ffff:10.55.1.2]:5000"), ap("10.55.1.1:80"), true}}},
	} {
		t.Run(tc.method, func(t *testing.T) {
			h.be.takeCalls()
			reply, err := h.call(tc.path, methodName(tc.path, tc.method), tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(reply, tc.reply) && !(len(reply) == 0 && len(tc.reply) == 0) {
				t.Errorf("reply %#v, want %#v", reply, tc.reply)
			}
			if got := h.be.takeCalls(); len(got) != 1 || !reflect.DeepEqual(got[0], tc.want) {
				t.Errorf("backend calls:\n got %#v\nwant %#v", got, tc.want)
			}
		})
	}
	// Every mutating call was authorized, once, for the caller.
	asks := auth.requests()
	for _, a := range asks {
		if a.Sender != me.Name || a.UID != me.UID || a.Interactive {
			t.Errorf("authorization request %+v, want %s uid %d", a, me.Name, me.UID)
		}
	}
	if len(asks) != 15 {
		t.Errorf("%d authorization requests, want 15", len(asks))
	}

	// Reads need no authorization.
	var p dbus.ObjectPath
	if err := h.obj(ManagerPath).Call(ManagerInterface+".GetConnectionByToken", 0, conn1.Token).Store(&p); err != nil || p != c1 {
		t.Errorf("GetConnectionByToken = %s, %v; want %s", p, err, c1)
	}
	if _, err := h.call(ManagerPath, ManagerInterface+".GetConnectionByToken", uint32(1)); errName(err) != ErrorNotFound {
		t.Errorf("GetConnectionByToken(unknown): %v, want NotFound", err)
	}
	if asks := auth.requests(); len(asks) != 0 {
		t.Errorf("reads were authorized: %v", asks)
	}
}

func methodName(path dbus.ObjectPath, method string) string {
	if path == ManagerPath {
		return ManagerInterface + "." + method
	}
	return ConnectionInterface + "." + method
}

// TestArgumentValidation checks that malformed arguments are refused with
// InvalidArguments, naming the offending text, before the backend is called.
func TestArgumentValidation(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	c1 := ConnectionPath(1)
	v := dbus.MakeVariant
	for _, tc := range []struct {
		name   string
		path   dbus.ObjectPath
		method string
		args   []any
		text   string // in the error message
	}{
		{"endpoint address", ManagerPath, "AddEndpoint", []any{"10.55.1.300", uint16(0), []string{}, "", uint8(0)}, "10.55.1.300"},
		{"endpoint empty address", ManagerPath, "AddEndpoint", []any{"", uint16(0), []string{}, "", uint8(0)}, `""`},
		{"endpoint zone on a global address", ManagerPath, "AddEndpoint", []any{"fd00::1%eth0", uint16(0), []string{}, "", uint8(0)}, "fd00::1%eth0"},
		{"endpoint zone against interface", ManagerPath, "AddEndpoint", []any{"fe80::1%eth0", uint16(0), []string{}, "eth1", uint8(0)}, "eth1"},
		{"remove endpoint 0", ManagerPath, "RemoveEndpoint", []any{uint8(0)}, "id 0"},
		{"flags of endpoint 0", ManagerPath, "SetEndpointFlags", []any{uint8(0), []string{"backup"}}, "id 0"},
		{"endpoint unknown flag word", ManagerPath, "AddEndpoint", []any{"10.55.1.1", uint16(0), []string{"subflow", "bakup"}, "", uint8(0)}, `"bakup"`},
		{"unknown flag word", ManagerPath, "SetEndpointFlags", []any{uint8(1), []string{"turbo"}}, `"turbo"`},
		{"controller option", ManagerPath, "RegisterController", []any{dbus.ObjectPath("/ctl"), map[string]dbus.Variant{"b": v(1), "a": v(true)}}, `"a"`},
		{"announce address", c1, "AnnounceAddress", []any{"not-an-ip", uint16(0), uint8(0)}, "not-an-ip"},
		{"announce zone", c1, "AnnounceAddress", []any{"fe80::1%eth0", uint16(0), uint8(0)}, "fe80::1%eth0"},
		{"remove address 0", c1, "RemoveAddress", []any{uint8(0)}, "id 0"},
		{"subflow local", c1, "CreateSubflow", []any{"10.0.0", "10.0.0.1", uint16(80), map[string]dbus.Variant{}}, "10.0.0"},
		{"subflow remote", c1, "CreateSubflow", []any{"10.0.0.2", "x", uint16(80), map[string]dbus.Variant{}}, `"x"`},
		{"subflow zone", c1, "CreateSubflow", []any{"fe80::2%s0", "fe80::1", uint16(80), map[string]dbus.Variant{}}, "fe80::2%s0"},
		{"subflow unknown option", c1, "CreateSubflow", []any{"10.0.0.2", "10.0.0.1", uint16(80), map[string]dbus.Variant{"local_ip": v("10.0.0.2")}}, "local_ip"},
		{"subflow local_id type", c1, "CreateSubflow", []any{"10.0.0.2", "10.0.0.1", uint16(80), map[string]dbus.Variant{"local_id": v(uint32(1))}}, "local_id"},
		{"subflow local_port type", c1, "CreateSubflow", []any{"10.0.0.2", "10.0.0.1", uint16(80), map[string]dbus.Variant{"local_port": v(int32(1))}}, "local_port"},
		{"subflow backup type", c1, "CreateSubflow", []any{"10.0.0.2", "10.0.0.1", uint16(80), map[string]dbus.Variant{"backup": v(uint8(1))}}, "backup"},
		{"subflow interface type", c1, "CreateSubflow", []any{"10.0.0.2", "10.0.0.1", uint16(80), map[string]dbus.Variant{"interface": v([]string{"s0"})}}, "interface"},
		{"remove subflow local", c1, "RemoveSubflow", []any{"", uint16(1), "10.0.0.1", uint16(80)}, "local_address"},
		{"remove subflow remote", c1, "RemoveSubflow", []any{"10.0.0.2", uint16(1), "10.0.0.1:80", uint16(80)}, "10.0.0.1:80"},
		{"remove subflow zone", c1, "RemoveSubflow", []any{"10.0.0.2", uint16(1), "fe80::1%1", uint16(80)}, "fe80::1%1"},
		{"backup local", c1, "SetSubflowBackup", []any{"10.0.0.2/24", uint16(1), "10.0.0.1", uint16(80), true}, "10.0.0.2/24"},
		{"backup zone", c1, "SetSubflowBackup", []any{"fe80::2%s0", uint16(1), "fe80::1", uint16(80), true}, "fe80::2%s0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.call(tc.path, methodName(tc.path, tc.method), tc.args...)
			if errName(err) != ErrorInvalidArguments {
				t.Fatalf("%v, want InvalidArguments", err)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("message %q does not contain %q", err, tc.text)
			}
			if calls := h.be.takeCalls(); len(calls) != 0 {
				t.Errorf("the backend was called: %v", calls)
			}
		})
	}
}

func TestUnknownConnectionObject(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	for _, p := range []dbus.ObjectPath{ConnectionPath(3), ConnectionsPath + "/01", ConnectionsPath + "/x", ConnectionsPath + "/1/more", ConnectionsPath} {
		if _, err := h.call(p, ConnectionInterface+".RemoveAddress", uint8(1)); errName(err) != ErrorNotFound {
			t.Errorf("RemoveAddress on %s: %v, want NotFound", p, err)
		}
		if p != ConnectionsPath {
			if _, err := h.call(p, introspectableInterface+".Introspect"); errName(err) != ErrorNotFound {
				t.Errorf("Introspect on %s: %v, want NotFound", p, err)
			}
		}
	}
	if calls := h.be.takeCalls(); len(calls) != 0 {
		t.Errorf("the backend was called: %v", calls)
	}
}

func TestErrorMapping(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	for _, tc := range []struct {
		err  error
		name string
	}{
		{service.ErrInvalidArguments, ErrorInvalidArguments},
		{service.ErrPermissionDenied, ErrorPermissionDenied},
		{service.ErrAlreadyControlled, ErrorAlreadyControlled},
		{service.ErrNotController, ErrorNotController},
		{service.ErrNotFound, ErrorNotFound},
		{service.ErrNotSupported, ErrorNotSupported},
		{service.ErrExists, ErrorExists},
		{service.ErrBusy, ErrorBusy},
		{service.ErrFailed, ErrorFailed},
		{errors.New("something else"), ErrorFailed},
		{context.DeadlineExceeded, ErrorFailed},
	} {
		err := fmt.Errorf("kernel says %q: %w", "Device or resource busy", tc.err)
		if got := ErrorName(err); got != tc.name {
			t.Errorf("ErrorName(%v) = %s, want %s", err, got, tc.name)
		}
		h.be.setErr(err)
		_, callErr := h.call(ConnectionPath(1), ConnectionInterface+".RemoveAddress", uint8(1))
		if errName(callErr) != tc.name || callErr.Error() != err.Error() {
			t.Errorf("backend error %v arrives as %s %q, want %s with the same text", err, errName(callErr), callErr, tc.name)
		}
	}
	if dbusError(nil) != nil {
		t.Error("dbusError(nil) is not nil")
	}
}

// denyAll refuses everyone.
type denyAll struct{}

func (denyAll) Authorize(_ context.Context, sender string, _ uint32, _ bool) error {
	return fmt.Errorf("%w: %s is not allowed", service.ErrPermissionDenied, sender)
}

// brokenAuth cannot decide.
type brokenAuth struct{}

func (brokenAuth) Authorize(context.Context, string, uint32, bool) error {
	return errors.New("polkit is not running")
}

func TestAuthorization(t *testing.T) {
	for _, tc := range []struct {
		auth Authorizer
		want string
	}{
		{denyAll{}, ErrorPermissionDenied},
		{brokenAuth{}, ErrorFailed},
	} {
		h := newHarness(t, Options{Authorizer: tc.auth}, withState)
		for _, m := range []struct {
			path   dbus.ObjectPath
			method string
			args   []any
		}{
			{ManagerPath, "FlushEndpoints", nil},
			{ManagerPath, "RegisterController", []any{dbus.ObjectPath("/ctl"), map[string]dbus.Variant{}}},
			{ManagerPath, "UnregisterController", []any{dbus.ObjectPath("/ctl")}},
			{ManagerPath, "AddEndpoint", []any{"10.0.0.1", uint16(0), []string{}, "", uint8(0)}},
			{ManagerPath, "RemoveEndpoint", []any{uint8(1)}},
			{ManagerPath, "SetEndpointFlags", []any{uint8(1), []string{}}},
			{ManagerPath, "SetLimits", []any{uint32(1), uint32(1)}},
			{ConnectionPath(1), "AnnounceAddress", []any{"10.0.0.1", uint16(0), uint8(0)}},
			{ConnectionPath(1), "RemoveAddress", []any{uint8(1)}},
			{ConnectionPath(1), "CreateSubflow", []any{"10.0.0.1", "10.0.0.2", uint16(1), map[string]dbus.Variant{}}},
			{ConnectionPath(1), "RemoveSubflow", []any{"10.0.0.1", uint16(1), "10.0.0.2", uint16(1)}},
			{ConnectionPath(1), "SetSubflowBackup", []any{"10.0.0.1", uint16(1), "10.0.0.2", uint16(1), false}},
		} {
			if _, err := h.call(m.path, methodName(m.path, m.method), m.args...); errName(err) != tc.want {
				t.Errorf("%T: %s: %v, want %s", tc.auth, m.method, err, tc.want)
			}
		}
		if calls := h.be.takeCalls(); len(calls) != 0 {
			t.Errorf("%T: the backend was called: %v", tc.auth, calls)
		}
		// Reads stay open.
		if _, err := h.obj(ManagerPath).GetProperty(ManagerInterface + ".Version"); err != nil {
			t.Errorf("%T: Get: %v", tc.auth, err)
		}
		if _, err := h.call(ManagerPath, ManagerInterface+".GetConnectionByToken", conn1.Token); err != nil {
			t.Errorf("%T: GetConnectionByToken: %v", tc.auth, err)
		}
	}
}

// TestInteractiveFlag checks that the caller's ALLOW_INTERACTIVE_AUTHORIZATION
// flag reaches the Authorizer.
func TestInteractiveFlag(t *testing.T) {
	auth := &allowAll{}
	h := newHarness(t, Options{Authorizer: auth}, nil)
	msg := &dbus.Message{
		Type:  dbus.TypeMethodCall,
		Flags: dbus.FlagAllowInteractiveAuthorization,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldDestination: dbus.MakeVariant(h.dest),
			dbus.FieldPath:        dbus.MakeVariant(ManagerPath),
			dbus.FieldInterface:   dbus.MakeVariant(ManagerInterface),
			dbus.FieldMember:      dbus.MakeVariant("FlushEndpoints"),
		},
	}
	if c := <-h.client.Send(msg, make(chan *dbus.Call, 1)).Done; c.Err != nil {
		t.Fatal(c.Err)
	}
	if asks := auth.requests(); len(asks) != 1 || !asks[0].Interactive {
		t.Errorf("authorization requests %+v, want one interactive", asks)
	}
}

// TestDefaultAuthorizer checks that without an Authorizer only UID 0 may
// call mutating methods: root here succeeds, nobody (a python3-dbus client
// run with setpriv) gets PermissionDenied and can still read.
func TestDefaultAuthorizer(t *testing.T) {
	pmtest.RequireRoot(t)
	python := requirePythonDBus(t)
	h := newHarness(t, Options{Authorizer: rootOnly{}}, withState)
	// rootOnly is what New uses without an Authorizer.
	if s, err := New(dialServer(t, h.bus), newFakeBackend(), Options{}); err != nil {
		t.Fatal(err)
	} else if _, ok := s.auth.(rootOnly); !ok {
		t.Errorf("the default Authorizer is %T", s.auth)
	} else {
		s.Close()
	}
	if _, err := h.call(ManagerPath, ManagerInterface+".FlushEndpoints"); err != nil {
		t.Errorf("root: FlushEndpoints: %v", err)
	}
	h.be.takeCalls()

	script := `
import dbus, sys
bus = dbus.bus.BusConnection(sys.argv[1])
mgr = bus.get_object("org.mptcp.PathManager1", "/org/mptcp/PathManager1")
props = mgr.GetAll("org.mptcp.PathManager1.Manager", dbus_interface="org.freedesktop.DBus.Properties")
print("version", props["Version"])
objs = mgr.GetManagedObjects(dbus_interface="org.freedesktop.DBus.ObjectManager")
print("objects", len(objs))
for method, args in (("FlushEndpoints", ()), ("SetLimits", (dbus.UInt32(1), dbus.UInt32(1)))):
    try:
        mgr.get_dbus_method(method, "org.mptcp.PathManager1.Manager")(*args)
        print(method, "ok")
    except dbus.exceptions.DBusException as e:
        print(method, e.get_dbus_name())
`
	out, err := h.bus.CommandAs(t, 65534, 65534, python, "-c", script, h.bus.Address()).CombinedOutput()
	if err != nil {
		t.Fatalf("python as nobody: %v\n%s", err, out)
	}
	want := "version 1.0-test\nobjects 2\nFlushEndpoints " + ErrorPermissionDenied + "\nSetLimits " + ErrorPermissionDenied + "\n"
	if string(out) != want {
		t.Errorf("nobody sees:\n%s\nwant:\n%s", out, want)
	}
	if calls := h.be.takeCalls(); len(calls) != 0 {
		t.Errorf("the backend was called for nobody: %v", calls)
	}
}

func TestDefaultAuthorizerUnit(t *testing.T) {
	if err := (rootOnly{}).Authorize(context.Background(), ":1.1", 0, false); err != nil {
		t.Errorf("uid 0 refused: %v", err)
	}
	for _, uid := range []uint32{1, 1000, 65534} {
		err := (rootOnly{}).Authorize(context.Background(), ":1.1", uid, true)
		if !errors.Is(err, service.ErrPermissionDenied) || !strings.Contains(err.Error(), fmt.Sprint(uid)) {
			t.Errorf("uid %d: %v, want a PermissionDenied naming the uid", uid, err)
		}
	}
}

// requirePythonDBus returns the path of a python3 that has the dbus module
// (the system's python3 first: another one on PATH may lack it), skipping (or failing in CI) the
// test when python3 or its dbus module is missing.
func requirePythonDBus(t *testing.T) string {
	t.Helper()
	for _, python := range []string{"/usr/bin/python3", "python3"} {
		if p, err := exec.LookPath(python); err == nil {
			if err := exec.Command(p, "-c", "import dbus").Run(); err == nil {
				return p
			}
		}
	}
	pmtest.Unavailable(t, "needs python3 with its dbus module (Debian: python3-dbus) at /usr/bin/python3 or on PATH")
	return ""
}

func TestRequestNameTaken(t *testing.T) {
	pmtest.RequireRoot(t)
	h := newHarness(t, Options{}, nil)
	other, err := New(dialServer(t, h.bus), newFakeBackend(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = other.RequestName(ctx)
	if !errors.Is(err, ErrNameTaken) || !strings.Contains(err.Error(), h.srvConn.Names()[0]) {
		t.Errorf("second RequestName: %v, want ErrNameTaken naming %s", err, h.srvConn.Names()[0])
	}
	// Asking again as the owner is fine.
	if err := h.srv.RequestName(ctx); err != nil {
		t.Errorf("RequestName by the owner: %v", err)
	}
}

// TestRequestNameDenied checks the error when the bus policy refuses the
// name. As root (whom the project's policy lets own it) it runs on a bus
// whose extra policy, loaded after the project's, takes that away again.
func TestRequestNameDenied(t *testing.T) {
	deny := dbustest.ExtraConfig(`<policy user="root"><deny own="` + BusName + `"/></policy>`)
	bus := dbustest.StartBus(t, deny)
	srv, err := New(dialServer(t, bus), newFakeBackend(), Options{Authorizer: &allowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	err = srv.RequestName(context.Background())
	if err == nil || errors.Is(err, ErrNameTaken) || !strings.Contains(err.Error(), BusName) {
		t.Errorf("RequestName as uid %d: %v, want a refusal naming %s", os.Geteuid(), err, BusName)
	}
}

func TestClose(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	sigs := h.subscribe(t)
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	h.srv.Publish(service.ConnectionAdded{Connection: conn1})
	if _, err := h.call(ManagerPath, propertiesInterface+".GetAll", ManagerInterface); err == nil {
		t.Error("the manager still answers after Close")
	}
	select {
	case s := <-sigs:
		t.Errorf("signal after Close: %v", s)
	case <-time.After(100 * time.Millisecond):
	}
}

// BenchmarkPublish measures Publish of a subflow event: mirror lookup, one
// signal written to the bus socket.
func BenchmarkPublish(b *testing.B) {
	bus := dbustest.StartBus(b)
	srv, err := New(dialServer(b, bus), newFakeBackend(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	srv.Publish(service.ConnectionAdded{Connection: conn1})
	n := service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowEstablished, Subflow: conn1.Subflows[1]}
	b.ReportAllocs()
	for b.Loop() {
		srv.Publish(n)
	}
}
