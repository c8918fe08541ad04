package netmon

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func link(index int, name string, up, carrier bool) Link {
	return Link{Index: index, Name: name, Up: up, Carrier: carrier && up}
}

func addr(index int, prefix string, flags AddrFlags) Address {
	return Address{Index: index, Prefix: netip.MustParsePrefix(prefix), Flags: flags}
}

func route4(index int, gw string, table, prio int) Route {
	r := Route{Index: index, Family: FamilyIPv4, Table: table, Priority: prio}
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return r
}

func route6(index int, gw string, table, prio int) Route {
	r := route4(index, "", table, prio)
	r.Family = FamilyIPv6
	if gw != "" {
		r.Gateway = netip.MustParseAddr(gw)
	}
	return r
}

func newLink(l Link) event      { return event{op: opNewLink, link: l} }
func delLink(index int) event   { return event{op: opDelLink, link: Link{Index: index}} }
func newAddr(a Address) event   { return event{op: opNewAddr, addr: a} }
func delAddr(a Address) event   { return event{op: opDelAddr, addr: a} }
func newRoute(r Route) event    { return event{op: opNewRoute, route: r} }
func delRoute(r Route) event    { return event{op: opDelRoute, route: r} }
func replRoute(r Route) event   { return event{op: opNewRoute, route: r, replace: true} }
func replNoRoute(r Route) event { return event{op: opNewRoute, route: r, replace: true, noRoute: true} }

// applyAll applies the events and returns the updates they produced.
func applyAll(s *state, evs ...event) []Update {
	for i := range evs {
		s.apply(&evs[i])
	}
	out := s.out
	s.out = nil
	return out
}

func u(k Kind, l Link) Update             { return Update{Kind: k, Link: l} }
func ua(k Kind, l Link, a Address) Update { return Update{Kind: k, Link: l, Address: a} }
func ur(k Kind, l Link, r Route) Update   { return Update{Kind: k, Link: l, Route: r} }

