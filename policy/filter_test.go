package policy

import (
	"net/netip"
	"strings"
	"testing"
)

func TestFilterCheck(t *testing.T) {
	good := Candidate{Interface: "eth0", Ifindex: 2, Addr: netip.MustParseAddr("192.0.2.10"), Up: true, Carrier: true, DefaultRoute: true}
	def := DefaultFilter()
	strict := FilterConfig{SkipLoopback: true, SkipLinkLocal: true, SkipTentative: true, RequireDefaultRoute: true,
		Allow: []string{"eth*", "wlan*"}, Deny: []string{"eth9"}}
	edit := func(f func(*Candidate)) Candidate {
		c := good
		f(&c)
		return c
	}
	tests := []struct {
		name   string
		f      FilterConfig
		c      Candidate
		reason string // "" = usable
	}{
		{"usable", def, good, ""},
		{"usable, strict", strict, good, ""},
		{"usable IPv6", strict, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("2001:db8::1") }), ""},
		{"invalid address", def, edit(func(c *Candidate) { c.Addr = netip.Addr{} }), "invalid address"},
		{"unspecified", FilterConfig{}, edit(func(c *Candidate) { c.Addr = netip.IPv6Unspecified() }), "not unicast"},
		{"multicast", FilterConfig{}, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("ff02::1") }), "not unicast"},
		{"broadcast", FilterConfig{}, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("255.255.255.255") }), "not unicast"},
		{"link down", def, edit(func(c *Candidate) { c.Up = false }), "link down"},
		{"no carrier", def, edit(func(c *Candidate) { c.Carrier = false }), "no carrier"},
		{"loopback address", def, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("127.0.0.1") }), "loopback"},
		{"loopback link", def, edit(func(c *Candidate) { c.Interface, c.Loopback = "lo", true }), "loopback"},
		{"loopback kept", FilterConfig{}, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("::1") }), ""},
		{"link-local IPv6", def, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("fe80::1%eth0") }), "link-local"},
		{"link-local IPv4", def, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("169.254.3.4") }), "link-local"},
		{"link scope", def, edit(func(c *Candidate) { c.LinkLocal = true }), "link-local"},
		{"link-local kept", FilterConfig{}, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("fe80::1") }), ""},
		{"dad failed, whatever the config", FilterConfig{}, edit(func(c *Candidate) { c.DADFailed = true }), "duplicate address"},
		{"tentative", def, edit(func(c *Candidate) { c.Tentative = true }), "tentative"},
		{"deprecated", def, edit(func(c *Candidate) { c.Deprecated = true }), "deprecated"},
		{"tentative kept", FilterConfig{}, edit(func(c *Candidate) { c.Tentative, c.Deprecated = true, true }), ""},
		{"denied", strict, edit(func(c *Candidate) { c.Interface = "eth9" }), "denied by pattern eth9"},
		{"not allowed", strict, edit(func(c *Candidate) { c.Interface = "usb0" }), "not in allow list"},
		{"no default route", strict, edit(func(c *Candidate) { c.DefaultRoute = false }), "no default route"},
		{"no default route, not required", def, edit(func(c *Candidate) { c.DefaultRoute = false }), ""},
		{"malformed pattern matches nothing", FilterConfig{Deny: []string{"eth["}}, good, ""},
		{"IPv4-mapped is IPv4", def, edit(func(c *Candidate) { c.Addr = netip.MustParseAddr("::ffff:127.0.0.1") }), "loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, reason := tt.f.Check(tt.c)
			if ok != (tt.reason == "") || reason != tt.reason {
				t.Errorf("Check = %t, %q; want %q", ok, reason, tt.reason)
			}
		})
	}
}

func TestDefaultFilterInterfaces(t *testing.T) {
	f := DefaultFilter()
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	base := Candidate{Addr: netip.MustParseAddr("10.55.0.1"), Up: true, Carrier: true}
	for name, usable := range map[string]bool{
		// the test lab's and a laptop's interfaces
		"c0": true, "c1": true, "s0": true, "s2": true, "eth0": true, "wlan0": true, "wlp3s0": true,
		"enp0s31f6": true, "wwan0": true, "usb0": true, "br0": true, "br-lan": true, "wg0": true, "tun0": true,
		// containers and virtual machines
		"docker0": false, "br-3f2a9c1d7e4b": false, "veth12ab34c": false, "virbr0": false,
		"lxcbr0": false, "lxdbr0": false, "podman0": false, "cni0": false,
	} {
		c := base
		c.Interface = name
		ok, reason := f.Check(c)
		if ok != usable || !ok && !strings.HasPrefix(reason, "denied by pattern ") {
			t.Errorf("%s: usable %t (%q), want %t", name, ok, reason, usable)
		}
	}
	// loopback, link-local and tentative addresses are skipped; no default
	// route is required
	if !f.SkipLoopback || !f.SkipLinkLocal || !f.SkipTentative || f.RequireDefaultRoute {
		t.Errorf("DefaultFilter() = %+v", f)
	}
}

func TestFilterValidate(t *testing.T) {
	if err := (FilterConfig{Allow: []string{"eth*"}, Deny: []string{"docker*"}}).Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	for _, f := range []FilterConfig{{Allow: []string{"eth["}}, {Deny: []string{"ok", `bad\`}}} {
		if err := f.Validate(); err == nil || !strings.Contains(err.Error(), "bad interface pattern") {
			t.Errorf("Validate(%v) = %v, want a bad pattern error", f, err)
		}
	}
}
