package service

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// TestFilter checks what the service tells the filter (policy.Check) about
// an address: its link's state, its flags and scope, the default routes.
func TestFilter(t *testing.T) {
	def := DefaultConfig().Filter
	up := Link{Index: 2, Name: "eth0", Up: true, Carrier: true}
	addr := func(s string) LinkAddress { return LinkAddress{Index: 2, Prefix: netip.MustParsePrefix(s)} }
	type F = policy.FilterConfig
	tests := []struct {
		name     string
		f        F
		link     Link
		addr     LinkAddress
		defRoute string // default route's destination, "" = none
		want     bool
	}{
		{"plain address", def, up, addr("10.0.0.1/24"), "", true},
		{"link down", def, Link{Index: 2, Name: "eth0", Carrier: true}, addr("10.0.0.1/24"), "", false},
		{"no carrier", def, Link{Index: 2, Name: "eth0", Up: true}, addr("10.0.0.1/24"), "", false},
		{"loopback link", def, Link{Index: 2, Name: "lo", Up: true, Carrier: true, Loopback: true}, addr("10.0.0.1/8"), "", false},
		{"loopback address", def, up, addr("127.0.0.1/8"), "", false},
		{"loopback allowed", F{}, up, addr("::1/128"), "", true},
		{"link-local", def, up, addr("fe80::1/64"), "", false},
		{"link scope", def, up, LinkAddress{Index: 2, Prefix: netip.MustParsePrefix("10.0.0.1/24"), LinkLocal: true}, "", false},
		{"link-local allowed", F{}, up, addr("fe80::1/64"), "", true},
		{"tentative", def, up, LinkAddress{Index: 2, Prefix: netip.MustParsePrefix("fd00::1/64"), Tentative: true}, "", false},
		{"deprecated", def, up, LinkAddress{Index: 2, Prefix: netip.MustParsePrefix("fd00::1/64"), Deprecated: true}, "", false},
		{"duplicate, whatever the filter", F{}, up, LinkAddress{Index: 2, Prefix: netip.MustParsePrefix("fd00::1/64"), DADFailed: true}, "", false},
		{"tentative allowed", F{}, up, LinkAddress{Index: 2, Prefix: netip.MustParsePrefix("fd00::1/64"), Tentative: true}, "", true},
		{"default route required, none", F{RequireDefaultRoute: true}, up, addr("10.0.0.1/24"), "", false},
		{"default route required, present", F{RequireDefaultRoute: true}, up, addr("10.0.0.1/24"), "0.0.0.0/0", true},
		{"default route of the other family", F{RequireDefaultRoute: true}, up, addr("10.0.0.1/24"), "::/0", false},
		{"denied by the default pattern", def, Link{Index: 2, Name: "veth12", Up: true, Carrier: true}, addr("10.0.0.1/24"), "", false},
		{"docker network denied", def, Link{Index: 2, Name: "br-0123456789ab", Up: true, Carrier: true}, addr("10.0.0.1/24"), "", false},
		{"not in allow list", F{Allow: []string{"wlan*", "eth1"}}, up, addr("10.0.0.1/24"), "", false},
		{"in allow list", F{Allow: []string{"wlan*", "eth?"}}, up, addr("10.0.0.1/24"), "", true},
		{"deny wins over allow", F{Allow: []string{"eth*"}, Deny: []string{"eth0"}}, up, addr("10.0.0.1/24"), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNetState()
			n.apply(NetEvent{Kind: NetLinkChanged, Link: tt.link})
			n.apply(NetEvent{Kind: NetAddressAdded, Address: tt.addr})
			if tt.defRoute != "" {
				n.apply(NetEvent{Kind: NetRouteAdded, Route: Route{Index: 2, Dst: netip.MustParsePrefix(tt.defRoute)}})
			}
			got := n.usable(tt.f)
			if (len(got) == 1) != tt.want {
				t.Errorf("usable = %v, want the address usable: %v", got, tt.want)
			}
			if tt.want && (got[0].Interface != tt.link.Name || got[0].Ifindex != 2 || got[0].Addr != tt.addr.Prefix.Addr()) {
				t.Errorf("usable = %+v", got[0])
			}
		})
	}
}

