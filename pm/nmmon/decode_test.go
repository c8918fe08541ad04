package nmmon

import (
	"slices"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
)

func v(x any) dbus.Variant { return dbus.MakeVariant(x) }

// goodDevice returns the properties of an activated Ethernet device.
func goodDevice() map[string]dbus.Variant {
	return map[string]dbus.Variant{
		"Interface":        v("eth0"),
		"IpInterface":      v("eth0"),
		"Managed":          v(true),
		"State":            v(uint32(100)),
		"Metered":          v(uint32(3)),
		"ActiveConnection": v(dbus.ObjectPath("/org/freedesktop/NetworkManager/ActiveConnection/4")),
		"Driver":           v("veth"), // others are ignored
		"Ip4Config":        v(dbus.ObjectPath("/org/freedesktop/NetworkManager/IP4Config/2")),
	}
}

func TestDecodeDevice(t *testing.T) {
	with := func(f func(m map[string]dbus.Variant)) map[string]dbus.Variant {
		m := goodDevice()
		f(m)
		return m
	}
	good := Device{Interface: "eth0", IPInterface: "eth0", Managed: true, Activated: true, Metered: MeteredGuessYes}
	for _, tc := range []struct {
		name     string
		props    map[string]dbus.Variant
		want     Device
		active   dbus.ObjectPath
		problems []string // substrings, one per problem
	}{
		{"good", goodDevice(), good, "/org/freedesktop/NetworkManager/ActiveConnection/4", nil},
		{"no active connection", with(func(m map[string]dbus.Variant) {
			m["ActiveConnection"] = v(dbus.ObjectPath("/"))
			m["State"] = v(uint32(30))
			m["IpInterface"] = v("")
		}), Device{Interface: "eth0", Managed: true, Metered: MeteredGuessYes}, "", nil},
		{"activating is not activated", with(func(m map[string]dbus.Variant) { m["State"] = v(uint32(70)) }),
			Device{Interface: "eth0", IPInterface: "eth0", Managed: true, Metered: MeteredGuessYes}, "/org/freedesktop/NetworkManager/ActiveConnection/4", nil},
		{"no IpInterface is fine (optional)", with(func(m map[string]dbus.Variant) { delete(m, "IpInterface") }),
			Device{Interface: "eth0", Managed: true, Activated: true, Metered: MeteredGuessYes}, "/org/freedesktop/NetworkManager/ActiveConnection/4", nil},
		{"nil map", nil, Device{}, "", []string{"no property Interface", "no property Managed", "no property State", "no property Metered", "no property ActiveConnection"}},
		{"interface of another type", with(func(m map[string]dbus.Variant) { m["Interface"] = v(uint32(7)) }),
			Device{IPInterface: "eth0", Managed: true, Activated: true, Metered: MeteredGuessYes}, "/org/freedesktop/NetworkManager/ActiveConnection/4",
			[]string{"property Interface has type u, want s"}},
		{"managed as a string", with(func(m map[string]dbus.Variant) { m["Managed"] = v("yes") }),
			Device{Interface: "eth0", IPInterface: "eth0", Activated: true, Metered: MeteredGuessYes}, "/org/freedesktop/NetworkManager/ActiveConnection/4",
			[]string{"property Managed has type s, want b"}},
		{"state and metered as int32", with(func(m map[string]dbus.Variant) {
			m["State"] = v(int32(100))
			m["Metered"] = v(int32(1))
		}), Device{Interface: "eth0", IPInterface: "eth0", Managed: true}, "/org/freedesktop/NetworkManager/ActiveConnection/4",
			[]string{"property State has type i, want u", "property Metered has type i, want u"}},
		{"active connection as a string", with(func(m map[string]dbus.Variant) { m["ActiveConnection"] = v("/x") }),
			good, "", []string{"property ActiveConnection has type s, want o"}},
		{"active connection not a path", with(func(m map[string]dbus.Variant) { m["ActiveConnection"] = v(dbus.ObjectPath("x/")) }),
			good, "", []string{`property ActiveConnection "x/" is not an object path`}},
		{"nested variant", with(func(m map[string]dbus.Variant) { m["Managed"] = v(v(true)) }),
			Device{Interface: "eth0", IPInterface: "eth0", Activated: true, Metered: MeteredGuessYes}, "/org/freedesktop/NetworkManager/ActiveConnection/4",
			[]string{"property Managed has type v, want b"}},
		{"unknown metered value passes through", with(func(m map[string]dbus.Variant) { m["Metered"] = v(uint32(9)) }),
			Device{Interface: "eth0", IPInterface: "eth0", Managed: true, Activated: true, Metered: 9}, "/org/freedesktop/NetworkManager/ActiveConnection/4", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, problems := decodeDevice(tc.props)
			if info.dev != tc.want {
				t.Errorf("device = %+v\nwant     %+v", info.dev, tc.want)
			}
			if info.active != tc.active {
				t.Errorf("active = %q, want %q", info.active, tc.active)
			}
			if len(problems) != len(tc.problems) {
				t.Fatalf("problems = %q, want %d like %q", problems, len(tc.problems), tc.problems)
			}
			for i, p := range tc.problems {
				if !strings.Contains(problems[i], p) {
					t.Errorf("problem %d = %q, want %q", i, problems[i], p)
				}
			}
		})
	}
}

