package service

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// addressReasons returns ListAddresses as "iface addr usable reason".
func (h *harness) addressReasons() []string {
	h.t.Helper()
	infos, err := h.s.Addresses(bg)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, a := range infos {
		if a.Interface == "lo" {
			continue
		}
		out = append(out, strings.TrimSpace(a.Interface+" "+a.Address.String()+" "+map[bool]string{true: "usable", false: "unusable"}[a.Usable]+" "+a.Reason))
	}
	return out
}

// endpointList returns the Endpoints property as "addr [flags] if
// origin", sorted, without comparing it with the kernel's table.
func (h *harness) endpointList() []string {
	h.t.Helper()
	m, err := h.s.Manager(bg)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, e := range m.Endpoints {
		out = append(out, e.Addr.String()+" ["+e.Flags.String()+"] "+e.Interface+" "+string(e.Origin))
	}
	slices.Sort(out)
	return out
}

func (h *harness) setNM(st NMState) {
	h.t.Helper()
	if err := h.s.SetNetworkManager(bg, st); err != nil {
		h.t.Fatal(err)
	}
}

// eventually retries cond until it holds or 5 s passed.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not after 5 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNetworkManagerEndpoints: the endpoints policy leaves NetworkManager's
// MPTCP interfaces to it and does not use those whose profile disables
// MPTCP; without NetworkManager they are like any other.
func TestNetworkManagerEndpoints(t *testing.T) {
	k := pmtest.NewFakeKernel()
	// NetworkManager's endpoint for c1's IPv4 address (dev c1, no port).
	if _, err := k.AddEndpoint(pm.Address{Addr: netip.MustParseAddr("10.55.1.1"), Flags: pm.FlagSubflow, Ifindex: 3}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, withKernel(k), withPolicy(PolicyEndpoints), withPM("kernel"),
		withService(func(s *Service) { s.pollEvery = 10 * time.Millisecond }))
	h.setNM(NMState{Running: true, Interfaces: map[string]NMInterface{"c1": {}, "c2": {MPTCPDisabled: true}}})
	h.sendNet(append(hostNet(3), synced)...)
	h.take()

	sameStrings(t, "endpoints", h.endpoints(), []string{
		"10.55.0.1 [subflow] c0 policy",
		"10.55.1.1 [subflow] c1 networkmanager",
		"fd00:55::1 [subflow] c0 policy",
	})
	sameStrings(t, "addresses", h.addressReasons(), []string{
		"c0 10.55.0.1 usable",
		"c0 fd00:55::1 usable",
		"c1 10.55.1.1 usable managed by NetworkManager",
		"c1 fd00:55:1::1 usable managed by NetworkManager",
		"c2 10.55.2.1 unusable MPTCP disabled by the NetworkManager profile",
		"c2 fd00:55:2::1 unusable MPTCP disabled by the NetworkManager profile",
	})
	m, err := h.s.Manager(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.LocalAddresses) != 4 || slices.ContainsFunc(m.LocalAddresses, func(a LocalAddress) bool { return a.Interface == "c2" }) {
		t.Errorf("LocalAddresses = %v, want c0's and c1's", m.LocalAddresses)
	}

	// NetworkManager stops: its endpoint stays and covers its address, the
	// other interfaces' addresses get the policy's.
	h.setNM(NMState{})
	sameStrings(t, "endpoints without NetworkManager", h.endpoints(), []string{
		"10.55.0.1 [subflow] c0 policy",
		"10.55.1.1 [subflow] c1 external",
		"10.55.2.1 [subflow] c2 policy",
		"fd00:55:1::1 [subflow] c1 policy",
		"fd00:55:2::1 [subflow] c2 policy",
		"fd00:55::1 [subflow] c0 policy",
	})

	// It comes back and takes c2 with MPTCP enabled: the policy's
	// endpoints there are left to it, as they are, and not added again
	// when it replaces them (as it does at activation).
	mark := h.mark()
	h.setNM(NMState{Running: true, Interfaces: map[string]NMInterface{"c1": {}, "c2": {}}})
	if got := h.calls(mark, "AddEndpoint", "DeleteEndpoint", "SetEndpointFlags"); len(got) != 0 {
		t.Errorf("the policy touched endpoints when NetworkManager took c2: %v", got)
	}
	sameStrings(t, "endpoints once NetworkManager took c2", h.endpoints(), []string{
		"10.55.0.1 [subflow] c0 policy",
		"10.55.1.1 [subflow] c1 networkmanager",
		"10.55.2.1 [subflow] c2 networkmanager",
		"fd00:55:1::1 [subflow] c1 networkmanager",
		"fd00:55:2::1 [subflow] c2 networkmanager",
		"fd00:55::1 [subflow] c0 policy",
	})
	for _, addr := range []string{"10.55.2.1", "fd00:55:2::1"} {
		if err := k.DeleteEndpoint(h.endpointID(addr)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := k.AddEndpoint(pm.Address{Addr: netip.MustParseAddr("10.55.2.1"), Flags: pm.FlagSubflow | pm.FlagBackup, Ifindex: 4}); err != nil {
		t.Fatal(err)
	}
	mark = h.mark()
	h.eventually("NetworkManager's endpoint on c2 seen", func() bool {
		return slices.Contains(h.endpointList(), "10.55.2.1 [subflow,backup] c2 networkmanager")
	})
	h.take()
	if got := h.calls(mark, "AddEndpoint", "DeleteEndpoint", "SetEndpointFlags"); len(got) != 0 {
		t.Errorf("the policy touched endpoints after NetworkManager replaced them: %v", got)
	}
	if slices.ContainsFunc(h.endpoints(), func(e string) bool { return strings.HasPrefix(e, "fd00:55:2::1") }) {
		t.Errorf("fd00:55:2::1 got an endpoint on NetworkManager's c2: %v", h.endpoints())
	}
}

// TestNetworkManagerIgnored: with network_manager = "ignore" its state
// changes nothing, and switching to "auto" at reload applies it.
func TestNetworkManagerIgnored(t *testing.T) {
	h := newHarness(t, withPolicy(PolicyEndpoints), withPM("kernel"),
		withConfig(func(c *Config) { c.NetworkManager = NetworkManagerIgnore }))
	h.setNM(NMState{Running: true, Interfaces: map[string]NMInterface{"c1": {MPTCPDisabled: true}}})
	h.sendNet(append(hostNet(2), synced)...)
	h.take()
	sameStrings(t, "endpoints, NetworkManager ignored", h.endpoints(), []string{
		"10.55.0.1 [subflow] c0 policy",
		"10.55.1.1 [subflow] c1 policy",
		"fd00:55:1::1 [subflow] c1 policy",
		"fd00:55::1 [subflow] c0 policy",
	})
	cfg := h.s.cfg // read before Reload; the loop does not change it meanwhile
	cfg.NetworkManager = NetworkManagerAuto
	if err := h.s.Reload(bg, cfg); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "endpoints after reload with auto", h.endpoints(), []string{
		"10.55.0.1 [subflow] c0 policy",
		"fd00:55::1 [subflow] c0 policy",
	})
	bad := cfg
	bad.NetworkManager = "sometimes"
	if err := h.s.Reload(bg, bad); err == nil || !strings.Contains(err.Error(), "network_manager") {
		t.Errorf("Reload with network_manager %q: %v, want an error naming network_manager", bad.NetworkManager, err)
	}
}

// TestNetworkManagerMetered: a metered interface's subflows are backup,
// set at once on live subflows when the state changes, unless
// [interfaces.NAME] sets the flags.
func TestNetworkManagerMetered(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface), withConfig(func(c *Config) {
		c.Interfaces = map[string]InterfaceConfig{"c3": {Flags: pm.FlagSubflow}}
	}))
	h.setNM(NMState{Running: true, Interfaces: map[string]NMInterface{"c1": {Metered: true}, "c3": {Metered: true}}})
	h.sendNet(append(hostNet(4), synced)...)
	h.take()
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	mark := h.mark()
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.settle()
	sameStrings(t, "requests", h.calls(mark, "CreateSubflow"), []string{
		"CreateSubflow 1 {ID:1 Addr:10.55.1.1 Port:0 Flags:backup Ifindex:3} 10.55.0.2:8080",
		"CreateSubflow 1 {ID:2 Addr:10.55.2.1 Port:0 Flags: Ifindex:4} 10.55.0.2:8080",
		"CreateSubflow 1 {ID:3 Addr:10.55.3.1 Port:0 Flags: Ifindex:5} 10.55.0.2:8080",
	})

	// c1 is no longer metered, c2 becomes so: the flags follow, on the
	// live subflows (MP_PRIO), and the connection shows them.
	mark = h.mark()
	h.setNM(NMState{Running: true, Interfaces: map[string]NMInterface{"c2": {Metered: true}, "c3": {Metered: true}}})
	h.settle()
	got := h.calls(mark, "SetSubflowFlags", "CreateSubflow", "DestroySubflow")
	if len(got) != 2 || !strings.HasPrefix(got[0], "SetSubflowFlags 1 10.55.1.1:") || !strings.HasSuffix(got[0], " 10.55.0.2:8080 ") ||
		!strings.HasPrefix(got[1], "SetSubflowFlags 1 10.55.2.1:") || !strings.HasSuffix(got[1], " 10.55.0.2:8080 backup") {
		t.Errorf("calls after the metered change: %q, want c1's subflow cleared and c2's set backup", got)
	}
	c, err := h.s.Connection(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, sf := range c.Subflows {
		if want := sf.LocalAddress.String() == "10.55.2.1"; sf.Backup != want {
			t.Errorf("subflow %v: backup %v, want %v", sf.LocalAddress, sf.Backup, want)
		}
	}
}