func TestStateApply(t *testing.T) {
	eth0 := link(2, "eth0", true, true)
	eth0NoCarrier := link(2, "eth0", true, false)
	eth0Down := link(2, "eth0", false, false)
	eth1 := link(3, "eth1", true, true)
	a4 := addr(2, "10.0.0.1/24", Permanent)
	a4b := addr(2, "10.0.1.1/24", Permanent)
	a6 := addr(2, "fd00::1/64", Permanent|NoDAD)
	a6Tentative := addr(2, "fd00::2/64", Permanent|Tentative)
	a6Ready := addr(2, "fd00::2/64", Permanent)
	r4 := route4(2, "10.0.0.254", TableMain, 0)
	r4t := route4(2, "10.0.0.254", 100, 0)
	r6 := route6(2, "fe80::1", TableMain, 1024)
	r4eth1 := route4(3, "10.1.0.254", TableMain, 10)
	base := []event{newLink(eth0), newLink(eth1), newAddr(a4), newAddr(a6), newRoute(r4), newRoute(r4t), newRoute(r6), newRoute(r4eth1)}

	tests := []struct {
		name  string
		setup []event
		evs   []event
		want  []Update
	}{
		{"new link", nil, []event{newLink(eth0)}, []Update{u(LinkChanged, eth0)}},
		{"same link again", []event{newLink(eth0)}, []event{newLink(eth0), newLink(eth0)}, nil},
		{"rename", []event{newLink(eth0)}, []event{newLink(link(2, "wan", true, true))}, []Update{u(LinkChanged, link(2, "wan", true, true))}},
		{"address on unknown link", nil, []event{newAddr(a4)}, nil},
		{"route on unknown link", nil, []event{newRoute(r4)}, nil},
		{"address added once", []event{newLink(eth0)}, []event{newAddr(a4), newAddr(a4)}, []Update{ua(AddressAdded, eth0, a4)}},
		{"tentative then ready", []event{newLink(eth0)}, []event{newAddr(a6Tentative), newAddr(a6Tentative), newAddr(a6Ready)},
			[]Update{ua(AddressAdded, eth0, a6Tentative), ua(AddressChanged, eth0, a6Ready)}},
		{"IPv6 prefix length change is a change", []event{newLink(eth0), newAddr(a6)}, []event{newAddr(addr(2, "fd00::1/56", Permanent|NoDAD))},
			[]Update{ua(AddressChanged, eth0, addr(2, "fd00::1/56", Permanent|NoDAD))}},
		{"IPv4 prefix length makes another address", []event{newLink(eth0), newAddr(a4)}, []event{newAddr(addr(2, "10.0.0.1/16", Permanent))},
			[]Update{ua(AddressAdded, eth0, addr(2, "10.0.0.1/16", Permanent))}},
		{"address removed with what was known", []event{newLink(eth0), newAddr(a6Tentative)}, []event{delAddr(a6Ready), delAddr(a6Ready)},
			[]Update{ua(AddressRemoved, eth0, a6Tentative)}},
		{"route added once", []event{newLink(eth0)}, []event{newRoute(r4), newRoute(r4)}, []Update{ur(RouteAdded, eth0, r4)}},
		{"route on a down link", []event{newLink(eth0Down)}, []event{newRoute(r4)}, nil},
		{"route removed once", base, []event{delRoute(r4), delRoute(r4)}, []Update{ur(RouteRemoved, eth0, r4)}},
		{"carrier loss keeps everything", base, []event{newLink(eth0NoCarrier), newLink(eth0)},
			[]Update{u(LinkChanged, eth0NoCarrier), u(LinkChanged, eth0)}},
		{"link down drops its routes, keeps its addresses", base, []event{newLink(eth0Down), newLink(eth0Down)},
			[]Update{u(LinkChanged, eth0Down), ur(RouteRemoved, eth0Down, r4t), ur(RouteRemoved, eth0Down, r4), ur(RouteRemoved, eth0Down, r6)}},
		{"link removal", base, []event{delLink(2), delLink(2), delAddr(a4), delRoute(r6)},
			[]Update{ua(AddressRemoved, eth0, a4), ua(AddressRemoved, eth0, a6),
				ur(RouteRemoved, eth0, r4t), ur(RouteRemoved, eth0, r4), ur(RouteRemoved, eth0, r6), u(LinkRemoved, eth0)}},
		{"replace", base, []event{replRoute(route4(2, "10.0.0.253", TableMain, 0))},
			[]Update{ur(RouteRemoved, eth0, r4), ur(RouteAdded, eth0, route4(2, "10.0.0.253", TableMain, 0))}},
		{"replace with the same", base, []event{replRoute(r4)}, nil},
		{"replace across links", base, []event{replRoute(route4(3, "10.1.0.253", TableMain, 0))},
			[]Update{ur(RouteRemoved, eth0, r4), ur(RouteAdded, eth1, route4(3, "10.1.0.253", TableMain, 0))}},
		{"replace by a blackhole", base, []event{replNoRoute(Route{Family: FamilyIPv4, Table: TableMain, Priority: 10})},
			[]Update{ur(RouteRemoved, eth1, r4eth1)}},
		{"last IPv4 address takes the IPv4 routes", base, []event{delAddr(a4)},
			[]Update{ua(AddressRemoved, eth0, a4), ur(RouteRemoved, eth0, r4t), ur(RouteRemoved, eth0, r4)}},
		{"not the last IPv4 address", append(slices.Clone(base), newAddr(a4b)), []event{delAddr(a4)},
			[]Update{ua(AddressRemoved, eth0, a4)}},
		{"the last IPv6 address takes nothing", base, []event{delAddr(a6)}, []Update{ua(AddressRemoved, eth0, a6)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newState()
			applyAll(s, tt.setup...)
			got := applyAll(s, tt.evs...)
			if !slices.Equal(got, tt.want) {
				t.Errorf("updates:\n%s\nwant:\n%s", fmtUpdates(got), fmtUpdates(tt.want))
			}
			checkInvariants(t, s)
		})
	}
}

