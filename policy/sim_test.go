package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// This file has the fixtures, a small simulator of what the service and the
// kernel do with the actions, and the convergence property tests.

var (
	sub       = pm.FlagSubflow
	subBackup = pm.FlagSubflow | pm.FlagBackup

	c0v4 = Address{Interface: "c0", Ifindex: 2, Addr: netip.MustParseAddr("10.55.0.1"), Flags: sub}
	c1v4 = Address{Interface: "c1", Ifindex: 3, Addr: netip.MustParseAddr("10.55.1.1"), Flags: sub}
	c2v4 = Address{Interface: "c2", Ifindex: 4, Addr: netip.MustParseAddr("10.55.2.1"), Flags: sub}
	c0v6 = Address{Interface: "c0", Ifindex: 2, Addr: netip.MustParseAddr("fd00:55:0::1"), Flags: sub}
	c1v6 = Address{Interface: "c1", Ifindex: 3, Addr: netip.MustParseAddr("fd00:55:1::1"), Flags: sub}
	c2v6 = Address{Interface: "c2", Ifindex: 4, Addr: netip.MustParseAddr("fd00:55:2::1"), Flags: sub}

	srv4 = netip.MustParseAddrPort("10.55.0.2:8080")
	srv6 = netip.MustParseAddrPort("[fd00:55:0::2]:8080")
)

// ap returns the address a with port p.
func ap(a Address, p uint16) netip.AddrPort { return netip.AddrPortFrom(a.Addr, p) }

// with returns a copy of a with other flags.
func with(a Address, flags pm.Flags) Address {
	a.Flags = flags
	return a
}

// client4 is an established IPv4 client-side connection from c0 to srv4
// whose initial subflow is known.
func client4() Connection {
	local := ap(c0v4, 40000)
	return Connection{
		Token: 7, Established: true, Local: local, Remote: srv4,
		Subflows: []Subflow{{Local: local, Remote: srv4, Interface: "c0"}},
	}
}

// createFrom is the CreateSubflow the userspace policies make from a to remote.
func createFrom(a Address, remote netip.AddrPort, backup bool) Action {
	return Action{Kind: CreateSubflow, Token: 7, Local: a.Addr, Interface: a.Interface,
		Ifindex: a.Ifindex, Backup: backup, Remote: remote}
}

// checkActions compares actions with what a test wants.
func checkActions(t *testing.T, got, want []Action) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	// Every action says why; what it says is checked by TestReasons, so
	// the comparison leaves the reasons out.
	for _, a := range got {
		if a.Reason == "" {
			t.Errorf("no reason given for %v", a)
		}
	}
	if fmt.Sprintf("%#v", withoutReasons(got)) != fmt.Sprintf("%#v", withoutReasons(want)) {
		t.Errorf("got %d actions:", len(got))
		for _, a := range got {
			t.Errorf("  %v", a)
		}
		t.Errorf("want %d:", len(want))
		for _, a := range want {
			t.Errorf("  %v", a)
		}
	}
}

func withoutReasons(acts []Action) []Action {
	out := make([]Action, len(acts))
	for i, a := range acts {
		a.Reason = ""
		out[i] = a
	}
	return out
}

// world is the simulated state: the kernel's endpoints and one connection.
// apply carries out actions as the service and kernel would, and fails the
// test on an action they would refuse or a policy must never take.
type world struct {
	v View
	c Connection
	// closeInitial: the policy may close the initial subflow (handover
	// closes a dead one; the others never do).
	closeInitial  bool
	initialClosed bool // it did
}

// duplicate reports whether a subflow from local to remote exists: the
// initial subflow's pair counts while the initial subflow is there (a
// world may leave it out of Subflows: then the service does not know it).
func duplicate(c *Connection, local netip.Addr, remote netip.AddrPort, initialClosed bool) bool {
	if initialClosed {
		return slices.ContainsFunc(c.Subflows, func(s Subflow) bool {
			return pm.CanonicalAddr(s.Local.Addr()) == local && pm.CanonicalAddrPort(s.Remote) == remote
		})
	}
	return joined(c, local, remote)
}