// TestRPFilterWarning: strict reverse-path filtering on a usable interface
// is a standing warning until it is loosened.
func TestRPFilterWarning(t *testing.T) {
	h := newHarness(t, withPolicy(PolicyNone))
	h.setSysctl("net/ipv4/conf/all/rp_filter", "0")
	h.setSysctl("net/ipv4/conf/c0/rp_filter", "0")
	h.setSysctl("net/ipv4/conf/c1/rp_filter", "1")
	h.sendNet(append(hostNet(2), synced)...)
	h.take()
	warnings := func() []string {
		m, err := h.s.Manager(bg)
		if err != nil {
			t.Fatal(err)
		}
		return m.Warnings
	}
	if w := warnings(); len(w) != 1 || !strings.Contains(w[0], "rp_filter 1) on c1") || !strings.Contains(w[0], "net.ipv4.conf.c1.rp_filter=2") {
		t.Errorf("Warnings = %q, want one about c1", w)
	}
	// all = 1 makes every interface strict that is not loose (the larger
	// value counts).
	h.setSysctl("net/ipv4/conf/all/rp_filter", "1")
	h.sendNet(netAddr(NetAddressAdded, 0, false))
	h.take()
	if w := warnings(); len(w) != 2 {
		t.Errorf("Warnings with all = 1: %q, want c0's and c1's", w)
	}
	h.setSysctl("net/ipv4/conf/all/rp_filter", "0")
	h.setSysctl("net/ipv4/conf/c1/rp_filter", "2")
	h.sendNet(netAddr(NetAddressAdded, 0, false))
	ns := h.take()
	if w := warnings(); len(w) != 0 {
		t.Errorf("Warnings once loose: %q", w)
	}
	if !slices.ContainsFunc(ns, func(n Notification) bool {
		mc, ok := n.(ManagerChanged)
		return ok && slices.Contains(mc.Changed, "Warnings")
	}) {
		t.Errorf("no ManagerChanged with Warnings in %v", describeAll(ns))
	}
}

// TestFightWarning: another program that keeps removing the policy's
// endpoints is a standing warning.
func TestFightWarning(t *testing.T) {
	h := newHarness(t, withPolicy(PolicyEndpoints), withPM("kernel"),
		withService(func(s *Service) { s.pollEvery = 10 * time.Millisecond }))
	h.setNM(NMState{Running: true}) // the poll runs while NetworkManager does
	h.sendNet(append(hostNet(1), synced)...)
	h.take()
	for i := range fightCount {
		mark := h.mark()
		if err := h.k.DeleteEndpoint(h.endpointID("10.55.0.1")); err != nil {
			t.Fatal(err)
		}
		h.eventually("the policy adds the endpoint again", func() bool {
			return len(h.calls(mark, "AddEndpoint")) == 1 && slices.Contains(h.endpointList(), "10.55.0.1 [subflow] c0 policy")
		})
		m, err := h.s.Manager(bg)
		if err != nil {
			t.Fatal(err)
		}
		if fight := slices.ContainsFunc(m.Warnings, func(w string) bool { return strings.Contains(w, "fight over c0") }); fight != (i == fightCount-1) {
			t.Errorf("after %d removals: Warnings = %q", i+1, m.Warnings)
		}
	}
}
