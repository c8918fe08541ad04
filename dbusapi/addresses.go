package dbusapi

import (
	"github.com/godbus/dbus/v5"
)

// addressInfoWire is the wire form of service.AddressInfo: (ssbs).
type addressInfoWire struct {
	Interface string
	Address   string
	Usable    bool
	Reason    string
}

// listAddresses implements Manager.ListAddresses. Anyone may call it.
func (s *Server) listAddresses() ([]addressInfoWire, *dbus.Error) {
	as, err := s.b.Addresses(s.ctx)
	if err != nil {
		return nil, dbusError(err)
	}
	out := make([]addressInfoWire, 0, len(as))
	for _, a := range as {
		out = append(out, addressInfoWire{a.Interface, addrString(a.Address), a.Usable, a.Reason})
	}
	return out, nil
}
