package dbusapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// dialServer connects a server's side to the bus as the daemon does
// (Connect: the server writes its signals itself).
func dialServer(tb testing.TB, bus *dbustest.Bus) *dbus.Conn {
	tb.Helper()
	conn, err := Connect(bus.Address())
	if err != nil {
		tb.Fatal(err)
	}
	if wireOf(conn) == nil {
		tb.Fatalf("Connect(%s) made no wire connection", bus.Address())
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// sampleConnection is a connection with every property set.
func sampleConnection() service.Connection {
	a := netip.MustParseAddr
	return service.Connection{
		ID: 7, Token: 0x8f2014e1, ServerSide: true, State: "established",
		LocalAddress: a("10.0.0.1"), LocalPort: 40000, RemoteAddress: a("2001:db8::2"), RemotePort: 443,
		DenyJoinID0: true,
		Subflows: []service.Subflow{
			{LocalID: 0, RemoteID: 0, LocalAddress: a("10.0.0.1"), LocalPort: 40000, RemoteAddress: a("10.0.1.2"), RemotePort: 443, Interface: "eth0"},
			{LocalID: 2, RemoteID: 1, LocalAddress: a("10.0.2.1"), LocalPort: 40001, RemoteAddress: a("10.0.1.2"), RemotePort: 443, Backup: true, Interface: "wlan0"},
		},
		RemoteAddresses:    []service.AnnouncedAddress{{ID: 3, Address: a("10.9.9.9"), Port: 8080}},
		AnnouncedAddresses: []service.AnnouncedAddress{},
	}
}

// wireCases are the messages the server sends, with their arguments as
// Publish and the emitter make them.
func wireCases() []struct {
	name string
	h    header
	args []any
} {
	c := sampleConnection()
	sf := subflowToWire(c.Subflows[1])
	mgr := managerProps(service.Manager{
		Version: "1.0", ControlMode: "builtin", Policy: "endpoints", KernelPathManager: "kernel",
		Endpoints: []policy.Endpoint{{Address: pm.Address{ID: 1, Addr: netip.MustParseAddr("10.0.0.1"), Flags: pm.FlagSubflow | pm.FlagBackup},
			Interface: "eth0", Origin: policy.OriginPolicy}},
		Limits:         service.Limits{Subflows: 4, AddAddrAccepted: 2},
		LocalAddresses: []service.LocalAddress{{Interface: "eth0", Address: netip.MustParseAddr("10.0.0.1")}},
	})
	sig := func(path dbus.ObjectPath, iface, member string) header {
		return header{typ: dbus.TypeSignal, serial: 42, path: path, iface: iface, member: member}
	}
	return []struct {
		name string
		h    header
		args []any
	}{
		{"InterfacesAdded", sig(ManagerPath, objectManagerInterface, "InterfacesAdded"), []any{ConnectionPath(c.ID), connectionObject(c)}},
		{"InterfacesAdded, encoded from the connection", sig(ManagerPath, objectManagerInterface, "InterfacesAdded"), []any{ConnectionPath(c.ID), connObject{&c}}},
		{"InterfacesAdded, a connection with nothing set", sig(ManagerPath, objectManagerInterface, "InterfacesAdded"), []any{ConnectionPath(1), connObject{&service.Connection{ID: 1}}}},
		{"InterfacesRemoved", sig(ManagerPath, objectManagerInterface, "InterfacesRemoved"), []any{ConnectionPath(c.ID), connectionInterfaces()}},
		{"PropertiesChanged connection", sig(ConnectionPath(c.ID), propertiesInterface, "PropertiesChanged"),
			[]any{ConnectionInterface, pick(connectionProps(c), []string{"State", "Subflows"}), []string{}}},
		{"PropertiesChanged manager", sig(ManagerPath, propertiesInterface, "PropertiesChanged"), []any{ManagerInterface, mgr, []string{}}},
		{"SubflowEstablished", sig(ConnectionPath(c.ID), ConnectionInterface, "SubflowEstablished"),
			[]any{sf.LocalID, sf.RemoteID, sf.LocalAddress, sf.LocalPort, sf.RemoteAddress, sf.RemotePort, sf.Backup, sf.Interface}},
		{"SubflowClosed", sig(ConnectionPath(c.ID), ConnectionInterface, "SubflowClosed"),
			[]any{sf.LocalID, sf.RemoteID, sf.LocalAddress, sf.LocalPort, sf.RemoteAddress, sf.RemotePort, sf.Backup, sf.Interface, uint32(110), uint32(1)}},
		{"AddressAnnounced", sig(ConnectionPath(c.ID), ConnectionInterface, "AddressAnnounced"), []any{uint8(3), "10.9.9.9", uint16(0)}},
		{"AddressRemoved", sig(ConnectionPath(c.ID), ConnectionInterface, "AddressRemoved"), []any{uint8(3)}},
		{"no arguments", sig("/a", "org.example.T", "Nothing"), nil},
		{"basic types", sig("/a/b_c", "org.example.T", "Basic"),
			[]any{int16(-2), int32(-3), int64(-4), uint64(1 << 40), 1.5, dbus.ObjectPath("/x"), []dbus.ObjectPath{"/x", "/y"}, dbus.MakeVariant(dbus.MakeVariant(uint8(1)))}},
		{"GetManagedObjects reply", header{typ: dbus.TypeMethodReply, serial: 43, replySerial: 9, destination: ":1.42"},
			[]any{map[dbus.ObjectPath]map[string]map[string]dbus.Variant{ConnectionPath(c.ID): connectionObject(c), ConnectionPath(8): connectionObject(c)}}},
		{"GetManagedObjects reply, encoded from the connections", header{typ: dbus.TypeMethodReply, serial: 43, replySerial: 9, destination: ":1.42"},
			[]any{managedObjects{c, {ID: 8}, {ID: 12345678901}}}},
		{"GetManagedObjects reply, no connections", header{typ: dbus.TypeMethodReply, serial: 43, replySerial: 9, destination: ":1.42"},
			[]any{managedObjects{}}},
		{"GetStatistics reply", header{typ: dbus.TypeMethodReply, serial: 44, replySerial: 10, destination: ":1.42"},
			[]any{statsReply{{id: 3, st: fullStats()}, {id: 7}, {id: 9, st: ConnStats{PID: 12, Command: "curl", Unit: "a.service"}}}}},
		{"GetStatistics reply, no connections", header{typ: dbus.TypeMethodReply, serial: 44, replySerial: 10, destination: ":1.42"},
			[]any{statsReply{}}},
	}
}

// TestWireRoundTrip: every message the server writes itself decodes, with
// godbus's decoder, to the same message godbus would have written.
func TestWireRoundTrip(t *testing.T) {
	for _, tc := range wireCases() {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("xyz") // a message after others in the buffer: alignment is its own
			b, err := appendMessage(prefix, tc.h, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := dbus.DecodeMessage(bytes.NewReader(b[len(prefix):]))
			if err != nil {
				t.Fatalf("godbus does not decode it: %v", err)
			}
			want := godbusMessage(t, tc.h, tc.args)
			if got.Type != want.Type || got.Flags != want.Flags || got.Serial() != want.Serial() {
				t.Errorf("type/flags/serial %v/%v/%d, want %v/%v/%d", got.Type, got.Flags, got.Serial(), want.Type, want.Flags, want.Serial())
			}
			if !reflect.DeepEqual(got.Headers, want.Headers) {
				t.Errorf("headers\n got %v\nwant %v", got.Headers, want.Headers)
			}
			if !reflect.DeepEqual(got.Body, want.Body) {
				t.Errorf("body\n got %#v\nwant %#v", got.Body, want.Body)
			}
		})
	}
}

// godbusMessage is the message godbus writes for h and args, as godbus
// reads it back.
func godbusMessage(t *testing.T, h header, args []any) *dbus.Message {
	t.Helper()
	m, err := dbus.DecodeMessage(bytes.NewReader(encodeGodbus(t, h, args)))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func encodeGodbus(t *testing.T, h header, args []any) []byte {
	t.Helper()
	args = toGodbus(args)
	m := &dbus.Message{Type: h.typ, Flags: h.flags, Headers: map[dbus.HeaderField]dbus.Variant{}, Body: args}
	if h.path != "" {
		m.Headers[dbus.FieldPath] = dbus.MakeVariant(h.path)
	}
	if h.iface != "" {
		m.Headers[dbus.FieldInterface] = dbus.MakeVariant(h.iface)
	}
	if h.member != "" {
		m.Headers[dbus.FieldMember] = dbus.MakeVariant(h.member)
	}
	if h.replySerial != 0 {
		m.Headers[dbus.FieldReplySerial] = dbus.MakeVariant(h.replySerial)
	}
	if h.destination != "" {
		m.Headers[dbus.FieldDestination] = dbus.MakeVariant(h.destination)
	}
	if len(args) > 0 {
		m.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(args...))
	}
	var buf bytes.Buffer
	// Only a godbus connection sets a message's serial: patch it in.
	if err := m.EncodeTo(&buf, binary.LittleEndian); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	b[8], b[9], b[10], b[11] = byte(h.serial), byte(h.serial>>8), byte(h.serial>>16), byte(h.serial>>24)
	return b
}

// TestWireRefuses: what the bus would refuse is an error, and nothing is
// appended; a type the encoder does not know is errWireType (the emitter
// then sends through godbus).
func TestWireRefuses(t *testing.T) {
	h := header{typ: dbus.TypeSignal, serial: 1, path: "/a", iface: "org.example.T", member: "M"}
	for name, args := range map[string][]any{
		"invalid UTF-8":       {"a\xffb"},
		"NUL in a string":     {"a\x00b"},
		"invalid object path": {dbus.ObjectPath("a//b")},
		"in a variant":        {map[string]dbus.Variant{"k": dbus.MakeVariant("\xff")}},
		"an interface name":   {subflowWire{Interface: "eth\xff"}},
	} {
		b, err := appendMessage([]byte("x"), h, args...)
		if err == nil || errors.Is(err, errWireType) || string(b) != "x" {
			t.Errorf("%s: err %v, buffer %q", name, err, b)
		}
	}
	for name, args := range map[string][]any{
		"a struct":          {struct{ A int }{1}},
		"int":               {1},
		"in a variant":      {dbus.MakeVariant([]int{1})},
		"in a property map": {map[string]dbus.Variant{"k": dbus.MakeVariant(struct{ A int32 }{1})}},
	} {
		b, err := appendMessage([]byte("x"), h, args...)
		if !errors.Is(err, errWireType) || string(b) != "x" {
			t.Errorf("%s: err %v, buffer %q", name, err, b)
		}
	}
}

// FuzzWire: strings and numbers of every kind in a subflow signal and a
// property map: either both encoders refuse, or godbus reads back what it
// would have written.
func FuzzWire(f *testing.F) {
	f.Add("10.0.0.1", "eth0", "State", uint8(1), uint16(443), uint32(7), true)
	f.Add("a\xff", "", "\x00", uint8(0), uint16(0), uint32(0), false)
	f.Fuzz(func(t *testing.T, addr, iface, key string, id uint8, port uint16, n uint32, backup bool) {
		args := []any{id, id, addr, port, addr, port, backup, iface,
			map[string]dbus.Variant{key: dbus.MakeVariant(n), "S": dbus.MakeVariant([]subflowWire{{id, id, addr, port, iface, port, backup, iface}})},
			connObject{&service.Connection{ID: uint64(n), State: key, Subflows: []service.Subflow{{LocalID: id, Interface: iface, LocalPort: port}}}},
			statsReply{{id: uint64(n), st: ConnStats{Cgroup: key, Unit: addr, PID: int(port), Command: iface, UID: n,
				Subflows: []SubflowStats{{Interface: iface, Cwnd: n, Backup: backup}}}}}}
		h := header{typ: dbus.TypeSignal, serial: n | 1, path: "/a", iface: "org.example.T", member: "M"}
		b, err := appendMessage(nil, h, args...)
		var godbusErr error
		var want []byte
		func() {
			defer func() {
				if r := recover(); r != nil {
					godbusErr = errors.New("panic")
				}
			}()
			m := &dbus.Message{Type: h.typ, Headers: map[dbus.HeaderField]dbus.Variant{
				dbus.FieldPath: dbus.MakeVariant(h.path), dbus.FieldInterface: dbus.MakeVariant(h.iface),
				dbus.FieldMember: dbus.MakeVariant(h.member), dbus.FieldSignature: dbus.MakeVariant(dbus.SignatureOf(toGodbus(args)...))}, Body: toGodbus(args)}
			var buf bytes.Buffer
			godbusErr = m.EncodeTo(&buf, binary.LittleEndian)
			want = buf.Bytes()
		}()
		if (err != nil) != (godbusErr != nil) {
			t.Fatalf("wire err %v, godbus err %v", err, godbusErr)
		}
		if err != nil {
			return
		}
		got, err := dbus.DecodeMessage(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("godbus does not decode it: %v", err)
		}
		w, err := dbus.DecodeMessage(bytes.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Body, w.Body) || !reflect.DeepEqual(got.Headers, w.Headers) {
			t.Fatalf("got %v %v, want %v %v", got.Headers, got.Body, w.Headers, w.Body)
		}
	})
}

// BenchmarkWireSignal compares the encoding of a new connection's
// InterfacesAdded by this encoder and by godbus (which the emitter used).
func BenchmarkWireSignal(b *testing.B) {
	c := sampleConnection()
	h := header{typ: dbus.TypeSignal, serial: 42, path: ManagerPath, iface: objectManagerInterface, member: "InterfacesAdded"}
	args := []any{ConnectionPath(c.ID), connObject{&c}}
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _ = appendMessage(buf[:0], h, args...)
		}
	})
	b.Run("godbus", func(b *testing.B) {
		b.ReportAllocs()
		args := toGodbus(args)
		m := &dbus.Message{Type: h.typ, Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldPath: dbus.MakeVariant(h.path), dbus.FieldInterface: dbus.MakeVariant(h.iface),
			dbus.FieldMember: dbus.MakeVariant(h.member), dbus.FieldSignature: dbus.MakeVariant(dbus.SignatureOf(args...))}, Body: args}
		var buf bytes.Buffer
		for b.Loop() {
			buf.Reset()
			m.CountFds() // as godbus's transport does before each send
			m.EncodeTo(&buf, binary.LittleEndian)
		}
	})
}