func TestStatePreferredSource(t *testing.T) {
	eth0, eth1 := link(2, "eth0", true, true), link(3, "eth1", true, true)
	withSrc := func(r Route, src string) Route { r.Src = netip.MustParseAddr(src); return r }
	main := withSrc(route4(2, "10.0.0.254", TableMain, 5), "10.0.0.1")
	other := withSrc(route4(2, "10.0.0.254", 100, 5), "10.0.0.1")
	setup := []event{
		newLink(eth0), newLink(eth1),
		newAddr(addr(2, "10.0.0.1/24", Permanent)), newAddr(addr(2, "10.9.0.1/24", Permanent)),
		newRoute(main), newRoute(other),
	}

	s := newState()
	applyAll(s, setup...)
	got := applyAll(s, delAddr(addr(2, "10.0.0.1/24", Permanent)))
	want := []Update{ua(AddressRemoved, eth0, addr(2, "10.0.0.1/24", Permanent)), ur(RouteRemoved, eth0, main)}
	if !slices.Equal(got, want) {
		t.Errorf("source address gone:\n%s\nwant:\n%s", fmtUpdates(got), fmtUpdates(want))
	}

	// The address is still on another link: the route stays.
	s = newState()
	applyAll(s, append(setup, newAddr(addr(3, "10.0.0.1/32", Permanent)))...)
	got = applyAll(s, delAddr(addr(2, "10.0.0.1/24", Permanent)))
	want = []Update{ua(AddressRemoved, eth0, addr(2, "10.0.0.1/24", Permanent))}
	if !slices.Equal(got, want) {
		t.Errorf("source address elsewhere:\n%s\nwant:\n%s", fmtUpdates(got), fmtUpdates(want))
	}
}

