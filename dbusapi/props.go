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
		"Version":              variantOf(m.Version),
		"ControlMode":          variantOf(m.ControlMode),
		"Controller":           variantOf(m.Controller),
		"Policy":               variantOf(m.Policy),
		"KernelPathManager":    variantOf(m.KernelPathManager),
		"Endpoints":            variantOf(eps),
		"Limits":               variantOf(limitsWire{m.Limits.Subflows, m.Limits.AddAddrAccepted}),
		"LocalAddresses":       variantOf(las),
		"Warnings":             variantOf(nonNil(m.Warnings)),
		"InterfacePreferences": variantOf(nonNilMap(m.Preferences)),
	}
}

// connectionPropNames are the properties of the Connection interface.
var connectionPropNames = []string{"Token", "ServerSide", "State", "LocalAddress", "LocalPort", "RemoteAddress",
	"RemotePort", "DenyJoinId0", "Subflows", "RemoteAddresses", "AnnouncedAddresses"}

// connPropMask is a set of the Connection interface's properties: bit i
// is connectionPropNames[i].
type connPropMask uint16

// allConnProps has every property of the Connection interface.
var allConnProps = connPropMask(1)<<len(connectionPropNames) - 1

// connPropsMask returns the set of the named properties; names it does not
// know are left out.
func connPropsMask(names []string) connPropMask {
	var m connPropMask
	for _, n := range names {
		for i, p := range connectionPropNames {
			if p == n {
				m |= 1 << i
				break
			}
		}
	}
	return m
}

// names returns the properties of m, in the order of connectionPropNames.
func (m connPropMask) names() []string {
	var out []string
	for i, p := range connectionPropNames {
		if m&(1<<i) != 0 {
			out = append(out, p)
		}
	}
	return out
}

// connectionProps returns every property of the Connection interface.
func connectionProps(c service.Connection) map[string]dbus.Variant {
	return connectionPropsNamed(c, connectionPropNames)
}

// connectionPropsNamed returns the named properties of the Connection
// interface; names it does not know are left out. Publish builds only
// what changed.
func connectionPropsNamed(c service.Connection, names []string) map[string]dbus.Variant {
	out := make(map[string]dbus.Variant, len(names))
	for _, n := range names {
		var v any
		switch n {
		case "Token":
			v = c.Token
		case "ServerSide":
			v = c.ServerSide
		case "State":
			v = c.State
		case "LocalAddress":
			v = addrString(c.LocalAddress)
		case "LocalPort":
			v = c.LocalPort
		case "RemoteAddress":
			v = addrString(c.RemoteAddress)
		case "RemotePort":
			v = c.RemotePort
		case "DenyJoinId0":
			v = c.DenyJoinID0
		case "Subflows":
			sfs := make([]subflowWire, 0, len(c.Subflows))
			for _, s := range c.Subflows {
				sfs = append(sfs, subflowToWire(s))
			}
			v = sfs
		case "RemoteAddresses":
			v = addressesToWire(c.RemoteAddresses)
		case "AnnouncedAddresses":
			v = addressesToWire(c.AnnouncedAddresses)
		default:
			continue
		}
		out[n] = variantOf(v)
	}
	return out
}

// signatures are the parsed signatures of the types sigOf knows, for
// variantOf.
var signatures = func() map[string]dbus.Signature {
	m := make(map[string]dbus.Signature)
	for _, v := range []any{uint8(0), false, int16(0), uint16(0), int32(0), uint32(0), int64(0), uint64(0), 0.0, "",
		dbus.ObjectPath("/"), []string{}, map[string]string{}, []subflowWire{}, []addressWire{}, []endpointWire{}, limitsWire{}, []localAddressWire{}} {
		m[sigOf(v)] = dbus.SignatureOf(v)
	}
	return m
}()

// variantOf is dbus.MakeVariant(v) without its reflection for the types
// the API sends.
func variantOf(v any) dbus.Variant {
	if sig, ok := signatures[sigOf(v)]; ok {
		return dbus.MakeVariantWithSignature(v, sig)
	}
	return dbus.MakeVariant(v)
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

// nonNil returns s, or an empty slice for nil (both are an empty array on
// the wire; the encoders want a value).
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// nonNilMap returns m, or an empty map for nil.
func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
