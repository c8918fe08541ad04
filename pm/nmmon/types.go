package nmmon

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// StateActivated is NetworkManager's device state ACTIVATED
// (NM_DEVICE_STATE_ACTIVATED): a profile is active on the device and its
// IP configuration is done.
const StateActivated = 100

// Device is what NetworkManager says about one device.
type Device struct {
	// Interface is the device's interface name (NetworkManager's Interface
	// property). For most devices it is the kernel's network interface;
	// for a modem it may be a control device such as cdc-wdm0, and the
	// traffic flows through IPInterface.
	Interface string
	// IPInterface is the interface that carries the device's IP traffic
	// (IpInterface): for an Ethernet device the same as Interface, for a
	// modem its wwan interface. NetworkManager clears it on a managed
	// device without an active profile (an unmanaged one keeps it).
	IPInterface string
	// Managed: NetworkManager manages the device (it may activate
	// profiles on it).
	Managed bool
	// Activated: the device's state is ACTIVATED (100).
	Activated bool
	// MPTCP is the MPTCP setting of the profile active on the device.
	MPTCP MPTCPSetting
	// Metered says whether the device's traffic is metered, as decided at
	// run time from the active profile or guessed.
	Metered Metered
}

// String describes the device as "c0 managed activated ip=c0
// mptcp=subflow metered=yes".
func (d Device) String() string {
	var b strings.Builder
	b.WriteString(d.Interface)
	if d.Managed {
		b.WriteString(" managed")
	} else {
		b.WriteString(" unmanaged")
	}
	if d.Activated {
		b.WriteString(" activated")
	}
	if d.IPInterface != "" {
		b.WriteString(" ip=" + d.IPInterface)
	}
	if d.MPTCP.Known {
		b.WriteString(" mptcp=" + d.MPTCP.Flags.String())
	}
	b.WriteString(" metered=" + d.Metered.String())
	return b.String()
}

// MPTCPSetting is the connection.mptcp-flags of a profile.
type MPTCPSetting struct {
	// Known: the profile active on the device was read. False for a device
	// without an active profile, or when its profile could not be read;
	// then Disabled and Flags are zero.
	Known bool
	// Disabled: the flags have MPTCPDisabled: NetworkManager configures no
	// endpoints on the device, and removes those it finds at activation.
	Disabled bool
	// Flags are the profile's connection.mptcp-flags as NetworkManager
	// gives them (0 when the profile does not set them).
	Flags MPTCPFlags
}

// MPTCPFlags are the values of connection.mptcp-flags (NMMptcpFlags).
// Zero means the default: the [connection] default of NetworkManager.conf
// if it sets connection.mptcp-flags, else "enabled,subflow", which gives
// endpoints only while net.mptcp.enabled is 1 and only for the address
// families with a default route in the main table.
type MPTCPFlags uint32

// MPTCP flags, with NetworkManager's values (NM_MPTCP_FLAGS_*), as
// nm-settings-nmcli(5) of NetworkManager 1.42 documents them.
const (
	// MPTCPDisabled: no MPTCP handling; NetworkManager adds no endpoints.
	MPTCPDisabled MPTCPFlags = 0x1
	// MPTCPEnabled: MPTCP handling is on; implied by the flags below.
	MPTCPEnabled MPTCPFlags = 0x2
	// MPTCPAlsoWithoutSysctl: add endpoints even while net.mptcp.enabled is 0.
	MPTCPAlsoWithoutSysctl MPTCPFlags = 0x4
	// MPTCPAlsoWithoutDefaultRoute: add endpoints for an address family
	// even without a default route of that family in the main table.
	MPTCPAlsoWithoutDefaultRoute MPTCPFlags = 0x8
	// MPTCPSignal, MPTCPSubflow, MPTCPBackup and MPTCPFullmesh are the
	// endpoint flags of ip-mptcp(8) that the endpoints get.
	MPTCPSignal   MPTCPFlags = 0x10
	MPTCPSubflow  MPTCPFlags = 0x20
	MPTCPBackup   MPTCPFlags = 0x40
	MPTCPFullmesh MPTCPFlags = 0x80
)

var mptcpFlagNames = [...]struct {
	f    MPTCPFlags
	name string
}{
	{MPTCPDisabled, "disabled"},
	{MPTCPEnabled, "enabled"},
	{MPTCPAlsoWithoutSysctl, "also-without-sysctl"},
	{MPTCPAlsoWithoutDefaultRoute, "also-without-default-route"},
	{MPTCPSignal, "signal"},
	{MPTCPSubflow, "subflow"},
	{MPTCPBackup, "backup"},
	{MPTCPFullmesh, "fullmesh"},
}

// String returns the flags as nmcli spells them, joined by commas
// ("subflow,also-without-default-route"), "default" for zero; unknown bits
// are shown in hex.
func (f MPTCPFlags) String() string {
	if f == 0 {
		return "default"
	}
	var names []string
	for _, fn := range mptcpFlagNames {
		if f&fn.f != 0 {
			names = append(names, fn.name)
			f &^= fn.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(names, ",")
}

// Metered is NetworkManager's metered state of a device (NMMetered).
type Metered uint32

// Metered states, with NetworkManager's values (NM_METERED_*). A profile
// says yes, no or unknown; for unknown, NetworkManager guesses at run time
// (from the device type or a DHCP option).
const (
	MeteredUnknown  Metered = 0 // not known (a device without an active profile)
	MeteredYes      Metered = 1 // the profile says metered
	MeteredNo       Metered = 2 // the profile says not metered
	MeteredGuessYes Metered = 3 // guessed metered (a modem, a phone's hotspot)
	MeteredGuessNo  Metered = 4 // guessed not metered
)

// Expensive reports whether traffic on the device likely costs: metered
// yes, or guessed yes (as NetworkManager advises applications to treat it).
func (m Metered) Expensive() bool { return m == MeteredYes || m == MeteredGuessYes }

var meteredNames = [...]string{"unknown", "yes", "no", "guess-yes", "guess-no"}

// String returns the state as nmcli spells it ("guess-yes"), or
// "Metered(N)" for a value NetworkManager does not define.
func (m Metered) String() string {
	if int(m) < len(meteredNames) {
		return meteredNames[m]
	}
	return fmt.Sprintf("Metered(%d)", uint32(m))
}

// State is what NetworkManager says about all its devices.
type State struct {
	// Running: NetworkManager owns its name on the bus and answered.
	Running bool
	// Devices are NetworkManager's devices by Interface; nil when it does
	// not run. A sent State is never changed afterwards.
	Devices map[string]Device
}

// Equal reports whether the states are the same; nil and empty Devices
// are the same.
func (s State) Equal(o State) bool {
	return s.Running == o.Running && maps.Equal(s.Devices, o.Devices)
}

// Lookup returns the device whose Interface is ifname or, failing that,
// the one whose IPInterface is ifname (a modem's data interface).
func (s State) Lookup(ifname string) (Device, bool) {
	if d, ok := s.Devices[ifname]; ok {
		return d, true
	}
	for _, d := range s.Devices {
		if d.IPInterface == ifname {
			return d, true
		}
	}
	return Device{}, false
}

// String describes the state for logs: "not running", or "running: " and
// the devices ordered by name, separated by "; ".
func (s State) String() string {
	if !s.Running {
		return "not running"
	}
	names := slices.Sorted(maps.Keys(s.Devices))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = s.Devices[n].String()
	}
	return "running: " + strings.Join(parts, "; ")
}
