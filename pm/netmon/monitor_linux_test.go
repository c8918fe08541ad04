package netmon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// waitTimeout bounds every wait for an update: a missing update fails the
// test instead of hanging it. IPv6 duplicate address detection takes about
// a second.
const waitTimeout = 10 * time.Second

// newNS returns a fresh namespace in which new interfaces get no IPv6
// link-local address, so that the tests see only the addresses they add.
func newNS(t *testing.T) *pmtest.Host {
	t.Helper()
	h := pmtest.NewNamespace(t)
	h.Run(t, "sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1")
	return h
}

// watcher reads a monitor's updates for a test.
type watcher struct {
	t *testing.T
	h *pmtest.Host
	m *Monitor
}

// watch starts a monitor on h's namespace, and reads its initial snapshot
// up to the Synced, which it returns without the Synced. The monitor is
// stopped at the end of the test, and must then end with context.Canceled.
func watch(t *testing.T, h *pmtest.Host, hk hooks) (*watcher, []Update) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := start(ctx, Options{NetNS: h.NSFD()}, hk)
	if err != nil {
		cancel()
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		timeout := time.After(waitTimeout)
		for {
			select {
			case _, ok := <-m.Updates():
				if !ok {
					if err := m.Err(); !errors.Is(err, context.Canceled) {
						t.Errorf("after cancel, Err() = %v, want context.Canceled", err)
					}
					return
				}
			case <-timeout:
				t.Errorf("updates not closed %v after cancel", waitTimeout)
				return
			}
		}
	})
	w := &watcher{t: t, h: h, m: m}
	return w, w.untilSynced()
}

// next returns the next update, failing the test if none comes in time.
func (w *watcher) next() Update {
	w.t.Helper()
	select {
	case u, ok := <-w.m.Updates():
		if !ok {
			w.t.Fatalf("updates closed: %v", w.m.Err())
		}
		return u
	case <-time.After(waitTimeout):
		w.t.Fatalf("no update within %v", waitTimeout)
	}
	panic("unreachable")
}

// untilSynced returns the updates up to the next Synced, which it consumes.
func (w *watcher) untilSynced() []Update {
	w.t.Helper()
	var us []Update
	for {
		u := w.next()
		if u.Kind == Synced {
			return us
		}
		us = append(us, u)
	}
}

// expect reads len(want) updates and fails unless they are want, in any
// order.
func (w *watcher) expect(want ...Update) {
	w.t.Helper()
	got := make([]Update, len(want))
	for i := range got {
		got[i] = w.next()
	}
	if !sameUpdates(got, want) {
		w.t.Fatalf("updates:\n%s\nwant (any order):\n%s", fmtUpdates(got), fmtUpdates(want))
	}
}

// expectInOrder reads len(want) updates and fails unless they are want.
func (w *watcher) expectInOrder(want ...Update) {
	w.t.Helper()
	for i, wu := range want {
		if u := w.next(); u != wu {
			w.t.Fatalf("update %d: got %v, want %v", i, u, wu)
		}
	}
}

func sameUpdates(a, b []Update) bool {
	if len(a) != len(b) {
		return false
	}
	rest := slices.Clone(b)
	for _, u := range a {
		i := slices.Index(rest, u)
		if i < 0 {
			return false
		}
		rest = slices.Delete(rest, i, i+1)
	}
	return true
}

// link returns the link named name as the kernel has it.
func (w *watcher) link(name string) Link {
	w.t.Helper()
	for _, l := range kernelView(w.t, w.h).links {
		if l.Name == name {
			return l
		}
	}
	w.t.Fatalf("no link %s in %s", name, w.h.Name)
	return Link{}
}

// run runs a command in the namespace.
func (w *watcher) run(args ...string) {
	w.t.Helper()
	w.h.Run(w.t, args...)
}

// checkView fails the test unless the monitor's view is the kernel's,
// as vishvananda/netlink lists it.
func (w *watcher) checkView() {
	w.t.Helper()
	k := kernelView(w.t, w.h)
	if got := w.m.Links(); !slices.Equal(got, k.links) {
		w.t.Errorf("Links() = %v\nkernel has %v", got, k.links)
	}
	if got := w.m.Addresses(); !slices.Equal(got, k.addrs) {
		w.t.Errorf("Addresses() = %v\nkernel has %v", got, k.addrs)
	}
	if got := w.m.DefaultRoutes(); !slices.Equal(got, k.routes) {
		w.t.Errorf("DefaultRoutes() = %v\nkernel has %v", got, k.routes)
	}
}