func TestDecodeMPTCP(t *testing.T) {
	settings := func(conn map[string]dbus.Variant) map[string]map[string]dbus.Variant {
		return map[string]map[string]dbus.Variant{
			"connection": conn,
			"ipv4":       {"method": v("manual")},
		}
	}
	base := func(kv ...any) map[string]dbus.Variant {
		m := map[string]dbus.Variant{"id": v("a"), "type": v("802-3-ethernet"), "interface-name": v("c0")}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = v(kv[i+1])
		}
		return m
	}
	for _, tc := range []struct {
		name     string
		settings map[string]map[string]dbus.Variant
		want     MPTCPSetting
		problem  string
	}{
		{"absent flags are the default", settings(base()), MPTCPSetting{Known: true}, ""},
		{"subflow", settings(base("mptcp-flags", uint32(0x20))), MPTCPSetting{Known: true, Flags: MPTCPSubflow}, ""},
		{"subflow without default route", settings(base("mptcp-flags", uint32(0x28))),
			MPTCPSetting{Known: true, Flags: MPTCPSubflow | MPTCPAlsoWithoutDefaultRoute}, ""},
		{"disabled", settings(base("mptcp-flags", uint32(1))), MPTCPSetting{Known: true, Disabled: true, Flags: MPTCPDisabled}, ""},
		{"explicit zero", settings(base("mptcp-flags", uint32(0))), MPTCPSetting{Known: true}, ""},
		{"flags as int32", settings(base("mptcp-flags", int32(0x20))), MPTCPSetting{}, "has type i, want u"},
		{"flags as string", settings(base("mptcp-flags", "subflow")), MPTCPSetting{}, "has type s, want u"},
		{"no connection setting", map[string]map[string]dbus.Variant{"ipv4": {}}, MPTCPSetting{}, "no connection setting (settings: [ipv4])"},
		{"nil", nil, MPTCPSetting{}, "no connection setting"},
		{"empty connection setting", settings(nil), MPTCPSetting{Known: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, problem := decodeMPTCP(tc.settings)
			if got != tc.want {
				t.Errorf("decodeMPTCP = %+v, want %+v", got, tc.want)
			}
			if (problem == "") != (tc.problem == "") || !strings.Contains(problem, tc.problem) {
				t.Errorf("problem = %q, want %q", problem, tc.problem)
			}
		})
	}
}

