package netmon

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
)

// op is what a decoded rtnetlink notification does.
type op uint8

const (
	opNewLink op = iota + 1
	opDelLink
	opNewAddr
	opDelAddr
	opNewRoute
	opDelRoute
)

// event is one decoded rtnetlink notification, or one next hop of a
// multipath route notification.
type event struct {
	op    op
	link  Link    // opNewLink, opDelLink (only Index is needed for the latter)
	addr  Address // opNewAddr, opDelAddr
	route Route   // opNewRoute, opDelRoute

	// replace is set on an opNewRoute that replaced the routes of the same
	// family, table and metric (NLM_F_REPLACE): they are gone although the
	// kernel sends no deletion for them.
	replace bool
	// noRoute is set on a replacing opNewRoute whose new route is not a
	// default route through an interface (e.g. a blackhole): only the
	// replacement is applied.
	noRoute bool
}

// addrKey identifies an address the way the kernel does: IPv4 by interface,
// address and prefix length, IPv6 by interface and address.
type addrKey struct {
	index int
	addr  netip.Addr
	bits  int
}

func keyOf(a Address) addrKey {
	k := addrKey{index: a.Index, addr: a.Prefix.Addr(), bits: -1}
	if k.addr.Is4() {
		k.bits = a.Prefix.Bits()
	}
	return k
}

// state is the monitor's view: the links, addresses and default routes of
// the namespace. Every method that changes it appends the updates that
// describe the change to out, in the order a consumer should see them.
//
// Invariants: every address and route belongs to a known link, and every
// route to a link that is up (the kernel removes or kills the routes of a
// link that goes down).
type state struct {
	links  map[int]Link
	addrs  map[addrKey]Address
	routes map[Route]struct{}

	out []Update // updates not yet delivered

	scratchA []Address // reused by the removal paths
	scratchR []Route
}

func newState() *state {
	return &state{
		links:  make(map[int]Link),
		addrs:  make(map[addrKey]Address),
		routes: make(map[Route]struct{}),
	}
}

// apply applies one event. The caller makes sure that the link of an
// opNewAddr or opNewRoute is known, applying its opNewLink first; such an
// event for an unknown link is dropped.
//
// apply reports whether the routes must be listed again, because the kernel
// may revive dead next hops of multipath routes without a notification, and
// only after sending the one apply is given: when a link comes up, or gets
// its first IPv4 address (fib_sync_up).
func (s *state) apply(e *event) (relistRoutes bool) {
	switch e.op {
	case opNewLink:
		return s.setLink(e.link)
	case opDelLink:
		s.removeLink(e.link.Index)
	case opNewAddr:
		return s.setAddr(e.addr)
	case opDelAddr:
		s.removeAddr(e.addr)
	case opNewRoute:
		if e.replace {
			s.replaceRoutes(e.route)
		}
		if !e.noRoute {
			s.addRoute(e.route)
		}
	case opDelRoute:
		s.removeRoute(e.route)
	}
	return false
}

func (s *state) emit(k Kind, l Link, a Address, r Route) {
	s.out = append(s.out, Update{Kind: k, Link: l, Address: a, Route: r})
}

func (s *state) setLink(l Link) (cameUp bool) {
	old, known := s.links[l.Index]
	if !known || old != l {
		s.links[l.Index] = l
		s.emit(LinkChanged, l, Address{}, Route{})
	}
	if !l.Up {
		s.removeRoutesIf(func(r Route) bool { return r.Index == l.Index })
	}
	return known && !old.Up && l.Up
}

func (s *state) removeLink(index int) {
	l, known := s.links[index]
	s.removeAddrsIf(func(a Address) bool { return a.Index == index })
	s.removeRoutesIf(func(r Route) bool { return r.Index == index })
	if known {
		delete(s.links, index)
		s.emit(LinkRemoved, l, Address{}, Route{})
	}
}

// setAddr adds or updates an address, and reports whether it is the first
// IPv4 address of its link.
func (s *state) setAddr(a Address) (firstIPv4 bool) {
	l, ok := s.links[a.Index]
	if !ok {
		return false
	}
	k := keyOf(a)
	old, known := s.addrs[k]
	switch {
	case !known:
		firstIPv4 = a.Prefix.Addr().Is4() && !s.hasIPv4(a.Index)
		s.addrs[k] = a
		s.emit(AddressAdded, l, a, Route{})
	case old != a:
		s.addrs[k] = a
		s.emit(AddressChanged, l, a, Route{})
	}
	return firstIPv4
}

func (s *state) hasIPv4(index int) bool {
	for k := range s.addrs {
		if k.index == index && k.addr.Is4() {
			return true
		}
	}
	return false
}

func (s *state) removeAddr(a Address) {
	k := keyOf(a)
	if old, known := s.addrs[k]; known {
		delete(s.addrs, k)
		s.emit(AddressRemoved, s.links[a.Index], old, Route{})
	}
	if !a.Prefix.Addr().Is4() {
		return
	}
	// The kernel silently flushes the IPv4 routes of a link that has no
	// IPv4 address left (fib_disable_ip), and the main-table routes whose
	// preferred source is an address no interface has any more
	// (fib_sync_down_addr).
	lastOnLink, gone := true, true
	for _, b := range s.addrs {
		if !b.Prefix.Addr().Is4() {
			continue
		}
		if b.Index == a.Index {
			lastOnLink = false
		}
		if b.Prefix.Addr() == a.Prefix.Addr() {
			gone = false
		}
	}
	s.removeRoutesIf(func(r Route) bool {
		if r.Family != FamilyIPv4 {
			return false
		}
		return (lastOnLink && r.Index == a.Index) ||
			(gone && r.Table == TableMain && r.Src == a.Prefix.Addr())
	})
}