// kernelView lists the namespace's links, addresses and live default routes
// with vishvananda/netlink, an decoder independent of the monitor's, sorted
// as the monitor sorts them.
func kernelView(t *testing.T, h *pmtest.Host) snapshot {
	t.Helper()
	nh, err := netlink.NewHandleAt(netns.NsHandle(h.NSFD()))
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	defer nh.Close()
	var snap snapshot
	links, err := nh.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	for _, l := range links {
		a := l.Attrs()
		up := a.RawFlags&unix.IFF_UP != 0
		snap.links = append(snap.links, Link{
			Index:    a.Index,
			Name:     a.Name,
			Up:       up,
			Carrier:  up && a.RawFlags&unix.IFF_LOWER_UP != 0,
			Loopback: a.RawFlags&unix.IFF_LOOPBACK != 0,
		})
	}
	addrs, err := nh.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("list addresses: %v", err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		snap.addrs = append(snap.addrs, Address{
			Index:  a.LinkIndex,
			Prefix: netip.PrefixFrom(ip.Unmap(), ones),
			Flags:  AddrFlags(a.Flags),
			Scope:  uint8(a.Scope),
		})
	}
	up := make(map[int]bool)
	for _, l := range snap.links {
		up[l.Index] = l.Up
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := nh.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatalf("list routes: %v", err)
		}
		for _, r := range routes {
			if ones, _ := r.Dst.Mask.Size(); r.Dst != nil && ones != 0 || r.Type != unix.RTN_UNICAST {
				continue
			}
			base := Route{Family: family, Table: r.Table, Priority: r.Priority}
			base.Src, _ = netip.AddrFromSlice(r.Src)
			base.Src = base.Src.Unmap()
			hops := r.MultiPath
			if len(hops) == 0 {
				hops = []*netlink.NexthopInfo{{LinkIndex: r.LinkIndex, Gw: r.Gw, Flags: r.Flags}}
			}
			for _, nh := range hops {
				rt := base
				rt.Index = nh.LinkIndex
				rt.Gateway, _ = netip.AddrFromSlice(nh.Gw)
				rt.Gateway = rt.Gateway.Unmap()
				// Next hops through a link that is down are dead: the
				// monitor has no route for them.
				if !up[rt.Index] || nh.Flags&unix.RTNH_F_DEAD != 0 && nh.Flags&unix.RTNH_F_LINKDOWN != 0 {
					continue
				}
				snap.routes = append(snap.routes, rt)
			}
		}
	}
	slices.SortFunc(snap.links, compareLinks)
	slices.SortFunc(snap.addrs, compareAddrs)
	slices.SortFunc(snap.routes, compareRoutes)
	return snap
}

// addVeth adds a veth pair name/peer inside h, with the peer up so that
// name has carrier once it is up itself. (This kernel has no dummy driver.)
func addVeth(t *testing.T, h *pmtest.Host, name, peer string) {
	t.Helper()
	h.Run(t, "ip", "link", "add", name, "type", "veth", "peer", "name", peer)
	h.Run(t, "ip", "link", "set", peer, "up")
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

func TestSnapshot(t *testing.T) {
	h := pmtest.NewNamespace(t) // with link-local addresses
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	h.Run(t, "ip", "addr", "add", "10.1.0.1/24", "dev", "d0")
	h.Run(t, "ip", "addr", "add", "10.1.1.1", "peer", "10.1.1.2/32", "dev", "d0")
	h.Run(t, "ip", "-6", "addr", "add", "fd01::1/64", "dev", "d0", "nodad")
	h.Run(t, "ip", "route", "add", "default", "via", "10.1.0.254", "dev", "d0")
	h.Run(t, "ip", "-6", "route", "add", "default", "via", "fd01::fe", "dev", "d0", "table", "100")
	h.Run(t, "ip", "route", "add", "10.99.0.0/16", "via", "10.1.0.253", "dev", "d0")
	h.Run(t, "ip", "route", "add", "blackhole", "default", "table", "101")

	counts := countMessages(t, h)
	w, snap := watch(t, h, hooks{})
	d0 := w.link("d0")
	lo := w.link("lo")
	if !d0.Up || !d0.Carrier || d0.Loopback || !lo.Loopback || !lo.Up {
		t.Fatalf("unexpected links %v, %v", d0, lo)
	}
	w.checkView()

	// The snapshot is the view, each item once, links first.
	var want []Update
	for _, l := range w.m.Links() {
		want = append(want, Update{Kind: LinkChanged, Link: l})
	}
	for _, a := range w.m.Addresses() {
		l, _ := w.m.Link(a.Index)
		want = append(want, Update{Kind: AddressAdded, Link: l, Address: a})
	}
	for _, r := range w.m.DefaultRoutes() {
		l, _ := w.m.Link(r.Index)
		want = append(want, Update{Kind: RouteAdded, Link: l, Route: r})
	}
	if !slices.Equal(snap, want) {
		t.Errorf("snapshot:\n%s\nwant:\n%s", fmtUpdates(snap), fmtUpdates(want))
	}

	// And the view has what the namespace was given.
	for _, a := range []Address{
		{Index: lo.Index, Prefix: pfx("127.0.0.1/8"), Flags: Permanent, Scope: ScopeHost},
		{Index: lo.Index, Prefix: pfx("::1/128"), Flags: Permanent, Scope: ScopeHost},
		{Index: d0.Index, Prefix: pfx("10.1.0.1/24"), Flags: Permanent},
		{Index: d0.Index, Prefix: pfx("10.1.1.1/32"), Flags: Permanent},
		{Index: d0.Index, Prefix: pfx("fd01::1/64"), Flags: Permanent | NoDAD},
	} {
		if !slices.Contains(w.m.Addresses(), a) {
			t.Errorf("Addresses() lacks %v: %v", a, w.m.Addresses())
		}
	}
	var linkLocal []Address
	for _, a := range w.m.Addresses() {
		if a.LinkLocal() && a.Index == d0.Index {
			linkLocal = append(linkLocal, a)
		}
	}
	if len(linkLocal) != 1 || linkLocal[0].Scope != ScopeLink ||
		!linkLocal[0].Addr().IsLinkLocalUnicast() || linkLocal[0].Prefix.Bits() != 64 {
		t.Errorf("link-local addresses %v, want one fe80::/64 on d0 with scope link", linkLocal)
	}
	wantRoutes := []Route{
		{Index: d0.Index, Family: FamilyIPv4, Gateway: ip("10.1.0.254"), Table: TableMain},
		{Index: d0.Index, Family: FamilyIPv6, Gateway: ip("fd01::fe"), Table: 100, Priority: 1024},
	}
	if got := w.m.DefaultRoutes(); !slices.Equal(got, wantRoutes) {
		t.Errorf("DefaultRoutes() = %v, want %v", got, wantRoutes)
	}
	// The listing requests go to the kernel only, not to the namespace's
	// other listeners: they would have had them before the marker.
	w.marker(1)
	deadline := time.Now().Add(waitTimeout)
	for counts()[unix.RTM_NEWADDR] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the other listener got no notification")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := counts(); c[unix.RTM_GETLINK]+c[unix.RTM_GETADDR]+c[unix.RTM_GETROUTE] != 0 {
		t.Errorf("another listener received the monitor's requests: %v", c)
	}
}

