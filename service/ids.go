package service

import (
	"net/netip"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// idManager gives local addresses their MPTCP address ids for the userspace
// path manager: the same address always gets the same id, across
// connections, so that the kernel never sees one id bound to two addresses
// on a connection ("did not match address and id"). The kernel binds an id
// to an address and port, so ids are kept per address and port: subflows
// use port 0 (or their local port), announcements the announced port.
//
// Ids are 1..255 (0 is the initial subflow's and is refused by ANNOUNCE).
// When all are taken, the id used longest ago goes to the new address; a
// conflict then needs 255 addresses and ports in use at once. So the table
// never grows beyond 255 entries, whatever the ports announced.
type idManager struct {
	byAddr map[netip.AddrPort]uint8
	byID   [256]idEntry
	next   uint8  // where the search for a free id starts
	clock  uint64 // counts uses, for lastUse
}

type idEntry struct {
	key     netip.AddrPort // invalid = free
	lastUse uint64
}

func newIDManager() *idManager {
	return &idManager{byAddr: make(map[netip.AddrPort]uint8), next: 1}
}

// idKey is the form ids are kept under: pm's canonical address form.
func idKey(a netip.Addr, port uint16) netip.AddrPort {
	return pm.CanonicalAddrPort(netip.AddrPortFrom(a, port))
}

// id returns the id of the address and port, giving them one if they have
// none: a free one, else the one used longest ago.
func (m *idManager) id(a netip.Addr, port uint16) uint8 {
	k := idKey(a, port)
	m.clock++
	if id, ok := m.byAddr[k]; ok {
		m.byID[id].lastUse = m.clock
		return id
	}
	id, oldest := uint8(0), uint64(0)
	for range 255 {
		cand := m.next
		if m.next++; m.next == 0 {
			m.next = 1
		}
		e := m.byID[cand]
		if !e.key.IsValid() {
			id = cand
			break
		}
		if id == 0 || e.lastUse < oldest {
			id, oldest = cand, e.lastUse
		}
	}
	m.bind(k, id)
	return id
}

// claim records an id a caller chose for an address and port, when the
// address has none and the id is free, so that later automatic choices
// agree with it. Otherwise the caller's choice is still honoured (the
// kernel judges it per connection) but not recorded.
func (m *idManager) claim(a netip.Addr, port uint16, id uint8) {
	k := idKey(a, port)
	if id == 0 || m.byID[id].key.IsValid() {
		return
	}
	if _, ok := m.byAddr[k]; ok {
		return
	}
	m.clock++
	m.bind(k, id)
}

func (m *idManager) bind(k netip.AddrPort, id uint8) {
	if old := m.byID[id].key; old.IsValid() {
		delete(m.byAddr, old)
	}
	m.byAddr[k] = id
	m.byID[id] = idEntry{key: k, lastUse: m.clock}
}