func (s *state) addRoute(r Route) {
	l, ok := s.links[r.Index]
	if !ok || !l.Up {
		return
	}
	if _, known := s.routes[r]; !known {
		s.routes[r] = struct{}{}
		s.emit(RouteAdded, l, Address{}, r)
	}
}

// replaceRoutes removes the routes that a route replacing r's family,
// table and metric took the place of.
func (s *state) replaceRoutes(r Route) {
	s.removeRoutesIf(func(o Route) bool {
		return o != r && o.Family == r.Family && o.Table == r.Table && o.Priority == r.Priority
	})
}

func (s *state) removeRoute(r Route) {
	if _, known := s.routes[r]; known {
		delete(s.routes, r)
		s.emit(RouteRemoved, s.links[r.Index], Address{}, r)
	}
}

// removeAddrsIf removes the addresses for which match is true, in a stable
// order.
func (s *state) removeAddrsIf(match func(Address) bool) {
	found := s.scratchA[:0]
	for _, a := range s.addrs {
		if match(a) {
			found = append(found, a)
		}
	}
	slices.SortFunc(found, compareAddrs)
	for _, a := range found {
		delete(s.addrs, keyOf(a))
		s.emit(AddressRemoved, s.links[a.Index], a, Route{})
	}
	s.scratchA = found[:0]
}

// removeRoutesIf removes the routes for which match is true, in a stable
// order.
func (s *state) removeRoutesIf(match func(Route) bool) {
	found := s.scratchR[:0]
	for r := range s.routes {
		if match(r) {
			found = append(found, r)
		}
	}
	slices.SortFunc(found, compareRoutes)
	for _, r := range found {
		delete(s.routes, r)
		s.emit(RouteRemoved, s.links[r.Index], Address{}, r)
	}
	s.scratchR = found[:0]
}

// snapshot is a complete listing of the kernel's state.
type snapshot struct {
	links  []Link
	addrs  []Address
	routes []Route
}

// sync makes the view equal to snap, appending only the differences as
// updates: first the removals (addresses and routes before their link),
// then new and changed links, then new and changed addresses, then new
// routes. Addresses and routes of links snap does not have are ignored, as
// are routes through links that are down. It appends no Synced.
func (s *state) sync(snap *snapshot) {
	links := make(map[int]Link, len(snap.links))
	for _, l := range snap.links {
		links[l.Index] = l
	}
	addrs := make(map[addrKey]Address, len(snap.addrs))
	for _, a := range snap.addrs {
		if _, ok := links[a.Index]; ok {
			addrs[keyOf(a)] = a
		}
	}
	routes := make(map[Route]struct{}, len(snap.routes))
	for _, r := range snap.routes {
		if l, ok := links[r.Index]; ok && l.Up {
			routes[r] = struct{}{}
		}
	}

	s.removeAddrsIf(func(a Address) bool {
		_, keep := addrs[keyOf(a)]
		return !keep
	})
	s.removeRoutesIf(func(r Route) bool {
		_, keep := routes[r]
		return !keep
	})
	var gone []Link
	for i, l := range s.links {
		if _, keep := links[i]; !keep {
			gone = append(gone, l)
		}
	}
	slices.SortFunc(gone, compareLinks)
	for _, l := range gone {
		delete(s.links, l.Index)
		s.emit(LinkRemoved, l, Address{}, Route{})
	}

	newLinks := slices.SortedFunc(maps.Values(links), compareLinks)
	for _, l := range newLinks {
		if old, known := s.links[l.Index]; !known || old != l {
			s.links[l.Index] = l
			s.emit(LinkChanged, l, Address{}, Route{})
		}
	}
	for _, a := range slices.SortedFunc(maps.Values(addrs), compareAddrs) {
		s.setAddr(a)
	}
	for _, r := range slices.SortedFunc(maps.Keys(routes), compareRoutes) {
		s.addRoute(r)
	}
}

// syncRoutes is sync restricted to the routes.
func (s *state) syncRoutes(routes []Route) {
	want := make(map[Route]struct{}, len(routes))
	for _, r := range routes {
		if l, ok := s.links[r.Index]; ok && l.Up {
			want[r] = struct{}{}
		}
	}
	s.removeRoutesIf(func(r Route) bool {
		_, keep := want[r]
		return !keep
	})
	for _, r := range slices.SortedFunc(maps.Keys(want), compareRoutes) {
		s.addRoute(r)
	}
}

func (s *state) linkList() []Link {
	return slices.SortedFunc(maps.Values(s.links), compareLinks)
}

func (s *state) addrList() []Address {
	return slices.SortedFunc(maps.Values(s.addrs), compareAddrs)
}

func (s *state) routeList() []Route {
	return slices.SortedFunc(maps.Keys(s.routes), compareRoutes)
}

func compareLinks(a, b Link) int { return cmp.Compare(a.Index, b.Index) }

func compareAddrs(a, b Address) int {
	if c := cmp.Compare(a.Index, b.Index); c != 0 {
		return c
	}
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits())
}

func compareRoutes(a, b Route) int {
	if c := cmp.Compare(a.Index, b.Index); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Family, b.Family); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Table, b.Table); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
		return c
	}
	if c := a.Gateway.Compare(b.Gateway); c != 0 {
		return c
	}
	return a.Src.Compare(b.Src)
}