// waitCarrier waits until the named link inside h is up with carrier.
func waitCarrier(t *testing.T, h *pmtest.Host, name string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		for _, l := range kernelView(t, h).links {
			if l.Name == name && l.Carrier {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no carrier after %v", name, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// marker makes a change the test has not made before and expects its
// update to be the very next one: whatever came before it and was not
// expected fails the test.
func (w *watcher) marker(n int) {
	w.t.Helper()
	lo := w.link("lo")
	p := markerPrefix(n)
	w.run("ip", "addr", "add", p.String(), "dev", "lo")
	w.expectInOrder(Update{Kind: AddressAdded, Link: lo, Address: Address{Index: lo.Index, Prefix: p, Flags: Permanent, Scope: ScopeHost}})
}

func markerPrefix(n int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 77, byte(n >> 8), byte(n)}), 32)
}

func addrUpdate(k Kind, l Link, prefix string, flags AddrFlags) Update {
	return Update{Kind: k, Link: l, Address: Address{Index: l.Index, Prefix: pfx(prefix), Flags: flags}}
}

func routeUpdate(k Kind, l Link, r Route) Update {
	r.Index = l.Index
	return Update{Kind: k, Link: l, Route: r}
}

func TestAddresses(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	w, _ := watch(t, h, hooks{})
	d0 := w.link("d0")

	w.run("ip", "addr", "add", "10.2.0.1/24", "dev", "d0")
	w.expectInOrder(addrUpdate(AddressAdded, d0, "10.2.0.1/24", Permanent))
	w.run("ip", "-6", "addr", "add", "fd02::1/64", "dev", "d0", "nodad")
	w.expectInOrder(addrUpdate(AddressAdded, d0, "fd02::1/64", Permanent|NoDAD))
	// Point-to-point: the local address, not the peer's.
	w.run("ip", "addr", "add", "10.2.1.1", "peer", "10.2.1.2/32", "dev", "d0")
	w.expectInOrder(addrUpdate(AddressAdded, d0, "10.2.1.1/32", Permanent))
	// The same IPv4 address with another prefix length is another address.
	w.run("ip", "addr", "add", "10.2.0.1/16", "dev", "d0")
	w.expectInOrder(addrUpdate(AddressAdded, d0, "10.2.0.1/16", Permanent))
	w.checkView()

	w.run("ip", "addr", "del", "10.2.0.1/24", "dev", "d0")
	w.expectInOrder(addrUpdate(AddressRemoved, d0, "10.2.0.1/24", Permanent))
	w.run("ip", "-6", "addr", "del", "fd02::1/64", "dev", "d0")
	w.expectInOrder(addrUpdate(AddressRemoved, d0, "fd02::1/64", Permanent|NoDAD))
	w.marker(1)
	w.checkView()
}