func (w *world) apply(t *testing.T, acts []Action) {
	t.Helper()
	for _, a := range acts {
		switch a.Kind {
		case AddEndpoint, RemoveEndpoint, SetEndpointFlags:
			w.applyEndpoint(t, a)
		default:
			w.applyConnection(t, a)
		}
	}
}

func (w *world) applyEndpoint(t *testing.T, a Action) {
	t.Helper()
	eps := w.v.Endpoints
	i := slices.IndexFunc(eps, func(e Endpoint) bool { return e.ID == a.Endpoint.ID })
	if a.Kind != AddEndpoint {
		switch {
		case i < 0:
			t.Fatalf("%v: no endpoint %d", a, a.Endpoint.ID)
		case !eps[i].Owned():
			t.Fatalf("%v: touches an endpoint the policy does not own", a)
		case a.Kind == RemoveEndpoint:
			w.v.Endpoints = slices.Delete(eps, i, i+1)
		default: // the kernel changes backup and fullmesh only
			if a.Endpoint.Flags&pm.FlagFullmesh != 0 && eps[i].Flags&pm.FlagSignal != 0 {
				t.Fatalf("%v: the kernel refuses fullmesh on a signal endpoint", a)
			}
			const changeable = pm.FlagBackup | pm.FlagFullmesh
			eps[i].Flags = eps[i].Flags&^changeable | a.Endpoint.Flags&changeable
		}
		return
	}
	e := a.Endpoint
	if e.ID != 0 || !e.Owned() {
		t.Fatalf("%v: want id 0 and owned", a)
	}
	if _, ok := lookup(w.v.Addresses, e.Addr); !ok {
		t.Fatalf("%v: address not usable", a)
	}
	if e.Flags&pm.FlagSignal != 0 && e.Flags&pm.FlagFullmesh != 0 {
		t.Fatalf("%v: the kernel refuses signal with fullmesh", a)
	}
	if j := slices.IndexFunc(eps, func(o Endpoint) bool { return pm.CanonicalAddr(o.Addr) == pm.CanonicalAddr(e.Addr) }); j >= 0 {
		if eps[j].Owned() || eps[j].Flags&pm.FlagImplicit == 0 {
			t.Fatalf("%v: the kernel refuses a second endpoint for %v", a, e.Addr)
		}
		e.ID = eps[j].ID // the kernel replaces an implicit endpoint
		eps[j] = e
		return
	}
	if len(eps) >= MaxEndpoints {
		t.Fatalf("%v: the kernel refuses a %dth endpoint", a, len(eps)+1)
	}
	for id := uint8(1); ; id++ {
		if !slices.ContainsFunc(eps, func(o Endpoint) bool { return o.ID == id }) {
			e.ID = id
			break
		}
	}
	w.v.Endpoints = append(eps, e)
}

func (w *world) applyConnection(t *testing.T, a Action) {
	t.Helper()
	c := &w.c
	if a.Token != c.Token {
		t.Fatalf("%v: wrong token (want %d)", a, c.Token)
	}
	switch a.Kind {
	case CreateSubflow:
		if _, ok := lookup(w.v.Addresses, a.Local); !ok || !c.sameFamily(a.Local) || !c.sameFamily(a.Remote.Addr()) {
			t.Fatalf("%v: local address not usable or family differs", a)
		}
		if duplicate(c, pm.CanonicalAddr(a.Local), pm.CanonicalAddrPort(a.Remote), w.initialClosed) {
			t.Fatalf("%v: duplicate subflow in %+v", a, *c)
		}
		c.Subflows = append(c.Subflows, Subflow{Local: netip.AddrPortFrom(a.Local, a.LocalPort),
			Remote: a.Remote, Interface: a.Interface, Backup: a.Backup, Pending: true})
	case DestroySubflow:
		i := subflowOf(c, a)
		switch {
		case i < 0:
			t.Fatalf("%v: no such subflow", a)
		case c.isInitial(c.Subflows[i]) && !w.closeInitial:
			t.Fatalf("%v: destroys the initial subflow", a)
		case c.isInitial(c.Subflows[i]):
			w.initialClosed = true
		}
		c.Subflows = slices.Delete(c.Subflows, i, i+1)
	case SetSubflowBackup:
		i := subflowOf(c, a)
		switch {
		case i < 0:
			t.Fatalf("%v: no such subflow", a)
		case c.Subflows[i].Pending:
			t.Fatalf("%v: the subflow is pending (the kernel does not know its port)", a)
		case c.Subflows[i].Backup == a.Backup:
			t.Fatalf("%v: the flag is set already", a)
		}
		c.Subflows[i].Backup = a.Backup
	case Announce:
		if a.ID != 0 || announced(c.Announced, pm.CanonicalAddr(a.Local)) {
			t.Fatalf("%v: want id 0 and an address not yet announced", a)
		}
		if _, ok := lookup(w.v.Addresses, a.Local); !ok {
			t.Fatalf("%v: address not usable", a)
		}
		id := uint8(1)
		for slices.ContainsFunc(c.Announced, func(p PeerAddress) bool { return p.ID == id }) {
			id++
		}
		c.Announced = append(c.Announced, PeerAddress{ID: id, Addr: a.Local, Port: a.LocalPort})
	case Withdraw:
		i := slices.IndexFunc(c.Announced, func(p PeerAddress) bool { return p.ID == a.ID })
		if i < 0 {
			t.Fatalf("%v: no announcement %d", a, a.ID)
		}
		c.Announced = slices.Delete(c.Announced, i, i+1)
	default:
		t.Fatalf("%v: unexpected", a)
	}
}

