package service

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// memPreferences is a Preferences in memory.
type memPreferences struct {
	mu sync.Mutex
	m  map[string]string
}

func (p *memPreferences) Load() (map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.m), nil
}

func (p *memPreferences) Save(m map[string]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m = maps.Clone(m)
	return nil
}

// TestHandoverService: the handover policy in the loop, with probes: a
// warm standby on the expensive interface, failover when the initial
// subflow stalls, the way back after the hysteresis, and preferences set at
// run time.
func TestHandoverService(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	prefs := &memPreferences{}
	h := newHarness(t, withPolicy(PolicyHandover), withConfig(func(c *Config) {
		c.Interfaces = map[string]InterfaceConfig{"c1": {Preference: policy.PreferExpensive, FlagsDefault: true}}
		c.Handover = HandoverConfig{StallTimeout: 200 * time.Millisecond, Hysteresis: 3 * time.Second}
	}), withService(func(s *Service) { s.now = clock.Now; s.prefStore = prefs }))
	h.sendNet(append(hostNet(3), synced)...)
	h.take()
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	if got := h.s.ProbeInterval(); got != 0 {
		t.Errorf("ProbeInterval without connections = %v, want 0", got)
	}
	mark := h.mark()
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.settle()
	sameStrings(t, "subflows at ESTABLISHED", h.calls(mark, "CreateSubflow"), []string{
		"CreateSubflow 1 {ID:1 Addr:10.55.1.1 Port:0 Flags:backup Ifindex:3} 10.55.0.2:8080", // warm standby
		"CreateSubflow 1 {ID:2 Addr:10.55.2.1 Port:0 Flags: Ifindex:4} 10.55.0.2:8080",       // another cheap path
	})
	if got := h.s.ProbeInterval(); got != 200*time.Millisecond/3 {
		t.Errorf("ProbeInterval = %v, want a third of the stall timeout", got)
	}
	c, err := h.s.Connection(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	var c1Port, c2Port uint16
	for _, sf := range c.Subflows {
		switch sf.LocalAddress.String() {
		case "10.55.1.1":
			c1Port = sf.LocalPort
			if !sf.Backup {
				t.Errorf("the standby subflow is shown as not backup: %+v", sf)
			}
		case "10.55.2.1":
			c2Port = sf.LocalPort
		}
	}
	// probe reports the TCP state of every subflow the connection has
	// now, the initial one included (while it is closed, its probe is
	// ignored), stalled when its local address is c0's (or c2's) and
	// c0Stalled (c2Stalled).
	probe := func(c0Stalled, c2Stalled bool) {
		t.Helper()
		c, err := h.s.Connection(bg, id)
		if err != nil {
			t.Fatal(err)
		}
		locals := []netip.AddrPort{ap("10.55.0.1:40000")}
		for _, sf := range c.Subflows {
			locals = append(locals, netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort))
		}
		var ps []SubflowProbe
		for _, l := range locals {
			sp := SubflowProbe{Token: 1, Local: l, Remote: ap("10.55.0.2:8080"), RTT: time.Millisecond}
			if l.Addr().String() == "10.55.0.1" && c0Stalled || l.Addr().String() == "10.55.2.1" && c2Stalled {
				sp.Unacked, sp.LastAckRecv = 12, time.Second
			}
			ps = append(ps, sp)
		}
		if err := h.s.ProbeSubflows(bg, ps); err != nil {
			t.Fatal(err)
		}
		h.settle()
	}
	probe(false, false)
	if got := h.calls(mark, "SetSubflowFlags", "DestroySubflow"); len(got) != 0 {
		t.Errorf("actions while every path works: %q", got)
	}

	// Data outstanding with the last acknowledgement long ago, as after an
	// idle time: not a stall yet, the data has just been sent.
	mark = h.mark()
	probe(true, true)
	if got := h.calls(mark, "SetSubflowFlags", "DestroySubflow"); len(got) != 0 {
		t.Errorf("a stall seen at the first probe of outstanding data: %q", got)
	}
	// Still nothing acknowledged 300 ms later: both cheap paths stall. The
	// initial subflow is made backup, the other closed (and probed again as
	// backup), the standby promoted.
	clock.Add(300 * time.Millisecond)
	probe(true, true)
	got := h.calls(mark, "SetSubflowFlags", "DestroySubflow", "CreateSubflow")
	want := []string{
		"DestroySubflow 1 10.55.0.1:40000 10.55.0.2:8080",
		"DestroySubflow 1 10.55.2.1:" + itoa(c2Port) + " 10.55.0.2:8080",
		"SetSubflowFlags 1 10.55.1.1:" + itoa(c1Port) + " 10.55.0.2:8080 ",
	}
	if len(got) < 3 || !equalPrefix(got[:3], want) || slices.Index(got[3:], want[0]) >= 0 {
		t.Errorf("failover: %q, want first %q, and the initial subflow closed once", got, want)
	}

	// The cheap paths work again (the probes made as backup came up):
	// nothing until the hysteresis is over, then the traffic moves back.
	c, err = h.s.Connection(bg, id)
	if err != nil {
		t.Fatal(err)
	}
	var probe0 netip.AddrPort
	for _, sf := range c.Subflows {
		if sf.LocalAddress.String() == "10.55.0.1" {
			probe0 = netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort)
			if !sf.Backup {
				t.Errorf("the probe on c0 is not backup: %+v", sf)
			}
		}
	}
	if !probe0.IsValid() {
		t.Fatalf("no probe subflow on c0 after the failover: %+v", c.Subflows)
	}
	mark = h.mark()
	probe(false, false)
	clock.Add(2 * time.Second)
	probe(false, false)
	if got := h.calls(mark, "SetSubflowFlags"); len(got) != 0 {
		t.Errorf("moved back before the hysteresis: %q", got)
	}
	clock.Add(1100 * time.Millisecond)
	probe(false, false)
	probe(false, false) // the standby is demoted at the decision after the promotion
	got = h.calls(mark, "SetSubflowFlags")
	if len(got) < 2 || got[0] != "SetSubflowFlags 1 "+probe0.String()+" 10.55.0.2:8080 " ||
		!slices.Contains(got, "SetSubflowFlags 1 10.55.1.1:"+itoa(c1Port)+" 10.55.0.2:8080 backup") {
		t.Errorf("back after the hysteresis: %q, want c0's probe promoted, then c1 demoted", got)
	}

	// At run time c1 becomes cheap: its subflow is promoted at once; then
	// off: its subflow goes. The setting is kept for a restart.
	mark = h.mark()
	if err := h.s.SetInterfacePreference(bg, Caller{Name: ":1.7"}, "c1", "cheap"); err != nil {
		t.Fatal(err)
	}
	h.settle()
	sameStrings(t, "c1 made cheap", h.calls(mark, "SetSubflowFlags"), []string{
		"SetSubflowFlags 1 10.55.1.1:" + itoa(c1Port) + " 10.55.0.2:8080 ",
	})
	mark = h.mark()
	if err := h.s.SetInterfacePreference(bg, Caller{Name: ":1.7"}, "c1", "off"); err != nil {
		t.Fatal(err)
	}
	h.settle()
	if got := h.calls(mark, "DestroySubflow"); len(got) != 1 || !strings.Contains(got[0], "10.55.1.1:") {
		t.Errorf("c1 off: %q, want its subflow destroyed", got)
	}
	m, err := h.s.Manager(bg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Preferences["c1"] != "off" || m.Preferences["c0"] != "cheap" {
		t.Errorf("Preferences = %v", m.Preferences)
	}
	if saved, _ := prefs.Load(); saved["c1"] != "off" {
		t.Errorf("saved preferences %v", saved)
	}
	if err := h.s.SetInterfacePreference(bg, Caller{}, "c1", "pricey"); err == nil {
		t.Error("SetInterfacePreference accepted pricey")
	}
	if err := h.s.SetInterfacePreference(bg, Caller{}, "a/b", "cheap"); err == nil {
		t.Error("SetInterfacePreference accepted a/b")
	}
	addrs, err := h.s.Addresses(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.Interface == "c1" && (a.Usable || a.Reason != reasonPrefOff) {
			t.Errorf("c1's address %v: usable %v, reason %q", a.Address, a.Usable, a.Reason)
		}
	}

	// A new service with the saved preferences: c1 is off from the start.
	h2 := newHarness(t, withPolicy(PolicyHandover), withService(func(s *Service) { s.prefStore = prefs }))
	h2.sendNet(append(hostNet(2), synced)...)
	h2.take()
	if m, err := h2.s.Manager(bg); err != nil || m.Preferences["c1"] != "off" || len(m.LocalAddresses) != 2 {
		t.Errorf("after a restart: preferences %v, local addresses %v (%v)", m.Preferences, m.LocalAddresses, err)
	}
}