func TestTentativeAddress(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "sysctl", "-qw", "net.ipv6.conf.d0.accept_dad=1")
	h.Run(t, "ip", "link", "set", "d0", "up")
	waitCarrier(t, h, "d0")
	w, _ := watch(t, h, hooks{})
	d0 := w.link("d0")

	w.run("ip", "-6", "addr", "add", "fd03::1/64", "dev", "d0")
	w.expectInOrder(addrUpdate(AddressAdded, d0, "fd03::1/64", Permanent|Tentative))
	if a := w.m.Addresses(); !slices.Contains(a, Address{Index: d0.Index, Prefix: pfx("fd03::1/64"), Flags: Permanent | Tentative}) {
		t.Errorf("Addresses() = %v, want fd03::1/64 tentative", a)
	}
	// Duplicate address detection ends about a second later.
	w.expectInOrder(addrUpdate(AddressChanged, d0, "fd03::1/64", Permanent))
	w.marker(1)
	w.checkView()
}

func TestLinkDownUp(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	h.Run(t, "ip", "addr", "add", "10.5.0.1/24", "dev", "d0")
	h.Run(t, "ip", "-6", "addr", "add", "fd05::1/64", "dev", "d0", "nodad")
	h.Run(t, "ip", "route", "add", "default", "via", "10.5.0.254", "dev", "d0")
	h.Run(t, "ip", "-6", "route", "add", "default", "via", "fd05::fe", "dev", "d0")
	waitCarrier(t, h, "d0")
	w, _ := watch(t, h, hooks{})
	d0, p0 := w.link("d0"), w.link("p0")

	w.run("ip", "link", "set", "d0", "down")
	down := d0
	down.Up, down.Carrier = false, false
	p0NoCarrier := p0
	p0NoCarrier.Carrier = false
	// The kernel drops the IPv6 address and routes with notifications,
	// and the IPv4 route silently; the IPv4 address stays.
	w.expect(
		Update{Kind: LinkChanged, Link: down},
		Update{Kind: LinkChanged, Link: p0NoCarrier},
		addrUpdate(AddressRemoved, down, "fd05::1/64", Permanent|NoDAD),
		routeUpdate(RouteRemoved, down, Route{Family: FamilyIPv4, Gateway: ip("10.5.0.254"), Table: TableMain}),
		routeUpdate(RouteRemoved, down, Route{Family: FamilyIPv6, Gateway: ip("fd05::fe"), Table: TableMain, Priority: 1024}),
	)
	w.marker(1)
	w.checkView()

	w.run("ip", "link", "set", "d0", "up")
	w.expect(
		Update{Kind: LinkChanged, Link: d0},
		Update{Kind: LinkChanged, Link: p0},
	)
	w.marker(2)
	w.checkView()
	if !slices.Contains(w.m.Addresses(), Address{Index: d0.Index, Prefix: pfx("10.5.0.1/24"), Flags: Permanent}) {
		t.Errorf("the IPv4 address of d0 is lost: %v", w.m.Addresses())
	}
}

func TestCarrierLoss(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	h.Run(t, "ip", "addr", "add", "10.4.0.1/24", "dev", "d0")
	h.Run(t, "ip", "-6", "addr", "add", "fd04::1/64", "dev", "d0", "nodad")
	h.Run(t, "ip", "route", "add", "default", "via", "10.4.0.254", "dev", "d0")
	waitCarrier(t, h, "d0")
	w, _ := watch(t, h, hooks{})
	d0, p0 := w.link("d0"), w.link("p0")
	addrs, routes := w.m.Addresses(), w.m.DefaultRoutes()

	// Taking the peer down takes d0's carrier: d0 keeps its addresses and
	// its route, and says Carrier=false.
	w.run("ip", "link", "set", "p0", "down")
	noCarrier := d0
	noCarrier.Carrier = false
	p0Down := p0
	p0Down.Up, p0Down.Carrier = false, false
	w.expect(
		Update{Kind: LinkChanged, Link: noCarrier},
		Update{Kind: LinkChanged, Link: p0Down},
	)
	w.marker(1)
	w.checkView()
	if l, _ := w.m.Link(d0.Index); l != noCarrier {
		t.Errorf("Link(d0) = %v, want %v", l, noCarrier)
	}
	if got := w.m.Addresses(); !containsAll(got, addrs) {
		t.Errorf("addresses after carrier loss %v, want still %v", got, addrs)
	}
	if got := w.m.DefaultRoutes(); !slices.Equal(got, routes) {
		t.Errorf("routes after carrier loss %v, want still %v", got, routes)
	}

	// When carrier returns the addresses are still there, unchanged.
	w.run("ip", "link", "set", "p0", "up")
	w.expect(
		Update{Kind: LinkChanged, Link: d0},
		Update{Kind: LinkChanged, Link: p0},
	)
	w.marker(2)
	w.checkView()
	if got := w.m.Addresses(); !containsAll(got, addrs) {
		t.Errorf("addresses after carrier return %v, want %v", got, addrs)
	}
}

func containsAll[T comparable](s, sub []T) bool {
	for _, v := range sub {
		if !slices.Contains(s, v) {
			return false
		}
	}
	return true
}