func TestLocalAddresses(t *testing.T) {
	h := newHarness(t, withConfig(func(c *Config) { c.Filter.RequireDefaultRoute = true }))
	h.take()
	link := func(i int, name string, up bool) NetEvent {
		return NetEvent{Kind: NetLinkChanged, Link: Link{Index: i, Name: name, Up: up, Carrier: up}}
	}
	addr := func(k NetEventKind, i int, p string) NetEvent {
		return NetEvent{Kind: k, Address: LinkAddress{Index: i, Prefix: netip.MustParsePrefix(p)}}
	}
	route := func(k NetEventKind, i int, dst string) NetEvent {
		return NetEvent{Kind: k, Route: Route{Index: i, Dst: netip.MustParsePrefix(dst)}}
	}
	local := func() string {
		m, err := h.s.Manager(bg)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(m.LocalAddresses)
	}
	steps := []struct {
		name      string
		events    []NetEvent
		want      string
		published bool
	}{
		{"links and addresses, no default route", []NetEvent{
			link(1, "lo", true), link(2, "c0", true), link(3, "c1", true),
			addr(NetAddressAdded, 1, "127.0.0.1/8"),
			addr(NetAddressAdded, 2, "10.55.0.1/24"), addr(NetAddressAdded, 3, "10.55.1.1/24"),
			addr(NetAddressAdded, 3, "fd00:55:1::1/64"),
		}, "[]", false},
		{"IPv4 default routes", []NetEvent{
			route(NetRouteAdded, 3, "0.0.0.0/0"), route(NetRouteAdded, 2, "0.0.0.0/0"),
			route(NetRouteAdded, 2, "10.0.0.0/8"), route(NetRouteAdded, 2, "0.0.0.0/0"), NetEvent{Kind: NetSynced},
		}, "[{c0 10.55.0.1} {c1 10.55.1.1}]", true},
		{"one of two default routes of c0 goes", []NetEvent{route(NetRouteRemoved, 2, "0.0.0.0/0")},
			"[{c0 10.55.0.1} {c1 10.55.1.1}]", false},
		{"the other goes too", []NetEvent{route(NetRouteRemoved, 2, "0.0.0.0/0")},
			"[{c1 10.55.1.1}]", true},
		{"IPv6 default route on c1", []NetEvent{route(NetRouteAdded, 3, "::/0")},
			"[{c1 10.55.1.1} {c1 fd00:55:1::1}]", true},
		{"c1 loses carrier", []NetEvent{link(3, "c1", false)}, "[]", true},
		{"c1 back", []NetEvent{link(3, "c1", true)}, "[{c1 10.55.1.1} {c1 fd00:55:1::1}]", true},
		{"address removed", []NetEvent{addr(NetAddressRemoved, 3, "10.55.1.1/24")}, "[{c1 fd00:55:1::1}]", true},
		{"link removed takes its addresses and routes", []NetEvent{
			{Kind: NetLinkRemoved, Link: Link{Index: 3}}, link(3, "c1", true),
		}, "[]", true},
	}
	for _, st := range steps {
		h.sendNet(st.events...)
		// InterfacePreferences changes as links come and go: not this
		// test's subject.
		ns := slices.DeleteFunc(h.take(), func(n Notification) bool { return describe(n) == "manager [InterfacePreferences]" })
		if got := local(); got != st.want {
			t.Errorf("%s: LocalAddresses %s, want %s", st.name, got, st.want)
		}
		for _, n := range ns {
			if describe(n) != "manager [LocalAddresses]" {
				t.Errorf("%s: published %s", st.name, describe(n))
			}
		}
		if published := len(ns) > 0; published != st.published {
			t.Errorf("%s: published %v, want a change published: %v", st.name, describeAll(ns), st.published)
		}
	}
	h.inspect(func() {
		if len(h.s.net.addrs) != 2 || len(h.s.net.defaults) != 0 {
			t.Errorf("left: %d addresses, %d default routes; want 2 and 0", len(h.s.net.addrs), len(h.s.net.defaults))
		}
	})
}