// TestPreferenceDefaults: metered NetworkManager devices and mobile-data
// names are expensive (backup flags for the other policies), unless the
// configuration says otherwise.
func TestPreferenceDefaults(t *testing.T) {
	h := newHarness(t, withPolicy(PolicyEndpoints), withPM("kernel"), withConfig(func(c *Config) {
		c.Interfaces = map[string]InterfaceConfig{"wwan1": {Preference: policy.PreferCheap, FlagsDefault: true, Flags: c.EndpointFlags}}
	}))
	h.setNM(NMState{Running: true, Interfaces: map[string]NMInterface{}})
	evs := []NetEvent{}
	for i, name := range []string{"eth0", "wwan0", "wwan1", "rmnet_data0"} {
		evs = append(evs, NetEvent{Kind: NetLinkChanged, Link: Link{Index: 10 + i, Name: name, Up: true, Carrier: true}},
			NetEvent{Kind: NetAddressAdded, Address: LinkAddress{Index: 10 + i, Prefix: netip.MustParsePrefix("10.9." + itoa(uint16(i)) + ".1/24")}})
	}
	h.sendNet(append(evs, synced)...)
	h.take()
	m, err := h.s.Manager(bg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"eth0": "cheap", "wwan0": "expensive", "wwan1": "cheap", "rmnet_data0": "expensive"}
	if !maps.Equal(m.Preferences, want) {
		t.Errorf("Preferences = %v, want %v", m.Preferences, want)
	}
	sameStrings(t, "endpoints", h.endpointList(), []string{
		"10.9.0.1 [subflow] eth0 policy", "10.9.1.1 [subflow,backup] wwan0 policy",
		"10.9.2.1 [subflow] wwan1 policy", "10.9.3.1 [subflow,backup] rmnet_data0 policy",
	})
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }

