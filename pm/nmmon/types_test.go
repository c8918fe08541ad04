package nmmon

import "testing"

func TestMPTCPFlagsString(t *testing.T) {
	for _, tc := range []struct {
		f    MPTCPFlags
		want string
	}{
		{0, "default"},
		{MPTCPDisabled, "disabled"},
		{MPTCPSubflow, "subflow"},
		{MPTCPEnabled | MPTCPSignal | MPTCPBackup, "enabled,signal,backup"},
		{MPTCPSubflow | MPTCPAlsoWithoutDefaultRoute, "also-without-default-route,subflow"},
		{MPTCPAlsoWithoutSysctl | MPTCPFullmesh, "also-without-sysctl,fullmesh"},
		{0x100 | MPTCPSubflow, "subflow,0x100"},
	} {
		if got := tc.f.String(); got != tc.want {
			t.Errorf("MPTCPFlags(%#x).String() = %q, want %q", uint32(tc.f), got, tc.want)
		}
	}
}

// TestMPTCPFlagValues pins the values to NetworkManager's NM_MPTCP_FLAGS_*.
func TestMPTCPFlagValues(t *testing.T) {
	want := []uint32{0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80}
	got := []MPTCPFlags{MPTCPDisabled, MPTCPEnabled, MPTCPAlsoWithoutSysctl, MPTCPAlsoWithoutDefaultRoute,
		MPTCPSignal, MPTCPSubflow, MPTCPBackup, MPTCPFullmesh}
	for i := range want {
		if uint32(got[i]) != want[i] {
			t.Errorf("flag %d = %#x, want %#x", i, uint32(got[i]), want[i])
		}
	}
}

func TestMetered(t *testing.T) {
	for _, tc := range []struct {
		m         Metered
		name      string
		expensive bool
	}{
		{0, "unknown", false},
		{1, "yes", true},
		{2, "no", false},
		{3, "guess-yes", true},
		{4, "guess-no", false},
		{5, "Metered(5)", false},
	} {
		if got := tc.m.String(); got != tc.name {
			t.Errorf("Metered(%d).String() = %q, want %q", uint32(tc.m), got, tc.name)
		}
		if got := tc.m.Expensive(); got != tc.expensive {
			t.Errorf("Metered(%d).Expensive() = %v", uint32(tc.m), got)
		}
	}
	if MeteredUnknown != 0 || MeteredYes != 1 || MeteredNo != 2 || MeteredGuessYes != 3 || MeteredGuessNo != 4 {
		t.Error("Metered constants differ from NM_METERED_*")
	}
}

func TestStateEqual(t *testing.T) {
	a := Device{Interface: "c0", Managed: true, Activated: true, MPTCP: MPTCPSetting{Known: true, Flags: MPTCPSubflow}, Metered: MeteredYes}
	b := Device{Interface: "c1", Managed: true}
	changed := func(f func(*Device)) Device { d := a; f(&d); return d }
	for _, tc := range []struct {
		name string
		x, y State
		want bool
	}{
		{"both not running", State{}, State{}, true},
		{"nil and empty devices", State{Running: true}, State{Running: true, Devices: map[string]Device{}}, true},
		{"running differs", State{}, State{Running: true}, false},
		{"same devices", State{true, map[string]Device{"c0": a, "c1": b}}, State{true, map[string]Device{"c1": b, "c0": a}}, true},
		{"device added", State{true, map[string]Device{"c0": a}}, State{true, map[string]Device{"c0": a, "c1": b}}, false},
		{"activated", State{true, map[string]Device{"c0": a}}, State{true, map[string]Device{"c0": changed(func(d *Device) { d.Activated = false })}}, false},
		{"flags", State{true, map[string]Device{"c0": a}}, State{true, map[string]Device{"c0": changed(func(d *Device) { d.MPTCP.Flags = MPTCPSignal })}}, false},
		{"known", State{true, map[string]Device{"c0": a}}, State{true, map[string]Device{"c0": changed(func(d *Device) { d.MPTCP.Known = false })}}, false},
		{"metered", State{true, map[string]Device{"c0": a}}, State{true, map[string]Device{"c0": changed(func(d *Device) { d.Metered = MeteredGuessYes })}}, false},
		{"ip interface", State{true, map[string]Device{"c0": a}}, State{true, map[string]Device{"c0": changed(func(d *Device) { d.IPInterface = "c0" })}}, false},
	} {
		if got := tc.x.Equal(tc.y); got != tc.want {
			t.Errorf("%s: Equal = %v, want %v", tc.name, got, tc.want)
		}
		if got := tc.y.Equal(tc.x); got != tc.want {
			t.Errorf("%s: Equal (swapped) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestStateLookupAndString(t *testing.T) {
	modem := Device{Interface: "cdc-wdm0", IPInterface: "wwan0", Managed: true, Activated: true,
		MPTCP: MPTCPSetting{Known: true}, Metered: MeteredGuessYes}
	eth := Device{Interface: "eth0", Managed: true}
	s := State{Running: true, Devices: map[string]Device{"cdc-wdm0": modem, "eth0": eth}}
	for _, name := range []string{"cdc-wdm0", "wwan0"} {
		if d, ok := s.Lookup(name); !ok || d != modem {
			t.Errorf("Lookup(%s) = %v, %v", name, d, ok)
		}
	}
	if d, ok := s.Lookup("eth0"); !ok || d != eth {
		t.Errorf("Lookup(eth0) = %v, %v", d, ok)
	}
	if _, ok := s.Lookup("eth1"); ok {
		t.Error("Lookup(eth1) found a device")
	}
	if _, ok := (State{}).Lookup("eth0"); ok {
		t.Error("Lookup on a stopped NetworkManager found a device")
	}
	want := "running: cdc-wdm0 managed activated ip=wwan0 mptcp=default metered=guess-yes; eth0 managed metered=unknown"
	if got := s.String(); got != want {
		t.Errorf("String() = %q\nwant        %q", got, want)
	}
	if got := (State{}).String(); got != "not running" {
		t.Errorf("State{}.String() = %q", got)
	}
}
