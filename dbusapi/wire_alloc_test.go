package dbusapi

import (
	"bytes"
	"testing"

	"github.com/godbus/dbus/v5"
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
	})
	if allocs != 0 {
		t.Errorf("%v allocations per signal pair, want 0", allocs)
	}
}
