package service

import (
	"context"
	"net/netip"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// TestAddresses checks that Addresses lists every address of a known link
// with the filter's verdict, sorted, and that the usable ones are exactly
// Manager.LocalAddresses.
func TestAddresses(t *testing.T) {
	h := newHarness(t, withConfig(func(c *Config) {
		c.Filter = policy.FilterConfig{SkipLoopback: true, SkipLinkLocal: true, Deny: []string{"veth*"}}
	}))
	addr := func(index int, prefix string) NetEvent {
		return NetEvent{Kind: NetAddressAdded, Address: LinkAddress{Index: index, Prefix: netip.MustParsePrefix(prefix)}}
	}
	h.sendNet(
		NetEvent{Kind: NetLinkChanged, Link: Link{Index: 1, Name: "lo", Up: true, Carrier: true, Loopback: true}},
		NetEvent{Kind: NetLinkChanged, Link: Link{Index: 2, Name: "eth0", Up: true, Carrier: true}},
		NetEvent{Kind: NetLinkChanged, Link: Link{Index: 3, Name: "eth1", Up: true}},
		NetEvent{Kind: NetLinkChanged, Link: Link{Index: 4, Name: "veth7", Up: true, Carrier: true}},
		addr(1, "127.0.0.1/8"),
		addr(2, "fe80::1/64"),
		addr(2, "10.0.0.1/24"),
		addr(2, "fd00::1/64"),
		addr(3, "10.0.1.1/24"),
		addr(4, "10.0.2.1/24"),
		addr(9, "10.0.9.1/24"), // a link not known (yet): not listed
		NetEvent{Kind: NetSynced},
	)
	got, err := h.s.Addresses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	want := []AddressInfo{
		{"eth0", ip("10.0.0.1"), true, ""},
		{"eth0", ip("fd00::1"), true, ""},
		{"eth0", ip("fe80::1"), false, "link-local"},
		{"eth1", ip("10.0.1.1"), false, "no carrier"},
		{"lo", ip("127.0.0.1"), false, "loopback"},
		{"veth7", ip("10.0.2.1"), false, "denied by pattern veth*"},
	}
	if len(got) != len(want) {
		t.Fatalf("Addresses =\n%v\nwant\n%v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Addresses[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}

	m, err := h.s.Manager(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var usable []LocalAddress
	for _, a := range got {
		if a.Usable {
			usable = append(usable, LocalAddress{Interface: a.Interface, Address: a.Address})
		}
	}
	if len(usable) != len(m.LocalAddresses) {
		t.Fatalf("usable addresses %v, LocalAddresses %v", usable, m.LocalAddresses)
	}
	for i := range usable {
		if usable[i] != m.LocalAddresses[i] {
			t.Errorf("usable address %d is %v, LocalAddresses has %v", i, usable[i], m.LocalAddresses[i])
		}
	}

	// A change of the link changes the verdict.
	h.sendNet(NetEvent{Kind: NetLinkChanged, Link: Link{Index: 3, Name: "eth1", Up: true, Carrier: true}})
	got, err = h.s.Addresses(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got[3].Address != ip("10.0.1.1") || !got[3].Usable || got[3].Reason != "" {
		t.Errorf("after carrier came: %+v, want 10.0.1.1 usable", got[3])
	}
}