// subflowOf returns the index of the subflow action a names, or -1.
func subflowOf(c *Connection, a Action) int {
	return slices.IndexFunc(c.Subflows, func(s Subflow) bool {
		return s.Local == netip.AddrPortFrom(a.Local, a.LocalPort) && s.Remote == a.Remote
	})
}

// establish turns the pending subflows into established ones with a port.
func (w *world) establish() {
	for i, s := range w.c.Subflows {
		if s.Pending {
			w.c.Subflows[i].Pending = false
			w.c.Subflows[i].Local = netip.AddrPortFrom(s.Local.Addr(), uint16(50000+i))
		}
	}
}

// extra counts the connection's subflows other than the initial one.
func (w *world) extra() int {
	n := 0
	for _, s := range w.c.Subflows {
		if !w.c.isInitial(s) {
			n++
		}
	}
	return n
}

// gen makes random worlds from a small universe, so that addresses,
// endpoints and subflows collide often.
type gen struct{ r *rand.Rand }

var genIfaces = []struct {
	name  string
	index int
}{{"c0", 2}, {"c1", 3}, {"c2", 4}, {"wlan0", 9}}

// addrPool is every address gen uses: per interface two IPv4 and two IPv6.
func addrPool() []Address {
	var pool []Address
	for i, ifc := range genIfaces {
		for host := 1; host <= 2; host++ {
			for _, s := range []string{fmt.Sprintf("10.55.%d.%d", i, host), fmt.Sprintf("fd00:55:%d::%d", i, host)} {
				pool = append(pool, Address{Interface: ifc.name, Ifindex: ifc.index, Addr: netip.MustParseAddr(s)})
			}
		}
	}
	return pool
}

var flagChoices = []pm.Flags{
	pm.FlagSubflow, pm.FlagSubflow | pm.FlagBackup, pm.FlagBackup | pm.FlagSubflow, pm.FlagSignal,
	pm.FlagSignal | pm.FlagBackup, pm.FlagSubflow | pm.FlagFullmesh, pm.FlagSubflow | pm.FlagFullmesh | pm.FlagBackup, 0,
}

func (g gen) flags() pm.Flags { return flagChoices[g.r.IntN(len(flagChoices))] }