func equalPrefix(got, want []string) bool {
	for i := range want {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// TestResetNotRetried: a subflow the policy made that the peer resets for
// a transient reason is made again after the backoff; one reset as
// administratively prohibited is not.
func TestResetNotRetried(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface),
		withService(func(s *Service) { s.backoff = backoff{min: 10 * time.Millisecond, max: 20 * time.Millisecond} }))
	h.sendNet(append(hostNet(2), synced)...)
	h.take()
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.settle()
	for _, tc := range []struct {
		reset uint32
		again bool
	}{{5, true}, {3, false}} {
		c, err := h.s.Connection(bg, id)
		if err != nil || len(c.Subflows) != 1 {
			t.Fatalf("connection %+v, %v: want one subflow", c, err)
		}
		sf := c.Subflows[0]
		mark := h.mark()
		h.send(pm.Event{Type: pm.EventSubClosed, Token: 1, LocalAddr: sf.LocalAddress, LocalPort: sf.LocalPort,
			RemoteAddr: sf.RemoteAddress, RemotePort: sf.RemotePort, ResetReason: tc.reset, Error: 104})
		time.Sleep(100 * time.Millisecond) // past the backoff
		h.settle()
		h.take()
		if got := len(h.calls(mark, "CreateSubflow")) > 0; got != tc.again {
			t.Errorf("reset %v: made again %v, want %v", pm.ResetReason(tc.reset), got, tc.again)
		}
		if tc.again {
			// the fake still has the old one; the service has the new one
			h.settle()
		}
	}
	if !strings.Contains(h.log.String(), "reset=administratively-prohibited") || !strings.Contains(h.log.String(), "error=ECONNRESET") {
		t.Errorf("the log does not name the reason:\n%s", h.log.String())
	}
}
