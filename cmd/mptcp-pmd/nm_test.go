package main

import (
	"maps"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

func TestNMState(t *testing.T) {
	enabled := nmmon.MPTCPSetting{Known: true, Flags: nmmon.MPTCPSubflow}
	disabled := nmmon.MPTCPSetting{Known: true, Disabled: true, Flags: nmmon.MPTCPDisabled}
	st := nmmon.State{Running: true, Devices: map[string]nmmon.Device{
		"eth0":     {Interface: "eth0", IPInterface: "eth0", Managed: true, Activated: true, MPTCP: enabled, Metered: nmmon.MeteredGuessNo},
		"wlan0":    {Interface: "wlan0", IPInterface: "wlan0", Managed: true, Activated: true, MPTCP: disabled},
		"cdc-wdm0": {Interface: "cdc-wdm0", IPInterface: "wwan0", Managed: true, Activated: true, MPTCP: enabled, Metered: nmmon.MeteredGuessYes},
		"eth1":     {Interface: "eth1", Managed: true, Metered: nmmon.MeteredYes, MPTCP: disabled}, // not activated: neither counts
		"eth2":     {Interface: "eth2", IPInterface: "eth2", Activated: true, MPTCP: disabled},     // unmanaged
		"w\xff":    {Interface: "w\xff", Managed: true},
	}}
	want := map[string]service.NMInterface{
		"eth0":    {},
		"wlan0":   {MPTCPDisabled: true},
		"wwan0":   {Metered: true},
		"eth1":    {},
		"w\uFFFD": {},
	}
	got := nmState(st)
	if !got.Running || !maps.Equal(got.Interfaces, want) {
		t.Errorf("nmState = %+v, want running with %+v", got, want)
	}
	if got := nmState(nmmon.State{}); got.Running || len(got.Interfaces) != 0 {
		t.Errorf("nmState(not running) = %+v", got)
	}
}