func (g gen) view() View {
	var v View
	for _, a := range addrPool() {
		if g.r.IntN(2) == 0 {
			a.Flags = g.flags()
			v.Addresses = append(v.Addresses, a)
			if g.r.IntN(12) == 0 { // the same address on another interface
				ifc := genIfaces[g.r.IntN(len(genIfaces))]
				a.Interface, a.Ifindex = ifc.name, ifc.index
				v.Addresses = append(v.Addresses, a)
			}
		}
	}
	prefs := map[string]Preference{} // one per interface
	for i := range v.Addresses {
		p, ok := prefs[v.Addresses[i].Interface]
		if !ok {
			p = Preference(1 + g.r.IntN(3)) // cheap, expensive or backup
			prefs[v.Addresses[i].Interface] = p
		}
		v.Addresses[i].Preference = p
	}
	v.Now = simNow
	v.Handover = HandoverSettings{Cold: g.r.IntN(2) == 0, Hysteresis: 3 * time.Second}
	if g.r.IntN(3) == 0 {
		g.r.Shuffle(len(v.Addresses), func(i, j int) { v.Addresses[i], v.Addresses[j] = v.Addresses[j], v.Addresses[i] })
	} else {
		slices.SortStableFunc(v.Addresses, compareAddresses)
	}
	for i, a := range addrPool() {
		if len(v.Endpoints) == MaxEndpoints || g.r.IntN(3) != 0 {
			continue
		}
		e := Endpoint{Address: pm.Address{ID: uint8(10 + i), Addr: a.Addr, Flags: g.flags(), Ifindex: int32(a.Ifindex)}, Origin: OriginExternal}
		if g.r.IntN(2) == 0 {
			e.Origin = OriginPolicy
		}
		switch g.r.IntN(8) {
		case 0:
			e.Ifindex = 42 // the link was re-created
		case 1:
			e.Port = 1234
		case 2:
			if !e.Owned() {
				e.Flags = pm.FlagImplicit
			}
		}
		v.Endpoints = append(v.Endpoints, e)
	}
	v.SubflowLimit = uint32(g.r.IntN(9))
	return v
}

func (g gen) connection(v View) Connection {
	pool := addrPool()
	v6 := g.r.IntN(2) == 0
	var family []Address
	for _, a := range pool {
		if a.Addr.Is6() == v6 {
			family = append(family, a)
		}
	}
	pick := func() Address { return family[g.r.IntN(len(family))] }
	remotes := []netip.AddrPort{srv4, netip.MustParseAddrPort("10.66.0.2:8080"), netip.MustParseAddrPort("10.66.1.2:0")}
	if v6 {
		remotes = []netip.AddrPort{srv6, netip.MustParseAddrPort("[fd00:66::2]:8080"), netip.MustParseAddrPort("[fd00:66:1::2]:0")}
	}
	c := Connection{
		Token: g.r.Uint32(), ServerSide: g.r.IntN(3) == 0, Established: g.r.IntN(8) != 0,
		Local: netip.AddrPortFrom(pick().Addr, 40000), Remote: remotes[0],
	}
	if !v6 && g.r.IntN(6) == 0 { // from a dual-stack listener
		c.Local = netip.AddrPortFrom(netip.AddrFrom16(c.Local.Addr().As16()), c.Local.Port())
		c.Remote = netip.AddrPortFrom(netip.AddrFrom16(c.Remote.Addr().As16()), c.Remote.Port())
	}
	if g.r.IntN(4) != 0 {
		c.Subflows = append(c.Subflows, Subflow{Local: c.Local, Remote: c.Remote})
	}
	defer func() { // the established subflows' health, as the service probes it
		for i := range c.Subflows {
			s := &c.Subflows[i]
			switch {
			case s.Pending:
			case g.r.IntN(4) == 0:
				s.Stalled = true
			case g.r.IntN(3) != 0:
				s.HealthySince = simNow.Add(-time.Duration(g.r.IntN(6000)) * time.Millisecond)
			}
			s.Backup = g.r.IntN(3) == 0
		}
	}()
	for range g.r.IntN(4) {
		l, r := pick(), remotes[g.r.IntN(len(remotes))]
		if r.Port() == 0 {
			r = netip.AddrPortFrom(r.Addr(), c.Remote.Port())
		}
		if joined(&c, pm.CanonicalAddr(l.Addr), pm.CanonicalAddrPort(r)) {
			continue
		}
		s := Subflow{Local: netip.AddrPortFrom(l.Addr, uint16(41000+len(c.Subflows))), Remote: r, Interface: l.Interface}
		if g.r.IntN(3) == 0 {
			s.Pending, s.Local = true, netip.AddrPortFrom(l.Addr, 0)
		}
		c.Subflows = append(c.Subflows, s)
	}
	for i, r := range remotes[1:] {
		if g.r.IntN(2) == 0 {
			c.PeerAddresses = append(c.PeerAddresses, PeerAddress{ID: uint8(i + 1), Addr: r.Addr(), Port: r.Port()})
		}
	}
	if g.r.IntN(5) == 0 { // the other family, and the initial address again
		c.PeerAddresses = append(c.PeerAddresses, PeerAddress{ID: 9, Addr: netip.MustParseAddr("10.77.0.2")},
			PeerAddress{ID: 8, Addr: netip.MustParseAddr("fd00:77::2")}, PeerAddress{ID: 7, Addr: c.Remote.Addr()})
	}
	for _, a := range family {
		if g.r.IntN(5) == 0 && !announced(c.Announced, a.Addr) {
			c.Announced = append(c.Announced, PeerAddress{ID: uint8(20 + len(c.Announced)), Addr: a.Addr})
		}
		if g.r.IntN(6) == 0 {
			c.Failed = append(c.Failed, netip.AddrPortFrom(a.Addr, 0))
		}
	}
	return c
}