func TestStateRelist(t *testing.T) {
	eth0, eth0Down := link(2, "eth0", true, true), link(2, "eth0", false, false)
	tests := []struct {
		name  string
		setup []event
		ev    event
		want  bool
	}{
		{"new link up", nil, newLink(eth0), false},
		{"link comes up", []event{newLink(eth0Down)}, newLink(eth0), true},
		{"link stays up", []event{newLink(eth0)}, newLink(eth0), false},
		{"link goes down", []event{newLink(eth0)}, newLink(eth0Down), false},
		{"first IPv4 address", []event{newLink(eth0)}, newAddr(addr(2, "10.0.0.1/24", 0)), true},
		{"first IPv4 address again", []event{newLink(eth0), newAddr(addr(2, "10.0.0.1/24", 0))}, newAddr(addr(2, "10.0.0.1/24", 0)), false},
		{"second IPv4 address", []event{newLink(eth0), newAddr(addr(2, "10.0.0.1/24", 0))}, newAddr(addr(2, "10.0.1.1/24", 0)), false},
		{"IPv6 address", []event{newLink(eth0)}, newAddr(addr(2, "fd00::1/64", 0)), false},
	}
	for _, tt := range tests {
		s := newState()
		applyAll(s, tt.setup...)
		if got := s.apply(&tt.ev); got != tt.want {
			t.Errorf("%s: apply = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestStateSync(t *testing.T) {
	eth0, eth1, eth2 := link(2, "eth0", true, true), link(3, "eth1", true, true), link(4, "eth2", false, false)
	s := newState()
	applyAll(s,
		newLink(eth0), newLink(eth1),
		newAddr(addr(2, "10.0.0.1/24", Permanent)), newAddr(addr(2, "fd00::1/64", Permanent|Tentative)),
		newAddr(addr(3, "10.1.0.1/24", Permanent)),
		newRoute(route4(2, "10.0.0.254", TableMain, 0)), newRoute(route4(3, "10.1.0.254", TableMain, 0)),
	)
	eth0NoCarrier := link(2, "eth0", true, false)
	snap := &snapshot{
		links: []Link{eth2, eth0NoCarrier},
		addrs: []Address{
			addr(2, "fd00::1/64", Permanent), addr(2, "10.0.0.1/24", Permanent), addr(4, "10.2.0.1/24", 0),
			addr(9, "10.9.0.1/24", 0), // on a link the listing does not have
		},
		routes: []Route{
			route4(2, "10.0.0.254", TableMain, 0), route6(2, "fe80::1", TableMain, 1024),
			route4(4, "10.2.0.254", TableMain, 0), // through a link that is down
			route4(9, "10.9.0.254", TableMain, 0), // through a link the listing does not have
		},
	}
	want := []Update{
		ua(AddressRemoved, eth1, addr(3, "10.1.0.1/24", Permanent)),
		ur(RouteRemoved, eth1, route4(3, "10.1.0.254", TableMain, 0)),
		u(LinkRemoved, eth1),
		u(LinkChanged, eth0NoCarrier),
		u(LinkChanged, eth2),
		ua(AddressChanged, eth0NoCarrier, addr(2, "fd00::1/64", Permanent)),
		ua(AddressAdded, eth2, addr(4, "10.2.0.1/24", 0)),
		ur(RouteAdded, eth0NoCarrier, route6(2, "fe80::1", TableMain, 1024)),
	}
	s.sync(snap)
	got := s.out
	s.out = nil
	if !slices.Equal(got, want) {
		t.Errorf("sync:\n%s\nwant:\n%s", fmtUpdates(got), fmtUpdates(want))
	}
	checkInvariants(t, s)

	s.sync(snap)
	if len(s.out) != 0 {
		t.Errorf("sync to the same state: %s", fmtUpdates(s.out))
	}

	s.syncRoutes([]Route{route4(2, "10.0.0.253", TableMain, 0), route4(4, "10.2.0.254", TableMain, 0)})
	want = []Update{
		ur(RouteRemoved, eth0NoCarrier, route4(2, "10.0.0.254", TableMain, 0)),
		ur(RouteRemoved, eth0NoCarrier, route6(2, "fe80::1", TableMain, 1024)),
		ur(RouteAdded, eth0NoCarrier, route4(2, "10.0.0.253", TableMain, 0)),
	}
	if !slices.Equal(s.out, want) {
		t.Errorf("syncRoutes:\n%s\nwant:\n%s", fmtUpdates(s.out), fmtUpdates(want))
	}
}

func fmtUpdates(us []Update) string {
	var b strings.Builder
	for _, u := range us {
		fmt.Fprintf(&b, "\t%v\n", u)
	}
	return b.String()
}

// checkInvariants fails the test unless every address and route belongs
// to a known link, and every route to a link that is up.
func checkInvariants(t *testing.T, s *state) {
	t.Helper()
	for k, a := range s.addrs {
		if _, ok := s.links[a.Index]; !ok {
			t.Errorf("address %v on unknown link", a)
		}
		if keyOf(a) != k {
			t.Errorf("address %v under key %v", a, k)
		}
	}
	for r := range s.routes {
		if l, ok := s.links[r.Index]; !ok || !l.Up {
			t.Errorf("route %v on link %v (known %v)", r, l, ok)
		}
	}
}

// consumer rebuilds the view from updates alone, as the daemon does, and
// checks that every update is news.
type consumer struct {
	links  map[int]Link
	addrs  map[addrKey]Address
	routes map[Route]bool
}

func (c *consumer) take(u Update) error {
	switch u.Kind {
	case LinkChanged:
		if old, ok := c.links[u.Link.Index]; ok && old == u.Link {
			return fmt.Errorf("%v changes nothing", u)
		}
		c.links[u.Link.Index] = u.Link
	case LinkRemoved:
		if c.links[u.Link.Index] != u.Link {
			return fmt.Errorf("%v: link known as %v", u, c.links[u.Link.Index])
		}
		for _, a := range c.addrs {
			if a.Index == u.Link.Index {
				return fmt.Errorf("%v before the removal of %v", u, a)
			}
		}
		for r := range c.routes {
			if r.Index == u.Link.Index {
				return fmt.Errorf("%v before the removal of %v", u, r)
			}
		}
		delete(c.links, u.Link.Index)
	case AddressAdded, AddressChanged, AddressRemoved:
		if c.links[u.Address.Index] != u.Link {
			return fmt.Errorf("%v: link known as %v", u, c.links[u.Address.Index])
		}
		old, ok := c.addrs[keyOf(u.Address)]
		switch {
		case u.Kind == AddressAdded && ok, u.Kind != AddressAdded && !ok:
			return fmt.Errorf("%v: known as %v (%v)", u, old, ok)
		case u.Kind == AddressChanged && old == u.Address, u.Kind == AddressRemoved && old != u.Address:
			return fmt.Errorf("%v: known as %v", u, old)
		}
		if u.Kind == AddressRemoved {
			delete(c.addrs, keyOf(u.Address))
		} else {
			c.addrs[keyOf(u.Address)] = u.Address
		}
	case RouteAdded, RouteRemoved:
		if c.links[u.Route.Index] != u.Link {
			return fmt.Errorf("%v: link known as %v", u, c.links[u.Route.Index])
		}
		if c.routes[u.Route] == (u.Kind == RouteAdded) {
			return fmt.Errorf("%v: known %v", u, c.routes[u.Route])
		}
		if u.Kind == RouteAdded {
			c.routes[u.Route] = true
		} else {
			delete(c.routes, u.Route)
		}
	default:
		return fmt.Errorf("unexpected %v", u)
	}
	return nil
}

// TestStateReplay applies random events and listings and checks that a
// consumer that sees only the updates ends with exactly the monitor's view,
// and never gets an update that changes nothing.
func TestStateReplay(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randLink := func() Link {
		return link(1+rng.IntN(4), fmt.Sprintf("if%d", rng.IntN(2)), rng.IntN(4) > 0, rng.IntN(3) > 0)
	}
	randAddr := func() Address {
		i := 1 + rng.IntN(4)
		if rng.IntN(2) == 0 {
			return addr(i, fmt.Sprintf("10.%d.0.%d/%d", i, 1+rng.IntN(3), 16+8*rng.IntN(2)), AddrFlags(rng.IntN(2))*Permanent)
		}
		return addr(i, fmt.Sprintf("fd00:%d::%d/64", i, 1+rng.IntN(3)), AddrFlags(rng.IntN(2))*Tentative)
	}
	randRoute := func() Route {
		r := route4(1+rng.IntN(4), fmt.Sprintf("10.0.0.%d", rng.IntN(3)), []int{TableMain, 100}[rng.IntN(2)], rng.IntN(2)*10)
		if rng.IntN(3) == 0 {
			r.Family, r.Gateway = FamilyIPv6, netip.MustParseAddr(fmt.Sprintf("fe80::%d", rng.IntN(3)))
		}
		if rng.IntN(4) == 0 {
			r.Src = netip.MustParseAddr(fmt.Sprintf("10.%d.0.1", r.Index))
		}
		return r
	}
	for round := range 200 {
		s := newState()
		c := &consumer{links: map[int]Link{}, addrs: map[addrKey]Address{}, routes: map[Route]bool{}}
		for step := range 60 {
			var e event
			switch rng.IntN(9) {
			case 0:
				e = newLink(randLink())
			case 1:
				e = delLink(1 + rng.IntN(4))
			case 2, 3:
				e = newAddr(randAddr())
			case 4:
				e = delAddr(randAddr())
			case 5:
				e = newRoute(randRoute())
			case 6:
				e = replRoute(randRoute())
			case 7:
				e = delRoute(randRoute())
			case 8:
				var snap snapshot
				for range rng.IntN(5) {
					snap.links = append(snap.links, randLink())
				}
				for range rng.IntN(6) {
					snap.addrs = append(snap.addrs, randAddr())
				}
				for range rng.IntN(6) {
					snap.routes = append(snap.routes, randRoute())
				}
				s.sync(&snap)
			}
			if e.op != 0 {
				s.apply(&e)
			}
			for _, up := range s.out {
				if err := c.take(up); err != nil {
					t.Fatalf("round %d step %d: %v", round, step, err)
				}
			}
			s.out = s.out[:0]
			checkInvariants(t, s)
		}
		if got := slices.SortedFunc(func(yield func(Link) bool) {
			for _, l := range c.links {
				if !yield(l) {
					return
				}
			}
		}, compareLinks); !slices.Equal(got, s.linkList()) {
			t.Fatalf("round %d: consumer links %v, monitor %v", round, got, s.linkList())
		}
		if len(c.addrs) != len(s.addrs) || len(c.routes) != len(s.routes) {
			t.Fatalf("round %d: consumer has %d addresses, %d routes; monitor %d, %d", round, len(c.addrs), len(c.routes), len(s.addrs), len(s.routes))
		}
		for k, a := range s.addrs {
			if c.addrs[k] != a {
				t.Fatalf("round %d: consumer has %v for %v", round, c.addrs[k], a)
			}
		}
		for r := range s.routes {
			if !c.routes[r] {
				t.Fatalf("round %d: consumer lacks %v", round, r)
			}
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{LinkChanged.String(), "LinkChanged"},
		{Synced.String(), "Synced"},
		{Kind(0).String(), "Kind(0)"},
		{Kind(99).String(), "Kind(99)"},
		{(Permanent | NoDAD | Tentative).String(), "nodad,tentative,permanent"},
		{AddrFlags(0).String(), ""},
		{(Secondary | 0x10000).String(), "secondary,0x10000"},
		{addr(2, "fd00::1/64", Temporary|Deprecated).String(), "fd00::1/64 if2 scope 0 temporary,deprecated"},
		{addr(2, "10.0.0.1/24", Secondary).String(), "10.0.0.1/24 if2 scope 0 secondary"},
		{link(2, "eth0", true, false).String(), "eth0(2) up no-carrier"},
		{route6(2, "fe80::1", TableMain, 1024).String(), "default6 via fe80::1 if2 table 254 metric 1024"},
		{Update{Kind: Synced}.String(), "Synced"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestLinkLocal(t *testing.T) {
	for _, tt := range []struct {
		a    Address
		want bool
	}{
		{addr(1, "fe80::1/64", 0), true},
		{addr(1, "169.254.3.4/16", 0), true},
		{Address{Index: 1, Prefix: netip.MustParsePrefix("10.0.0.1/24"), Scope: ScopeLink}, true},
		{addr(1, "10.0.0.1/24", 0), false},
		{addr(1, "fd00::1/64", 0), false},
		{Address{Index: 1, Prefix: netip.MustParsePrefix("127.0.0.1/8"), Scope: ScopeHost}, false},
	} {
		if got := tt.a.LinkLocal(); got != tt.want {
			t.Errorf("%v.LinkLocal() = %v, want %v", tt.a, got, tt.want)
		}
	}
}

// BenchmarkApplyDuplicate measures the path most notifications take: one
// that changes nothing the monitor tracks.
func BenchmarkApplyDuplicate(b *testing.B) {
	eth0 := link(2, "eth0", true, true)
	for _, bc := range []struct {
		name string
		e    event
	}{
		{"link", newLink(eth0)},
		{"address", newAddr(addr(2, "fd00::1/64", Permanent))},
		{"route", newRoute(route4(2, "10.0.0.254", TableMain, 0))},
		{"replace", replRoute(route4(2, "10.0.0.254", TableMain, 0))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := newState()
			applyAll(s, newLink(eth0), newAddr(addr(2, "10.0.0.1/24", Permanent)), newAddr(addr(2, "fd00::1/64", Permanent)),
				newRoute(route4(2, "10.0.0.254", TableMain, 0)), newRoute(route6(2, "fe80::1", TableMain, 1024)))
			e := bc.e
			b.ReportAllocs()
			for b.Loop() {
				s.apply(&e)
			}
			if len(s.out) != 0 {
				b.Fatalf("duplicate produced %v", s.out)
			}
		})
	}
}

// BenchmarkApplyChange measures a change that is delivered: an address
// flipping between tentative and not.
func BenchmarkApplyChange(b *testing.B) {
	s := newState()
	applyAll(s, newLink(link(2, "eth0", true, true)))
	evs := [2]event{newAddr(addr(2, "fd00::1/64", Permanent|Tentative)), newAddr(addr(2, "fd00::1/64", Permanent))}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.apply(&evs[i&1])
		s.out = s.out[:0]
		i++
	}
}