func TestDecodeConnectionPath(t *testing.T) {
	for _, tc := range []struct {
		v       dbus.Variant
		want    dbus.ObjectPath
		problem bool
	}{
		{v(dbus.ObjectPath("/org/freedesktop/NetworkManager/Settings/3")), "/org/freedesktop/NetworkManager/Settings/3", false},
		{v(dbus.ObjectPath("/")), "", true},
		{v("/org/freedesktop/NetworkManager/Settings/3"), "", true},
		{v(uint32(1)), "", true},
		{dbus.Variant{}, "", true},
	} {
		got, problem := decodeConnectionPath(tc.v)
		if got != tc.want || (problem != "") != tc.problem {
			t.Errorf("decodeConnectionPath(%v) = %q, %q", tc.v, got, problem)
		}
	}
}

func TestRelevant(t *testing.T) {
	const nm = ":1.7"
	props := func(iface string, changed map[string]dbus.Variant, invalidated []string) []any {
		if changed == nil {
			changed = map[string]dbus.Variant{}
		}
		if invalidated == nil {
			invalidated = []string{}
		}
		return []any{iface, changed, invalidated}
	}
	dev := dbus.ObjectPath("/org/freedesktop/NetworkManager/Devices/2")
	for _, tc := range []struct {
		name  string
		sig   *dbus.Signal
		owner string
		want  bool
	}{
		{"nil", nil, nm, false},
		{"NM appears", &dbus.Signal{Sender: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus", Name: "org.freedesktop.DBus.NameOwnerChanged",
			Body: []any{BusName, "", ":1.9"}}, "", true},
		{"NM leaves", &dbus.Signal{Sender: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus", Name: "org.freedesktop.DBus.NameOwnerChanged",
			Body: []any{BusName, nm, ""}}, nm, true},
		{"another name", &dbus.Signal{Sender: "org.freedesktop.DBus", Path: "/org/freedesktop/DBus", Name: "org.freedesktop.DBus.NameOwnerChanged",
			Body: []any{"org.example", "", ":1.9"}}, nm, false},
		{"forged NameOwnerChanged", &dbus.Signal{Sender: ":1.50", Path: "/org/freedesktop/DBus", Name: "org.freedesktop.DBus.NameOwnerChanged",
			Body: []any{BusName, nm, ""}}, nm, false},
		{"empty NameOwnerChanged", &dbus.Signal{Sender: "org.freedesktop.DBus", Name: "org.freedesktop.DBus.NameOwnerChanged"}, nm, false},
		{"device added", &dbus.Signal{Sender: nm, Path: managerPath, Name: memberDeviceAdded, Body: []any{dev}}, nm, true},
		{"device removed", &dbus.Signal{Sender: nm, Path: managerPath, Name: memberDeviceRemoved, Body: []any{dev}}, nm, true},
		{"device added by someone else", &dbus.Signal{Sender: ":1.50", Path: managerPath, Name: memberDeviceAdded, Body: []any{dev}}, nm, false},
		{"device added, owner not known yet", &dbus.Signal{Sender: ":1.50", Path: managerPath, Name: memberDeviceAdded, Body: []any{dev}}, "", true},
		{"manager state", &dbus.Signal{Sender: nm, Path: managerPath, Name: managerIface + ".StateChanged", Body: []any{uint32(70)}}, nm, false},
		{"profile updated", &dbus.Signal{Sender: nm, Path: "/org/freedesktop/NetworkManager/Settings/1", Name: memberUpdated}, nm, true},
		{"device state", &dbus.Signal{Sender: nm, Path: dev, Name: memberPropertiesChanged,
			Body: props(deviceIface, map[string]dbus.Variant{"State": v(uint32(100)), "StateReason": v("x")}, nil)}, nm, true},
		{"device metered invalidated", &dbus.Signal{Sender: nm, Path: dev, Name: memberPropertiesChanged,
			Body: props(deviceIface, nil, []string{"Metered"})}, nm, true},
		{"device statistics", &dbus.Signal{Sender: nm, Path: dev, Name: memberPropertiesChanged,
			Body: props(deviceIface, map[string]dbus.Variant{"Ip4Connectivity": v(uint32(4))}, nil)}, nm, false},
		{"device of other interface", &dbus.Signal{Sender: nm, Path: dev, Name: memberPropertiesChanged,
			Body: props("org.freedesktop.NetworkManager.Device.Veth", map[string]dbus.Variant{"State": v(uint32(1))}, nil)}, nm, false},
		{"manager devices", &dbus.Signal{Sender: nm, Path: managerPath, Name: memberPropertiesChanged,
			Body: props(managerIface, map[string]dbus.Variant{"AllDevices": v([]dbus.ObjectPath{dev})}, nil)}, nm, true},
		{"manager connectivity", &dbus.Signal{Sender: nm, Path: managerPath, Name: memberPropertiesChanged,
			Body: props(managerIface, map[string]dbus.Variant{"Connectivity": v(uint32(4))}, nil)}, nm, false},
		{"active connection", &dbus.Signal{Sender: nm, Path: "/org/freedesktop/NetworkManager/ActiveConnection/1", Name: memberPropertiesChanged,
			Body: props(activeIface, map[string]dbus.Variant{"State": v(uint32(2))}, nil)}, nm, false},
		{"odd PropertiesChanged", &dbus.Signal{Sender: nm, Path: dev, Name: memberPropertiesChanged, Body: []any{uint32(1)}}, nm, true},
		{"PropertiesChanged without maps", &dbus.Signal{Sender: nm, Path: dev, Name: memberPropertiesChanged, Body: []any{deviceIface}}, nm, true},
		{"outside NM's tree", &dbus.Signal{Sender: nm, Path: "/org/freedesktop/NetworkManagerX", Name: memberUpdated}, nm, false},
		{"other program's signal", &dbus.Signal{Sender: ":1.3", Path: "/org/mptcp/PathManager1", Name: memberPropertiesChanged,
			Body: props(deviceIface, map[string]dbus.Variant{"State": v(uint32(100))}, nil)}, "", false},
	} {
		if got := relevant(tc.sig, tc.owner); got != tc.want {
			t.Errorf("%s: relevant = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSendKeepsLatest checks the channel's contract without a bus: it
// holds the latest state only, the watcher never blocks on it, and a state
// equal to the last sent is not sent again.
func TestSendKeepsLatest(t *testing.T) {
	wr := &watcher{w: &Watcher{states: make(chan State, 1)}, log: discard()}
	s1 := State{}
	s2 := State{Running: true, Devices: map[string]Device{"c0": {Interface: "c0"}}}
	s3 := State{Running: true, Devices: map[string]Device{"c0": {Interface: "c0", Managed: true}}}
	wr.send(s1)
	wr.send(s2)
	wr.send(s3) // nobody reads: must not block
	if got := <-wr.w.states; !got.Equal(s3) {
		t.Fatalf("received %v, want the latest %v", got, s3)
	}
	wr.send(State{Running: true, Devices: map[string]Device{"c0": {Interface: "c0", Managed: true}}})
	select {
	case got := <-wr.w.states:
		t.Fatalf("an equal state was sent again: %v", got)
	default:
	}
	wr.send(s1)
	if got := <-wr.w.states; !got.Equal(s1) {
		t.Fatalf("received %v, want %v", got, s1)
	}
	// The first state is sent even when it is the zero State.
	wr = &watcher{w: &Watcher{states: make(chan State, 1)}, log: discard()}
	wr.send(State{})
	if got := <-wr.w.states; got.Running {
		t.Fatalf("first state %v", got)
	}
}

// TestRank checks which of several devices of one name is kept.
func TestRank(t *testing.T) {
	port := Device{Interface: "br0", Managed: true, Activated: true}
	iface := Device{Interface: "br0", IPInterface: "br0", Managed: true, Activated: true}
	unmanaged := Device{Interface: "br0"}
	ds := []Device{unmanaged, port, iface}
	slices.SortFunc(ds, func(a, b Device) int { return rank(b) - rank(a) })
	if ds[0] != iface || ds[2] != unmanaged {
		t.Errorf("order %v", ds)
	}
}
