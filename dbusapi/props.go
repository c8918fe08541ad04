package dbusapi

import (
	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Wire forms of the contract's structs. godbus encodes a struct as a D-Bus
// struct of its exported fields, in order.
type (
	endpointWire struct { // (ysqasss)
		ID        uint8
		Address   string
		Port      uint16
		Flags     []string
		Interface string
		Origin    string
	}
	limitsWire struct { // (uu)
		Subflows        uint32
		AddAddrAccepted uint32
	}
	localAddressWire struct { // (ss)
		Interface string
		Address   string
	}
	subflowWire struct { // (yysqsqbs)
		LocalID       uint8
		RemoteID      uint8
		LocalAddress  string
		LocalPort     uint16
		RemoteAddress string
		RemotePort    uint16
		Backup        bool
		Interface     string
	}
	addressWire struct { // (ysq)
		ID      uint8
		Address string
		Port    uint16
	}
)

// managerProps returns every property of the Manager interface.
func managerProps(m service.Manager) map[string]dbus.Variant {
	eps := make([]endpointWire, 0, len(m.Endpoints))
	for _, e := range m.Endpoints {
		eps = append(eps, endpointWire{e.ID, addrString(e.Addr), e.Port, e.Flags.Names(), e.Interface, string(e.Origin)})
	}
	las := make([]localAddressWire, 0, len(m.LocalAddresses))
	for _, a := range m.LocalAddresses {
		las = append(las, localAddressWire{a.Interface, addrString(a.Address)})
	}
	return map[string]dbus.Variant{
		"Version":           dbus.MakeVariant(m.Version),
		"ControlMode":       dbus.MakeVariant(m.ControlMode),
		"Controller":        dbus.MakeVariant(m.Controller),
		"Policy":            dbus.MakeVariant(m.Policy),
		"KernelPathManager": dbus.MakeVariant(m.KernelPathManager),
		"Endpoints":         dbus.MakeVariant(eps),
		"Limits":            dbus.MakeVariant(limitsWire{m.Limits.Subflows, m.Limits.AddAddrAccepted}),
		"LocalAddresses":    dbus.MakeVariant(las),
	}
}

// connectionProps returns every property of the Connection interface.
func connectionProps(c service.Connection) map[string]dbus.Variant {
	sfs := make([]subflowWire, 0, len(c.Subflows))
	for _, s := range c.Subflows {
		sfs = append(sfs, subflowToWire(s))
	}
	return map[string]dbus.Variant{
		"Token":              dbus.MakeVariant(c.Token),
		"ServerSide":         dbus.MakeVariant(c.ServerSide),
		"State":              dbus.MakeVariant(c.State),
		"LocalAddress":       dbus.MakeVariant(addrString(c.LocalAddress)),
		"LocalPort":          dbus.MakeVariant(c.LocalPort),
		"RemoteAddress":      dbus.MakeVariant(addrString(c.RemoteAddress)),
		"RemotePort":         dbus.MakeVariant(c.RemotePort),
		"DenyJoinId0":        dbus.MakeVariant(c.DenyJoinID0),
		"Subflows":           dbus.MakeVariant(sfs),
		"RemoteAddresses":    dbus.MakeVariant(addressesToWire(c.RemoteAddresses)),
		"AnnouncedAddresses": dbus.MakeVariant(addressesToWire(c.AnnouncedAddresses)),
	}
}

func subflowToWire(s service.Subflow) subflowWire {
	return subflowWire{
		s.LocalID, s.RemoteID, addrString(s.LocalAddress), s.LocalPort,
		addrString(s.RemoteAddress), s.RemotePort, s.Backup, s.Interface,
	}
}

func addressesToWire(as []service.AnnouncedAddress) []addressWire {
	out := make([]addressWire, 0, len(as))
	for _, a := range as {
		out = append(out, addressWire{a.ID, addrString(a.Address), a.Port})
	}
	return out
}

// pick returns the named entries of props; names it does not know are left
// out.
func pick(props map[string]dbus.Variant, names []string) map[string]dbus.Variant {
	out := make(map[string]dbus.Variant, len(names))
	for _, n := range names {
		if v, ok := props[n]; ok {
			out[n] = v
		}
	}
	return out
}
