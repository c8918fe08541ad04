package service

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// NetEventKind says what a NetEvent reports.
type NetEventKind uint8

// Kinds of NetEvent.
const (
	NetLinkChanged    NetEventKind = iota + 1 // Link appeared or changed
	NetLinkRemoved                            // Link (by Index) is gone, with its addresses and routes
	NetAddressAdded                           // Address appeared or changed
	NetAddressRemoved                         // Address is gone
	NetRouteAdded                             // Route appeared
	NetRouteRemoved                           // Route is gone
	NetSynced                                 // the initial state has been sent in full
)

// NetEvent is a change of the host's links, addresses or routes, as the
// daemon's network monitor reports it. Which field is set depends on Kind.
// The daemon's main adapts its monitor's updates into NetEvents, so the
// service does not depend on the monitor's types.
type NetEvent struct {
	Kind    NetEventKind
	Link    Link
	Address LinkAddress
	Route   Route
}

// Link is a network interface.
type Link struct {
	Index    int
	Name     string // valid UTF-8 (the daemon replaces other bytes: D-Bus carries only UTF-8)
	Up       bool   // administratively up
	Carrier  bool   // lower layer up
	Loopback bool
}

// LinkAddress is an address of a link.
type LinkAddress struct {
	Index      int          // the link's index
	Prefix     netip.Prefix // address and prefix length
	Tentative  bool         // IPv6 duplicate address detection not done yet
	Deprecated bool         // IPv6 preferred lifetime is over
	DADFailed  bool         // IPv6 duplicate address detection found a duplicate
	LinkLocal  bool         // the address has link scope (fe80::/10 and 169.254/16 count anyway)
}

// Route is a route out of a link; only default routes (Dst.Bits() == 0)
// matter to the service.
type Route struct {
	Index int          // the outgoing link's index
	Dst   netip.Prefix // 0.0.0.0/0 or ::/0 for a default route
}

// netState is the service's copy of the host's links, addresses and default
// routes, from NetEvents.
type netState struct {
	links    map[int]Link
	addrs    map[addrKey]LinkAddress
	defaults map[defaultKey]int // number of default routes per link and family
	// nm is NetworkManager's activated interfaces by name, when the
	// service follows it (Service.nmView); nil otherwise.
	nm map[string]NMInterface
	// off holds the interfaces whose preference is off: not usable.
	off map[string]bool
}

type addrKey struct {
	index int
	addr  netip.Addr
}

type defaultKey struct {
	index int
	v6    bool
}

func newNetState() *netState {
	return &netState{
		links:    make(map[int]Link),
		addrs:    make(map[addrKey]LinkAddress),
		defaults: make(map[defaultKey]int),
	}
}

// apply records ev. It reports whether the event can change which local
// addresses are usable.
func (n *netState) apply(ev NetEvent) bool {
	switch ev.Kind {
	case NetLinkChanged:
		n.links[ev.Link.Index] = ev.Link
	case NetLinkRemoved:
		delete(n.links, ev.Link.Index)
		for k := range n.addrs {
			if k.index == ev.Link.Index {
				delete(n.addrs, k)
			}
		}
		for k := range n.defaults {
			if k.index == ev.Link.Index {
				delete(n.defaults, k)
			}
		}
	case NetAddressAdded:
		n.addrs[addrKey{ev.Address.Index, ev.Address.Prefix.Addr()}] = ev.Address
	case NetAddressRemoved:
		delete(n.addrs, addrKey{ev.Address.Index, ev.Address.Prefix.Addr()})
	case NetRouteAdded, NetRouteRemoved:
		if !ev.Route.Dst.IsValid() || ev.Route.Dst.Bits() != 0 {
			return false
		}
		k := defaultKey{ev.Route.Index, ev.Route.Dst.Addr().Is6()}
		if ev.Kind == NetRouteAdded {
			n.defaults[k]++
		} else if n.defaults[k] <= 1 {
			delete(n.defaults, k)
		} else {
			n.defaults[k]--
		}
	case NetSynced:
	default:
		return false
	}
	return true
}

// linkName returns the name of the link with index i, or "".
func (n *netState) linkName(i int32) string {
	if i == 0 {
		return ""
	}
	return n.links[int(i)].Name
}

// hasAddr reports whether a is configured on one of the host's links.
func (n *netState) hasAddr(a netip.Addr) bool {
	a = pm.CanonicalAddr(a)
	for k := range n.addrs {
		if pm.CanonicalAddr(k.addr) == a {
			return true
		}
	}
	return false
}

// linkIndex returns the index of the link named name.
func (n *netState) linkIndex(name string) (int32, bool) {
	for _, l := range n.links {
		if l.Name == name {
			return int32(l.Index), true
		}
	}
	return 0, false
}

// usable returns the local addresses that pass the filter, sorted by
// interface name and address, without flags.
func (n *netState) usable(f policy.FilterConfig) []policy.Address {
	out := []policy.Address{}
	for k, a := range n.addrs {
		l, ok := n.links[k.index]
		if !ok {
			continue
		}
		if ok, _ := n.check(f, l, a); ok {
			_, managed := n.nm[l.Name]
			out = append(out, policy.Address{Interface: l.Name, Ifindex: l.Index, Addr: k.addr, External: managed})
		}
	}
	slices.SortFunc(out, func(a, b policy.Address) int {
		return cmp.Or(cmp.Compare(a.Interface, b.Interface), a.Addr.Compare(b.Addr))
	})
	return out
}

// check is the filter's verdict on address a of link l, and
// NetworkManager's: an interface whose profile disables MPTCP is not
// usable.
func (n *netState) check(f policy.FilterConfig, l Link, a LinkAddress) (bool, string) {
	ok, reason := f.Check(n.candidate(l, a))
	switch i, managed := n.nm[l.Name]; {
	case !ok:
	case managed && i.MPTCPDisabled:
		return false, reasonNMDisabled
	case n.off[l.Name]:
		return false, reasonPrefOff
	}
	return ok, reason
}

// nmIfindexes returns the indexes of the links whose endpoints
// NetworkManager writes.
func (n *netState) nmIfindexes() map[int32]bool {
	if len(n.nm) == 0 {
		return nil
	}
	out := make(map[int32]bool, len(n.nm))
	for _, l := range n.links {
		if i, ok := n.nm[l.Name]; ok && !i.MPTCPDisabled {
			out[int32(l.Index)] = true
		}
	}
	return out
}

// candidate describes address a of link l for the filter.
func (n *netState) candidate(l Link, a LinkAddress) policy.Candidate {
	addr := a.Prefix.Addr()
	return policy.Candidate{
		Interface:    l.Name,
		Ifindex:      l.Index,
		Addr:         addr,
		Loopback:     l.Loopback,
		Up:           l.Up,
		Carrier:      l.Carrier,
		Tentative:    a.Tentative,
		Deprecated:   a.Deprecated,
		DADFailed:    a.DADFailed,
		LinkLocal:    a.LinkLocal,
		DefaultRoute: n.defaults[defaultKey{l.Index, addr.Is6()}] > 0,
	}
}