// TestVariantOf: the variants Publish makes without reflection carry the
// signature godbus's MakeVariant gives.
func TestVariantOf(t *testing.T) {
	props := connectionProps(sampleConnection())
	for _, tc := range wireCases() {
		if tc.name == "PropertiesChanged manager" {
			for k, v := range tc.args[1].(map[string]dbus.Variant) {
				props["manager "+k] = v
			}
		}
	}
	if len(props) != len(connectionPropNames)+10 {
		t.Fatalf("%d properties", len(props))
	}
	for k, v := range props {
		if want := dbus.MakeVariant(v.Value()).Signature(); v.Signature() != want {
			t.Errorf("%s: signature %s, want %s", k, v.Signature(), want)
		}
	}
}

// throughGodbus returns v as a godbus client reads it: encoded and decoded
// by godbus.
func throughGodbus(t *testing.T, v any) any {
	t.Helper()
	return godbusMessage(t, header{typ: dbus.TypeSignal, serial: 1, path: "/a", iface: "org.example.T", member: "M"}, []any{v}).Body[0]
}

// fullStats is a connection's statistics with every field set.
func fullStats() ConnStats {
	sf := func(l, r string, backup bool) SubflowStats {
		return SubflowStats{Local: netip.MustParseAddrPort(l), Remote: netip.MustParseAddrPort(r), Interface: "eth0", Backup: backup,
			RTT: 1234 * time.Microsecond, RTTVar: 56 * time.Microsecond, Cwnd: 10,
			BytesSent: 1 << 33, BytesAcked: 1<<33 - 5, BytesReceived: 77, BytesRetrans: 3, Retransmits: 2}
	}
	return ConnStats{BytesSent: 1 << 40, BytesReceived: 2, BytesAcked: 3, BytesRetrans: 4, Retransmits: 5,
		LastDataSent: 6 * time.Millisecond, LastDataRecv: 7 * time.Millisecond, LastAckRecv: 8 * time.Millisecond,
		CgroupID: 99, Cgroup: "/system.slice/x.service", Unit: "x.service", UID: 1000, PID: 4321, Command: "x",
		Rule: "ssh", Policy: "none",
		Subflows: []SubflowStats{sf("10.0.0.1:1000", "10.0.1.1:80", false), sf("[fd00::1]:1001", "[fd00::2]:80", true)}}
}
