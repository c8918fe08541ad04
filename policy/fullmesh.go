package policy

import (
	"net/netip"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// NameFullmesh is the name of the full-mesh policy.
const NameFullmesh = "fullmesh"

func init() { Register(NameFullmesh, func() Policy { return fullmesh{} }) }

// fullmesh wants, on every established connection, a subflow for every pair
// of a usable local address of the connection's family and a known peer
// address of that family: on the client side the initial remote address and
// port and what the peer announced; on the server side only what the peer
// announced (the client's initial port has no listener behind it). An
// announcement without a port means the connection's remote port.
//
// A pair is served when a subflow, pending ones included, joins exactly that
// local address and remote address and port; the initial subflow serves its
// own pair. Local addresses in c.Failed are skipped. No more than
// v.SubflowLimit extra subflows are created, pairs taken in the order of
// local interface and address, then remote address and port. Subflows other
// than the initial one whose local address is no longer usable are destroyed
// (pending ones are left to fail), and the backup flag of every established
// subflow follows its local address's flags (followBackup). Actions come as
// destructions, then flag changes, then creations.
type fullmesh struct{}

func (fullmesh) Name() string            { return NameFullmesh }
func (fullmesh) PathManager() string     { return PathManagerUserspace }
func (fullmesh) Endpoints(View) []Action { return nil }

func (fullmesh) Connection(v View, c Connection) []Action {
	if !c.Established {
		return nil
	}
	addrs := sortedAddresses(v.Addresses)
	out, extra := staleSubflows(nil, addrs, &c)
	out = followBackup(out, addrs, &c)
	left := room(v.SubflowLimit, extra)
	for i, a := range addrs {
		if left == 0 {
			break
		}
		if !c.sameFamily(a.Addr) || !firstOf(addrs, i) || c.failed(a.Addr) {
			continue
		}
		local := pm.CanonicalAddr(a.Addr)
		for j := -1; j < len(c.PeerAddresses) && left > 0; j++ {
			remote, ok := peer(&c, j)
			if !ok || joined(&c, local, remote) {
				continue
			}
			why := "no subflow from " + local.String() + " to " + remote.Addr().String()
			if j >= 0 {
				why = "the peer announced " + remote.Addr().String() + "; " + why
			}
			out = append(out, subflowTo(&c, a, remote, why))
			left--
		}
	}
	return out
}

// peer returns the j-th known peer address of c: -1 is the initial remote
// address (client side only), 0.. the announced ones. It reports false for
// a peer address to skip: of the other family, or seen earlier in the list.
func peer(c *Connection, j int) (netip.AddrPort, bool) {
	remote, ok := peerAt(c, j)
	if !ok || !c.sameFamily(remote.Addr()) {
		return remote, false
	}
	for i := -1; i < j; i++ {
		if prev, ok := peerAt(c, i); ok && prev == remote {
			return remote, false
		}
	}
	return remote, true
}

// peerAt returns the j-th peer address of c as peer numbers them, without
// checks but that the initial one does not count on the server side.
func peerAt(c *Connection, j int) (netip.AddrPort, bool) {
	if j >= 0 {
		return announcedPort(c, j), true
	}
	return pm.CanonicalAddrPort(c.Remote), !c.ServerSide
}

// announcedPort returns the peer's j-th announced address with its port,
// the connection's remote port if it announced none.
func announcedPort(c *Connection, j int) netip.AddrPort {
	pa := c.PeerAddresses[j]
	port := pa.Port
	if port == 0 {
		port = c.Remote.Port()
	}
	return netip.AddrPortFrom(pm.CanonicalAddr(pa.Addr), port)
}

// joined reports whether a subflow (the initial one or another, pending or
// established) joins local and remote.
func joined(c *Connection, local netip.Addr, remote netip.AddrPort) bool {
	if pm.CanonicalAddr(c.Local.Addr()) == local && pm.CanonicalAddrPort(c.Remote) == remote {
		return true
	}
	for _, s := range c.Subflows {
		if pm.CanonicalAddr(s.Local.Addr()) == local && pm.CanonicalAddrPort(s.Remote) == remote {
			return true
		}
	}
	return false
}