// countMessages counts the rtnetlink notifications of h's namespace by
// message type, on a socket of its own, until the test ends.
func countMessages(t *testing.T, h *pmtest.Host) func() map[uint16]int {
	t.Helper()
	s, err := nl.SubscribeAt(netns.NsHandle(h.NSFD()), netns.None(), unix.NETLINK_ROUTE, groups...)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	var mu sync.Mutex
	counts := make(map[uint16]int)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msgs, _, err := s.Receive()
			if err != nil {
				return
			}
			mu.Lock()
			for _, m := range msgs {
				counts[m.Header.Type]++
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return func() map[uint16]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(counts)
	}
}

func TestNoDuplicates(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	h.Run(t, "ip", "addr", "add", "10.6.0.1/24", "dev", "d0")
	h.Run(t, "ip", "-6", "addr", "add", "fd06::1/64", "dev", "d0", "nodad")
	h.Run(t, "ip", "route", "add", "default", "via", "10.6.0.254", "dev", "d0")
	waitCarrier(t, h, "d0")
	w, _ := watch(t, h, hooks{})
	d0 := w.link("d0")
	counts := countMessages(t, h)

	// Notifications that change nothing the monitor tracks.
	w.run("ip", "link", "set", "d0", "up")
	w.run("ip", "link", "set", "d0", "mtu", "1400")
	w.run("ip", "link", "set", "d0", "alias", "uplink")
	w.run("ip", "addr", "change", "10.6.0.1/24", "dev", "d0")
	w.run("ip", "-6", "addr", "change", "fd06::1/64", "dev", "d0", "nodad")
	w.run("ip", "route", "replace", "default", "via", "10.6.0.254", "dev", "d0")
	w.marker(1)
	deadline := time.Now().Add(waitTimeout)
	for c := counts(); c[unix.RTM_NEWLINK] < 2 || c[unix.RTM_NEWADDR] < 3 || c[unix.RTM_NEWROUTE] < 1; c = counts() {
		if time.Now().After(deadline) {
			t.Fatalf("the kernel sent fewer notifications than the test relies on: %v", c)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A lifetime change: the address stops being permanent once, and
	// changing the lifetimes again changes nothing visible.
	w.run("ip", "-6", "addr", "change", "fd06::1/64", "dev", "d0", "nodad", "valid_lft", "2000", "preferred_lft", "1000")
	w.expectInOrder(addrUpdate(AddressChanged, d0, "fd06::1/64", NoDAD))
	w.run("ip", "-6", "addr", "change", "fd06::1/64", "dev", "d0", "nodad", "valid_lft", "3000", "preferred_lft", "2000")
	w.marker(2)

	// Replacing the route with another gateway removes the old one, though
	// the kernel sends no deletion.
	w.run("ip", "route", "replace", "default", "via", "10.6.0.253", "dev", "d0")
	w.expectInOrder(
		routeUpdate(RouteRemoved, d0, Route{Family: FamilyIPv4, Gateway: ip("10.6.0.254"), Table: TableMain}),
		routeUpdate(RouteAdded, d0, Route{Family: FamilyIPv4, Gateway: ip("10.6.0.253"), Table: TableMain}),
	)
	// And a blackhole takes its place without a trace of a deletion.
	w.run("ip", "route", "replace", "blackhole", "default")
	w.expectInOrder(routeUpdate(RouteRemoved, d0, Route{Family: FamilyIPv4, Gateway: ip("10.6.0.253"), Table: TableMain}))
	w.marker(3)
	w.checkView()
}

func TestDefaultRoutes(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	addVeth(t, h, "d1", "p1")
	for _, c := range [][]string{
		{"ip", "link", "set", "d0", "up"},
		{"ip", "link", "set", "d1", "up"},
		{"ip", "addr", "add", "10.7.0.1/24", "dev", "d0"},
		{"ip", "addr", "add", "10.17.0.1/24", "dev", "d0"},
		{"ip", "addr", "add", "10.8.0.1/24", "dev", "d1"},
		{"ip", "-6", "addr", "add", "fd08::1/64", "dev", "d1", "nodad"},
	} {
		h.Run(t, c...)
	}
	waitCarrier(t, h, "d0")
	waitCarrier(t, h, "d1")
	w, _ := watch(t, h, hooks{})
	d0, d1, p1 := w.link("d0"), w.link("d1"), w.link("p1")
	v4 := func(gw string, table, prio int) Route {
		r := Route{Family: FamilyIPv4, Table: table, Priority: prio}
		if gw != "" {
			r.Gateway = ip(gw)
		}
		return r
	}

	w.run("ip", "route", "add", "default", "via", "10.7.0.254", "dev", "d0")
	w.expectInOrder(routeUpdate(RouteAdded, d0, v4("10.7.0.254", TableMain, 0)))
	w.run("ip", "route", "add", "default", "via", "10.8.0.254", "dev", "d1", "metric", "100")
	w.expectInOrder(routeUpdate(RouteAdded, d1, v4("10.8.0.254", TableMain, 100)))
	w.run("ip", "-6", "route", "add", "default", "via", "fd08::fe", "dev", "d1", "table", "100")
	w.expectInOrder(routeUpdate(RouteAdded, d1, Route{Family: FamilyIPv6, Gateway: ip("fd08::fe"), Table: 100, Priority: 1024}))
	w.run("ip", "route", "add", "default", "dev", "d1", "table", "200")
	w.expectInOrder(routeUpdate(RouteAdded, d1, v4("", 200, 0)))
	// Not default routes, or not through an interface: nothing.
	w.run("ip", "route", "add", "10.99.0.0/16", "via", "10.7.0.254")
	w.run("ip", "route", "add", "blackhole", "default", "table", "201")
	w.marker(1)
	// A multipath default route is a route per next hop.
	w.run("ip", "route", "add", "default", "table", "300",
		"nexthop", "via", "10.7.0.254", "dev", "d0", "nexthop", "via", "10.8.0.254", "dev", "d1")
	mp0, mp1 := routeUpdate(RouteAdded, d0, v4("10.7.0.254", 300, 0)), routeUpdate(RouteAdded, d1, v4("10.8.0.254", 300, 0))
	w.expect(mp0, mp1)
	w.checkView()

	w.run("ip", "route", "del", "default", "via", "10.8.0.254", "dev", "d1", "metric", "100")
	w.expectInOrder(routeUpdate(RouteRemoved, d1, v4("10.8.0.254", TableMain, 100)))
	w.run("ip", "-6", "route", "del", "default", "table", "100")
	w.expectInOrder(routeUpdate(RouteRemoved, d1, Route{Family: FamilyIPv6, Gateway: ip("fd08::fe"), Table: 100, Priority: 1024}))
	w.checkView()

	// The kernel silently drops a main-table route whose preferred source
	// address goes...
	srcRoute := v4("10.17.0.254", TableMain, 50)
	srcRoute.Src = ip("10.7.0.1")
	w.run("ip", "route", "add", "default", "via", "10.17.0.254", "dev", "d0", "src", "10.7.0.1", "metric", "50")
	w.expectInOrder(routeUpdate(RouteAdded, d0, srcRoute))
	w.run("ip", "addr", "del", "10.7.0.1/24", "dev", "d0")
	w.expect(
		addrUpdate(AddressRemoved, d0, "10.7.0.1/24", Permanent),
		routeUpdate(RouteRemoved, d0, srcRoute),
	)
	w.marker(2)
	w.checkView()
	// ... and all IPv4 routes of a link that loses its last IPv4 address;
	// of a multipath route, the next hop through it dies.
	w.run("ip", "addr", "del", "10.17.0.1/24", "dev", "d0")
	w.expect(
		addrUpdate(AddressRemoved, d0, "10.17.0.1/24", Permanent),
		routeUpdate(RouteRemoved, d0, v4("10.7.0.254", TableMain, 0)),
		routeUpdate(RouteRemoved, d0, v4("10.7.0.254", 300, 0)),
	)
	w.marker(3)
	w.checkView()
	// An IPv4 address brings the dead next hop back, silently again.
	w.run("ip", "addr", "add", "10.7.0.1/24", "dev", "d0")
	w.expectInOrder(
		addrUpdate(AddressAdded, d0, "10.7.0.1/24", Permanent),
		mp0,
	)
	w.marker(4)
	w.checkView()

	// A link that goes down loses its routes; the next hop of a multipath
	// route comes back with the link, single routes do not.
	w.run("ip", "link", "set", "d1", "down")
	d1Down := d1
	d1Down.Up, d1Down.Carrier = false, false
	p1NoCarrier := p1
	p1NoCarrier.Carrier = false
	w.expect(
		Update{Kind: LinkChanged, Link: d1Down},
		Update{Kind: LinkChanged, Link: p1NoCarrier},
		addrUpdate(AddressRemoved, d1Down, "fd08::1/64", Permanent|NoDAD),
		routeUpdate(RouteRemoved, d1Down, v4("", 200, 0)),
		routeUpdate(RouteRemoved, d1Down, v4("10.8.0.254", 300, 0)),
	)
	w.marker(5)
	w.checkView()
	w.run("ip", "link", "set", "d1", "up")
	w.expect(
		Update{Kind: LinkChanged, Link: d1},
		Update{Kind: LinkChanged, Link: p1},
		mp1,
	)
	w.marker(6)
	w.checkView()
}

func TestLinkRemoval(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	h.Run(t, "ip", "addr", "add", "10.3.0.1/24", "dev", "d0")
	h.Run(t, "ip", "addr", "add", "10.3.1.1/24", "dev", "p0")
	h.Run(t, "ip", "-6", "addr", "add", "fd03::1/64", "dev", "d0", "nodad")
	h.Run(t, "ip", "route", "add", "default", "via", "10.3.0.254", "dev", "d0")
	h.Run(t, "ip", "route", "add", "default", "via", "10.3.0.254", "dev", "d0", "table", "100")
	h.Run(t, "ip", "-6", "route", "add", "default", "via", "fd03::fe", "dev", "d0")
	waitCarrier(t, h, "d0")
	w, _ := watch(t, h, hooks{})
	d0, p0 := w.link("d0"), w.link("p0")
	var want []string // the removals, without the link state they carry
	for _, a := range w.m.Addresses() {
		if a.Index == d0.Index || a.Index == p0.Index {
			want = append(want, Update{Kind: AddressRemoved, Address: a}.String())
		}
	}
	for _, r := range w.m.DefaultRoutes() {
		want = append(want, Update{Kind: RouteRemoved, Route: r}.String())
	}
	if len(want) != 6 {
		t.Fatalf("set-up: want 3 addresses and 3 routes, have %v", want)
	}

	// Deleting d0 deletes its peer p0 too.
	w.run("ip", "link", "del", "d0")
	var got []string
	removed := map[int]bool{}
	for len(removed) < 2 {
		u := w.next()
		if removed[u.Link.Index] {
			t.Fatalf("%v after the link was removed", u)
		}
		switch u.Kind {
		case LinkRemoved:
			removed[u.Link.Index] = true
			if u.Link.Index != d0.Index && u.Link.Index != p0.Index {
				t.Fatalf("unexpected %v", u)
			}
		case LinkChanged:
			if u.Link.Index != d0.Index && u.Link.Index != p0.Index || u.Link.Up {
				t.Fatalf("unexpected %v", u)
			}
		default:
			u.Link = Link{}
			got = append(got, u.String())
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("removals:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	w.marker(1)
	w.checkView()
}

// gate pauses the monitor's reader right after it has received the
// notification of a marker address, so that the reader holds nothing back
// from the owner: notifications after the marker stay in the socket.
type gate struct {
	t       *testing.T
	mu      sync.Mutex
	marker  netip.Prefix // park after its notification
	park    bool         // park before the next receive
	release chan struct{}
}

func (g *gate) hooks() hooks {
	return hooks{beforeReceive: g.before, afterReceive: g.after}
}

func (g *gate) after(msgs []syscall.NetlinkMessage) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, msg := range msgs {
		evs, _ := decode(nil, msg.Header.Type, msg.Header.Flags, msg.Data)
		for _, e := range evs {
			if e.op == opNewAddr && g.marker.IsValid() && e.addr.Prefix == g.marker {
				g.park, g.marker = true, netip.Prefix{}
			}
		}
	}
}

func (g *gate) before() {
	g.mu.Lock()
	park, release := g.park, g.release
	g.park = false
	g.mu.Unlock()
	if park {
		<-release
	}
}

// closeAfterMarker adds marker n, expects its update, and leaves the reader
// paused after it until open.
func (g *gate) closeAfterMarker(w *watcher, n int) {
	g.t.Helper()
	g.mu.Lock()
	g.marker = markerPrefix(n)
	g.release = make(chan struct{})
	g.mu.Unlock()
	g.t.Cleanup(g.open) // registered after the monitor's cleanup, so runs before it
	w.marker(n)
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.release != nil {
		close(g.release)
		g.release = nil
	}
}

// withoutLink returns the updates as strings, without the link state of
// address and route updates (which depends on when they were made).
func withoutLink(us []Update) []string {
	var s []string
	for _, u := range us {
		if u.Kind != LinkChanged && u.Kind != LinkRemoved {
			u.Link = Link{}
		}
		s = append(s, u.String())
	}
	slices.Sort(s)
	return s
}

// TestOverflow loses notifications for real: the reader is paused while
// the changes overflow a minimal receive buffer. The monitor must report
// every change exactly once, through its resynchronisation, and nothing
// that did not change.
func TestOverflow(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	h.Run(t, "ip", "link", "set", "d0", "up")
	h.Run(t, "ip", "addr", "add", "10.9.0.1/24", "dev", "d0")
	h.Run(t, "ip", "addr", "add", "10.9.1.1/24", "dev", "d0")
	h.Run(t, "ip", "-6", "addr", "add", "fd09::1/64", "dev", "d0", "nodad")
	waitCarrier(t, h, "d0")
	g := &gate{t: t}
	hk := g.hooks()
	hk.rcvbuf = 1
	w, _ := watch(t, h, hk)
	d0, p0 := w.link("d0"), w.link("p0")

	g.closeAfterMarker(w, 1)
	var batch strings.Builder
	var want []Update
	for i := range 64 {
		p := fmt.Sprintf("10.10.%d.%d/32", i/250, i%250+1)
		fmt.Fprintf(&batch, "addr add %s dev p0\n", p)
		want = append(want, addrUpdate(AddressAdded, p0, p, Permanent))
	}
	file := t.TempDir() + "/batch"
	if err := os.WriteFile(file, []byte(batch.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	w.run("ip", "-batch", file)
	w.run("ip", "addr", "del", "10.9.0.1/24", "dev", "d0")
	w.run("ip", "link", "set", "d0", "down")
	d0Down, p0NoCarrier := d0, p0
	d0Down.Up, d0Down.Carrier, p0NoCarrier.Carrier = false, false, false
	want = append(want,
		addrUpdate(AddressRemoved, d0, "10.9.0.1/24", Permanent),
		addrUpdate(AddressRemoved, d0, "fd09::1/64", Permanent|NoDAD),
		Update{Kind: LinkChanged, Link: d0Down},
		Update{Kind: LinkChanged, Link: p0NoCarrier},
	)
	g.open()

	got := w.untilSynced()
	if n := w.m.overflows.Load(); n == 0 {
		t.Fatalf("the receive buffer did not overflow; the test tested nothing")
	}
	if g, w := withoutLink(got), withoutLink(want); !slices.Equal(g, w) {
		t.Errorf("updates up to Synced:\n%s\nwant:\n%s", strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	w.marker(2) // nothing came after the Synced
	w.checkView()
}

// TestResync changes the namespace behind the monitor's back (its reader
// paused, the notifications held back) and makes it resynchronise: it must
// report exactly the differences, in order, and nothing for the
// notifications it gets late.
func TestResync(t *testing.T) {
	h := newNS(t)
	addVeth(t, h, "d0", "p0")
	addVeth(t, h, "d1", "p1")
	for _, c := range [][]string{
		{"ip", "link", "set", "d0", "up"},
		{"ip", "addr", "add", "10.11.9.1/24", "dev", "d0"},
		{"ip", "addr", "add", "10.11.8.1/24", "dev", "d0"},
		{"ip", "addr", "add", "10.12.0.1/24", "dev", "d1"},
		{"ip", "-6", "addr", "add", "fd11::1/64", "dev", "d0", "nodad"},
	} {
		h.Run(t, c...)
	}
	waitCarrier(t, h, "d0")
	g := &gate{t: t}
	w, _ := watch(t, h, g.hooks())
	d0, d1, p1 := w.link("d0"), w.link("d1"), w.link("p1")

	g.closeAfterMarker(w, 1)
	for _, c := range [][]string{
		{"ip", "addr", "add", "10.11.0.1/24", "dev", "d0"},
		{"ip", "addr", "del", "10.11.9.1/24", "dev", "d0"},
		{"ip", "route", "add", "default", "via", "10.11.0.254", "dev", "d0"},
		{"ip", "-6", "addr", "change", "fd11::1/64", "dev", "d0", "nodad", "valid_lft", "100", "preferred_lft", "100"},
		{"ip", "link", "del", "d1"},
	} {
		w.run(c...)
	}
	addVeth(t, h, "d2", "p2")
	d2, p2 := w.link("d2"), w.link("p2")
	want := []Update{
		addrUpdate(AddressRemoved, d0, "10.11.9.1/24", Permanent),
		addrUpdate(AddressRemoved, d1, "10.12.0.1/24", Permanent),
	}
	linkUpdates := []Update{{Kind: LinkRemoved, Link: d1}, {Kind: LinkRemoved, Link: p1}}
	slices.SortFunc(linkUpdates, func(a, b Update) int { return compareLinks(a.Link, b.Link) })
	want = append(want, linkUpdates...)
	linkUpdates = []Update{{Kind: LinkChanged, Link: d2}, {Kind: LinkChanged, Link: p2}}
	slices.SortFunc(linkUpdates, func(a, b Update) int { return compareLinks(a.Link, b.Link) })
	want = append(want, linkUpdates...)
	want = append(want,
		addrUpdate(AddressAdded, d0, "10.11.0.1/24", Permanent),
		addrUpdate(AddressChanged, d0, "fd11::1/64", NoDAD),
		routeUpdate(RouteAdded, d0, Route{Family: FamilyIPv4, Gateway: ip("10.11.0.254"), Table: TableMain}),
	)

	if err := w.m.resync(); err != nil {
		t.Fatal(err)
	}
	g.open() // the notifications held back are older than the listing
	if got := w.untilSynced(); !slices.Equal(got, want) {
		t.Errorf("resync:\n%s\nwant:\n%s", fmtUpdates(got), fmtUpdates(want))
	}
	w.marker(2)
	w.checkView()
}

// TestStartCallerNamespace needs no privilege: it watches the test's own
// namespace, which has a loopback link that is up.
func TestStartCallerNamespace(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := Start(ctx, Options{})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	w := &watcher{t: t, m: m}
	var links []Link
	for _, u := range w.untilSynced() {
		if u.Kind == LinkChanged {
			links = append(links, u.Link)
		}
	}
	if !slices.ContainsFunc(links, func(l Link) bool { return l.Loopback && l.Up && l.Carrier }) {
		t.Errorf("no loopback link that is up in the snapshot %v", links)
	}
	cancel()
	timeout := time.After(waitTimeout)
	for open := true; open; {
		select {
		case _, open = <-m.Updates():
		case <-timeout:
			t.Fatal("Updates not closed after cancel")
		}
	}
	if err := m.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err() = %v, want context.Canceled", err)
	}
}

func TestStartBadNamespace(t *testing.T) {
	f, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, fd := range []int{-1, int(f.Fd())} {
		m, err := Start(context.Background(), Options{NetNS: fd})
		if err == nil || m != nil {
			t.Errorf("Start(NetNS: %d) = %v, %v; want an error", fd, m, err)
		}
	}
}
