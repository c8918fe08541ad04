package dbusapi

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// TestAppendPropertiesChanged: the PropertiesChanged encoder writes what
// appendMessage writes for the same arguments.
func TestAppendPropertiesChanged(t *testing.T) {
	h := header{typ: dbus.TypeSignal, serial: 7, path: "/org/mptcp/PathManager1/connection/12",
		iface: propertiesInterface, member: "PropertiesChanged"}
	for _, props := range []map[string]dbus.Variant{
		{"State": dbus.MakeVariant("established")},
		{"Subflows": dbus.MakeVariant([]string{"a", "b"})},
		{"Count": dbus.MakeVariant(uint32(3))},
	} {
		prefix := []byte("xyz") // a message after others in the buffer
		want, err := appendMessage(bytes.Clone(prefix), h, ConnectionInterface, props, []string{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendPropertiesChanged(bytes.Clone(prefix), h, ConnectionInterface, props)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%v:\n got %x\nwant %x", props, got, want)
		}
	}
	if _, err := appendPropertiesChanged(nil, h, "bad\x00iface", map[string]dbus.Variant{}); err == nil {
		t.Error("an interface name with NUL encoded")
	}
}

// TestAppendConnChanged: a connection's PropertiesChanged encoded from
// the connection reads back, with godbus's decoder, as the one made from
// connectionPropsNamed's map, for every property alone, all of them, and
// some together; and a connection with nothing set.
func TestAppendConnChanged(t *testing.T) {
	h := header{typ: dbus.TypeSignal, serial: 7, path: ConnectionPath(1), iface: propertiesInterface, member: "PropertiesChanged"}
	masks := []connPropMask{allConnProps, connPropsMask([]string{"State", "Subflows"}), connPropsMask([]string{"LocalAddress", "RemotePort", "AnnouncedAddresses"})}
	for i := range connectionPropNames {
		masks = append(masks, 1<<i)
	}
	for _, c := range []service.Connection{conn1, conn2} {
		for _, m := range masks {
			prefix := []byte("xyz") // a message after others in the buffer
			got, err := appendConnChanged(bytes.Clone(prefix), h, &c, m)
			if err != nil {
				t.Fatal(err)
			}
			want, err := appendMessage(nil, h, ConnectionInterface, connectionPropsNamed(c, m.names()), []string{})
			if err != nil {
				t.Fatal(err)
			}
			gm, err := dbus.DecodeMessage(bytes.NewReader(got[len(prefix):]))
			if err != nil {
				t.Fatalf("%v: godbus does not decode it: %v", m.names(), err)
			}
			wm, err := dbus.DecodeMessage(bytes.NewReader(want))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gm.Body, wm.Body) || !reflect.DeepEqual(gm.Headers, wm.Headers) {
				t.Errorf("connection %d, %v:\n got %v\nwant %v", c.ID, m.names(), gm.Body, wm.Body)
			}
		}
	}
	if got := connPropsMask([]string{"State", "Nonesuch"}).names(); !reflect.DeepEqual(got, []string{"State"}) {
		t.Errorf("connPropsMask of a name it does not know: %v", got)
	}
}

// TestAppendSubflowSignal: a subflow signal encoded from its subflow is
// what appendMessage writes for its arguments, byte for byte; an
// interface name that is not UTF-8 is refused as appendMessage refuses it.
func TestAppendSubflowSignal(t *testing.T) {
	h := header{typ: dbus.TypeSignal, serial: 9, path: ConnectionPath(1), iface: ConnectionInterface, member: "SubflowClosed"}
	for _, x := range []subflowSig{
		{sf: conn1.Subflows[0]}, {sf: conn1.Subflows[1]}, {},
		{sf: conn1.Subflows[1], closed: true, errno: 104, reason: 3},
	} {
		prefix := []byte("xyz")
		got, err := appendSubflowSignal(bytes.Clone(prefix), h, &x)
		if err != nil {
			t.Fatal(err)
		}
		want, err := appendMessage(bytes.Clone(prefix), h, x.args()...)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%+v:\n got %x\nwant %x", x, got, want)
		}
	}
	bad := subflowSig{sf: service.Subflow{Interface: "c\xff1"}}
	if b, err := appendSubflowSignal([]byte("xyz"), h, &bad); err == nil || string(b) != "xyz" {
		t.Errorf("an interface name that is not UTF-8: %q, %v", b, err)
	}
}

// TestValidPath: validPath agrees with godbus's ObjectPath.IsValid.
func TestValidPath(t *testing.T) {
	for _, p := range []string{"", "/", "//", "/a", "/a/", "a", "/a//b", "/org/mptcp/PathManager1",
		"/org/mptcp/PathManager1/connection/123", "/a-b", "/a.b", "/é", "/A_z/0_9", "/a/b/c/d", "/ a"} {
		if got, want := validPath(p), dbus.ObjectPath(p).IsValid(); got != want {
			t.Errorf("validPath(%q) = %v, IsValid says %v", p, got, want)
		}
	}
}

// TestSignalAllocations: encoding a connection signal and a
// PropertiesChanged allocates nothing once the buffer has grown.
func TestSignalAllocations(t *testing.T) {
	buf := make([]byte, 0, 4096)
	path := ConnectionPath(12)
	props := map[string]dbus.Variant{"State": dbus.MakeVariant("established")}
	args := []any{uint8(1), uint8(2), "10.0.0.1", uint16(80), "10.0.0.2", uint16(443), false, "eth0"}
	allocs := testing.AllocsPerRun(100, func() {
		h := header{typ: dbus.TypeSignal, serial: 1, path: path, iface: ConnectionInterface, member: "SubflowEstablished"}
		b, err := appendMessage(buf[:0], h, args...)
		if err != nil {
			t.Fatal(err)
		}
		h.iface, h.member = propertiesInterface, "PropertiesChanged"
		if _, err := appendPropertiesChanged(b, h, ConnectionInterface, props); err != nil {
			t.Fatal(err)
		}
		if _, err := appendConnChanged(b, h, &conn1, allConnProps); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per signal pair, want 0", allocs)
	}
}