// simNow is the time of the random worlds' decisions.
var simNow = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

// TestConverges checks, on random worlds, that every policy's actions are
// ones the kernel accepts and the policy may take (apply fails on a removed
// or changed endpoint the policy does not own, a destroyed initial subflow,
// a duplicate, an unusable address), that the subflow limit holds, and that once they took
// effect (and again once the pending subflows came up) the policy wants
// nothing more.
func TestConverges(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			p, err := New(name)
			if err != nil {
				t.Fatal(err)
			}
			g := gen{rand.New(rand.NewPCG(1, uint64(len(name))))}
			acted := 0
			for i := range 3000 {
				v := g.view()
				w := &world{v: v, c: g.connection(v), closeInitial: name == NameHandover}
				// To the handover policy an initial subflow missing from
				// Subflows is closed, as the service presents it.
				w.initialClosed = name == NameHandover && !slices.ContainsFunc(w.c.Subflows, w.c.isInitial)
				before := w.extra()

				acts := slices.Concat(p.Endpoints(w.v), p.Connection(w.v, w.c))
				acted += len(acts)
				w.apply(t, acts)
				if after := w.extra(); after > max(before, int(w.v.SubflowLimit)) {
					t.Fatalf("world %d: %d extra subflows, limit %d (%d before)", i, after, w.v.SubflowLimit, before)
				}
				more := slices.Concat(p.Endpoints(w.v), p.Connection(w.v, w.c))
				if name == NameHandover && len(more) > 0 && !slices.ContainsFunc(more, func(a Action) bool {
					return a.Kind != SetSubflowBackup && a.Kind != DestroySubflow
				}) {
					// Moving back, the standby is demoted or closed one
					// decision after the cheap subflow is promoted.
					w.apply(t, more)
					more = slices.Concat(p.Endpoints(w.v), p.Connection(w.v, w.c))
				}
				if len(more) > 0 {
					t.Fatalf("world %d: not converged after %v:\nview %+v\nconn %+v\nwants %v", i, acts, w.v, w.c, more)
				}
				// A pending subflow from an address that is not usable can
				// only be destroyed once it is up (its port is known), which
				// may make room for another subflow, and one whose address's
				// backup flag changed while it was pending gets its flag set
				// once it is up: two more rounds at most.
				for round := 1; ; round++ {
					w.establish()
					more := slices.Concat(p.Endpoints(w.v), p.Connection(w.v, w.c))
					if len(more) == 0 {
						break
					}
					if round == 3 || round == 1 && !slices.ContainsFunc(more, func(a Action) bool { return a.Kind == DestroySubflow || a.Kind == SetSubflowBackup }) {
						t.Fatalf("world %d round %d: not converged after %v:\nview %+v\nconn %+v\nwants %v", i, round, acts, w.v, w.c, more)
					}
					w.apply(t, more)
				}
			}
			if acted == 0 && name != NameNone {
				t.Errorf("%s never acted on 3000 random worlds", name)
			}
		})
	}
}
