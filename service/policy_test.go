package service

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// The host the policy tests run on: interface ci (index i+2) has
// 10.55.i.1/24 and fd00:55:i::1/64, up with carrier, and a default route
// of both families; lo has 127.0.0.1.

func netLink(i int, up bool) NetEvent {
	name := fmt.Sprintf("c%d", i)
	return NetEvent{Kind: NetLinkChanged, Link: Link{Index: i + 2, Name: name, Up: up, Carrier: up}}
}

func netAddr(kind NetEventKind, i int, v6 bool) NetEvent {
	p := fmt.Sprintf("10.55.%d.1/24", i)
	if v6 {
		p = fmt.Sprintf("fd00:55:%d::1/64", i)
	}
	return NetEvent{Kind: kind, Address: LinkAddress{Index: i + 2, Prefix: netip.MustParsePrefix(p)}}
}

func netDefault(kind NetEventKind, i int, v6 bool) NetEvent {
	dst := "0.0.0.0/0"
	if v6 {
		dst = "::/0"
	}
	return NetEvent{Kind: kind, Route: Route{Index: i + 2, Dst: netip.MustParsePrefix(dst)}}
}

// hostNet returns the events of a host with n interfaces, without the
// final NetSynced.
func hostNet(n int) []NetEvent {
	evs := []NetEvent{
		{Kind: NetLinkChanged, Link: Link{Index: 1, Name: "lo", Up: true, Carrier: true, Loopback: true}},
		{Kind: NetAddressAdded, Address: LinkAddress{Index: 1, Prefix: netip.MustParsePrefix("127.0.0.1/8")}},
	}
	for i := range n {
		evs = append(evs, netLink(i, true), netAddr(NetAddressAdded, i, false), netAddr(NetAddressAdded, i, true),
			netDefault(NetRouteAdded, i, false), netDefault(NetRouteAdded, i, true))
	}
	return evs
}

var synced = NetEvent{Kind: NetSynced}

// settle forwards the fake kernel's events until it emits no more.
func (h *harness) settle() {
	h.t.Helper()
	for {
		h.take() // the loop has handled everything, and the fake emitted what it caused
		n := 0
		for more := true; more; {
			select {
			case ev := <-h.k.Events():
				h.events <- ev
				n++
			default:
				more = false
			}
		}
		if n == 0 {
			return
		}
	}
}

// calls returns the fake kernel's calls from index from on whose method is
// one of methods.
func (h *harness) calls(from int, methods ...string) []string {
	var out []string
	for _, c := range h.k.Calls()[from:] {
		m, _, _ := strings.Cut(c, " ")
		if slices.Contains(methods, m) {
			out = append(out, c)
		}
	}
	return out
}

// mark returns the number of fake-kernel calls so far.
func (h *harness) mark() int { return len(h.k.Calls()) }

// endpoints returns the Endpoints property as "addr [flags] if origin",
// sorted, and checks that it is the kernel's table.
func (h *harness) endpoints() []string {
	h.t.Helper()
	m, err := h.s.Manager(bg)
	if err != nil {
		h.t.Fatal(err)
	}
	kernel, err := h.kernel.Endpoints()
	if err != nil {
		h.t.Fatal(err)
	}
	var out, inKernel []string
	for _, e := range m.Endpoints {
		out = append(out, fmt.Sprintf("%s [%s] %s %s", e.Addr, e.Flags, e.Interface, e.Origin))
		inKernel = append(inKernel, fmt.Sprintf("%d %s %s", e.ID, e.Addr, e.Flags))
	}
	var want []string
	for _, e := range kernel {
		want = append(want, fmt.Sprintf("%d %s %s", e.ID, e.Addr, e.Flags))
	}
	sameStrings(h.t, "Endpoints property and the kernel's table", inKernel, want)
	slices.Sort(out)
	return out
}

// endpointID returns the id of the endpoint of addr in the Endpoints
// property.
func (h *harness) endpointID(addr string) uint8 {
	h.t.Helper()
	m, err := h.s.Manager(bg)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range m.Endpoints {
		if e.Addr.String() == addr {
			return e.ID
		}
	}
	h.t.Fatalf("no endpoint of %s: %v", addr, m.Endpoints)
	return 0
}

// subflows returns connection id's subflows as "local->remote".
func (h *harness) subflows(id uint64) []string {
	h.t.Helper()
	c, err := h.s.Connection(bg, id)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, sf := range c.Subflows {
		out = append(out, fmt.Sprintf("%s->%s:%d", sf.LocalAddress, sf.RemoteAddress, sf.RemotePort))
	}
	slices.Sort(out)
	return out
}

func withPolicy(name string) harnessOpt { return withConfig(func(c *Config) { c.Policy = name }) }

func TestEndpointsPolicy(t *testing.T) {
	k := pmtest.NewFakeKernel()
	// Found at start: another program's endpoint, for an address of c2.
	if _, err := k.AddEndpoint(pm.Address{Addr: netip.MustParseAddr("10.55.2.1"), Flags: pm.FlagSignal}); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, withKernel(k), withPM("kernel"), withPolicy(PolicyEndpoints), withConfig(func(c *Config) {
		c.Interfaces = map[string]InterfaceConfig{"c1": {Flags: pm.FlagSubflow | pm.FlagBackup}}
	}))
	h.take() // the start is done
	if log := h.log.String(); !strings.Contains(log, "another program manages endpoints too") {
		t.Errorf("no word at start of the endpoint found:\n%s", log)
	}

	// Nothing before the addresses are known in full.
	mark := h.mark()
	h.sendNet(hostNet(3)...)
	h.take()
	if got := h.calls(mark, "AddEndpoint", "DeleteEndpoint", "SetEndpointFlags"); len(got) != 0 {
		t.Fatalf("endpoint changes before NetSynced: %v", got)
	}
	h.sendNet(synced)
	h.take()
	all := []string{
		"10.55.0.1 [subflow] c0 policy",
		"10.55.1.1 [subflow,backup] c1 policy",
		"10.55.2.1 [signal]  external",
		"192.0.2.7 [signal]  admin",
		"fd00:55:1::1 [subflow,backup] c1 policy",
		"fd00:55:2::1 [subflow] c2 policy",
		"fd00:55::1 [subflow] c0 policy",
	}
	without := func(drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(all), func(s string) bool {
			return slices.ContainsFunc(drop, func(d string) bool { return strings.HasPrefix(s, d+" ") })
		})
	}
	sameStrings(t, "endpoints after sync", h.endpoints(), without("192.0.2.7"))

	// An administrator's endpoint, for an address that is not usable.
	if _, err := h.s.AddEndpoint(bg, admin, policy.Endpoint{Address: pm.Address{Addr: netip.MustParseAddr("192.0.2.7"), Flags: pm.FlagSignal}}); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "endpoints after an admin's add", h.endpoints(), all)

	steps := []struct {
		name   string
		events []NetEvent
		want   []string
	}{
		{"c0's IPv4 address removed", []NetEvent{netAddr(NetAddressRemoved, 0, false)}, without("10.55.0.1")},
		{"c1 loses carrier", []NetEvent{netLink(1, false)}, without("10.55.0.1", "10.55.1.1", "fd00:55:1::1")},
		{"c2 loses carrier: the external endpoint stays", []NetEvent{netLink(2, false)},
			without("10.55.0.1", "10.55.1.1", "fd00:55:1::1", "fd00:55:2::1")},
		{"all back", []NetEvent{netAddr(NetAddressAdded, 0, false), netLink(1, true), netLink(2, true)}, all},
		{"again", []NetEvent{netLink(1, false), netLink(1, true)}, all},
	}
	for _, st := range steps {
		h.sendNet(st.events...)
		sameStrings(t, st.name, h.endpoints(), st.want)
	}

	// An administrator removes one of the policy's endpoints: it comes
	// back. The kernel's table is what the property says.
	if err := h.s.RemoveEndpoint(bg, admin, h.endpointID("10.55.0.1")); err != nil {
		t.Fatal(err)
	}
	sameStrings(t, "after an admin removed the policy's endpoint", h.endpoints(), all)

	// Clean stop: the policy's endpoints go, the others stay.
	h.stop()
	kernel, _ := k.Endpoints()
	var left []string
	for _, e := range kernel {
		left = append(left, fmt.Sprintf("%s %s", e.Addr, e.Flags))
	}
	sameStrings(t, "endpoints after stop", left, []string{"10.55.2.1 signal", "192.0.2.7 signal"})
}

func TestEndpointsPolicyKeepsEndpointsOnExit(t *testing.T) {
	k := pmtest.NewFakeKernel()
	h := newHarness(t, withKernel(k), withPM("kernel"), withPolicy(PolicyEndpoints),
		withConfig(func(c *Config) { c.RemoveOnExit = false }))
	h.sendNet(append(hostNet(1), synced)...)
	h.take()
	h.stop()
	if eps, _ := k.Endpoints(); len(eps) != 2 {
		t.Errorf("endpoints after stop with remove_on_exit = false: %v, want 2", eps)
	}
}

// TestEndpointsKeptOnExitForRestart: a stop for a restart (the bus went
// away) keeps the policy's endpoints even with remove_on_exit.
func TestEndpointsKeptOnExitForRestart(t *testing.T) {
	k := pmtest.NewFakeKernel()
	h := newHarness(t, withKernel(k), withPM("kernel"), withPolicy(PolicyEndpoints))
	h.sendNet(append(hostNet(1), synced)...)
	h.take()
	h.s.ExitForRestart()
	h.stop()
	if eps, _ := k.Endpoints(); len(eps) != 2 {
		t.Errorf("endpoints after a stop for a restart: %v, want 2", eps)
	}
}

// TestEndpointsPolicyDefaultRoute: with require_default_route, endpoints
// follow the default routes.
func TestEndpointsPolicyDefaultRoute(t *testing.T) {
	h := newHarness(t, withPM("kernel"), withPolicy(PolicyEndpoints),
		withConfig(func(c *Config) { c.Filter.RequireDefaultRoute = true }))
	h.sendNet(append(hostNet(2), synced)...)
	count := func() int { return len(h.endpoints()) }
	if n := count(); n != 4 {
		t.Fatalf("%d endpoints, want 4: %v", n, h.endpoints())
	}
	h.sendNet(netDefault(NetRouteRemoved, 1, false))
	if got := h.endpoints(); len(got) != 3 || slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "10.55.1.1") }) {
		t.Errorf("after c1's IPv4 default route went: %v", got)
	}
	h.sendNet(netDefault(NetRouteAdded, 1, false))
	if n := count(); n != 4 {
		t.Errorf("after it came back: %v", h.endpoints())
	}
}

// implicitKernel is a fake kernel with an implicit endpoint (made by the
// kernel for a subflow) until an endpoint is added for its address, which
// replaces it and keeps its id, as the kernel does.
type implicitKernel struct {
	*pmtest.FakeKernel
	implicit *pm.Address
}

func (k *implicitKernel) Endpoints() ([]pm.Address, error) {
	eps, err := k.FakeKernel.Endpoints()
	if err == nil && k.implicit != nil {
		eps = append(eps, *k.implicit)
		slices.SortFunc(eps, func(a, b pm.Address) int { return int(a.ID) - int(b.ID) })
	}
	return eps, err
}

func (k *implicitKernel) AddEndpoint(e pm.Address) (uint8, error) {
	if k.implicit != nil && e.Addr == k.implicit.Addr && e.ID == 0 {
		e.ID = k.implicit.ID
		k.implicit = nil
	}
	return k.FakeKernel.AddEndpoint(e)
}

func TestEndpointsPolicyReplacesImplicit(t *testing.T) {
	var ik *implicitKernel
	h := newHarness(t, withPM("kernel"), withPolicy(PolicyEndpoints), withKernelWrapper(func(k *pmtest.FakeKernel) Kernel {
		ik = &implicitKernel{FakeKernel: k, implicit: &pm.Address{ID: 9, Addr: netip.MustParseAddr("10.55.0.1"), Flags: pm.FlagImplicit}}
		return ik
	}))
	sameStrings(t, "at start", h.endpoints(), []string{"10.55.0.1 [implicit]  external"})
	h.sendNet(netLink(0, true), netAddr(NetAddressAdded, 0, false), synced)
	sameStrings(t, "after sync", h.endpoints(), []string{"10.55.0.1 [subflow] c0 policy"})
	if id := h.endpointID("10.55.0.1"); id != 9 {
		t.Errorf("the replacing endpoint has id %d, want the implicit one's, 9", id)
	}
	h.sendNet(netAddr(NetAddressRemoved, 0, false))
	sameStrings(t, "after the address went", h.endpoints(), nil)
}

// TestStalePathManagerLabel: a connection made just after another program
// switched the path manager to the in-kernel one, before the service read
// it again, is labelled userspace; the policy's first create is refused
// ("userspace PM not selected"), the connection is relabelled and left
// alone, not tried again, and the next request for it is refused before
// reaching the kernel.
func TestStalePathManagerLabel(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	h := newHarness(t, withPolicy(PolicySubflowPerInterface), withService(func(s *Service) { s.now = clock.Now }))
	h.sendNet(append(hostNet(3), synced)...)
	h.take()
	h.setPM("kernel")
	mark := h.mark()
	h.k.AddConnection(4, false, ap("10.55.0.1:40002"), ap("10.55.0.2:8080"))
	h.settle()
	clock.Add(time.Minute) // every backoff over
	h.inspect(h.s.retryDue)
	h.settle()
	if got := h.calls(mark, "CreateSubflow"); len(got) != 1 {
		t.Errorf("creates for a connection labelled with a stale path manager: %v, want the one refused", got)
	}
	id, err := h.s.ConnectionByToken(bg, 4)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := h.s.Connection(bg, id); c.Userspace {
		t.Error("the refused connection is still labelled userspace")
	}
	if m, _ := h.s.Manager(bg); m.KernelPathManager != "kernel" {
		t.Errorf("KernelPathManager %q after the refusal, want kernel", m.KernelPathManager)
	}
	mark = h.mark()
	_, err = h.s.AnnounceAddress(bg, Caller{}, id, netip.MustParseAddr("10.55.1.1"), 0, 0)
	wantKind(t, err, ErrNotSupported)
	if got := h.calls(mark, "Announce"); len(got) != 0 {
		t.Errorf("a request for the relabelled connection reached the kernel: %v", got)
	}
}

func TestSubflowPerInterface(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface), withConfig(func(c *Config) {
		c.Interfaces = map[string]InterfaceConfig{"c2": {Flags: pm.FlagSubflow | pm.FlagBackup}}
	}))
	h.sendNet(append(hostNet(3), synced)...)
	h.take()
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}

	mark := h.mark()
	id4 := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	id6 := h.open(2, "[fd00:55:1::1]:40000", "[fd00:55:0::2]:8080")
	h.settle()
	sameStrings(t, "requests", h.calls(mark, "CreateSubflow"), []string{
		"CreateSubflow 1 {ID:1 Addr:10.55.1.1 Port:0 Flags: Ifindex:3} 10.55.0.2:8080",
		"CreateSubflow 1 {ID:2 Addr:10.55.2.1 Port:0 Flags:backup Ifindex:4} 10.55.0.2:8080",
		"CreateSubflow 2 {ID:3 Addr:fd00:55::1 Port:0 Flags: Ifindex:2} [fd00:55::2]:8080",
		"CreateSubflow 2 {ID:4 Addr:fd00:55:2::1 Port:0 Flags:backup Ifindex:4} [fd00:55::2]:8080",
	})
	sameStrings(t, "IPv4 subflows", h.subflows(id4), []string{"10.55.1.1->10.55.0.2:8080", "10.55.2.1->10.55.0.2:8080"})
	sameStrings(t, "IPv6 subflows", h.subflows(id6), []string{"fd00:55:2::1->fd00:55::2:8080", "fd00:55::1->fd00:55::2:8080"})
	// Answered requests leave nothing behind: a connection may live for
	// days after them.
	h.inspect(func() {
		for _, token := range []uint32{1, 2} {
			if c := h.s.conns.byToken[token]; c.pending != nil || c.closing != nil {
				t.Errorf("connection %d keeps pending %v (cap %d), closing %v (cap %d)",
					token, c.pending, cap(c.pending), c.closing, cap(c.closing))
			}
		}
	})

	// A connection of the in-kernel path manager is not the policy's.
	mark = h.mark()
	h.setPMSeen("kernel")
	h.k.AddConnection(3, false, ap("10.55.0.1:40001"), ap("10.55.0.2:8080"))
	h.settle()
	if got := h.calls(mark, "CreateSubflow"); len(got) != 0 {
		t.Errorf("subflows for an in-kernel connection: %v", got)
	}

	// c1's IPv4 address goes: its subflow goes; it comes back: so does
	// the subflow, at once (the policy closed it: no backoff).
	mark = h.mark()
	h.sendNet(netAddr(NetAddressRemoved, 1, false))
	h.settle()
	if got := h.calls(mark, "DestroySubflow", "CreateSubflow"); len(got) != 1 || !strings.HasPrefix(got[0], "DestroySubflow 1 10.55.1.1:") {
		t.Errorf("after the address went: %v", got)
	}
	sameStrings(t, "IPv4 subflows without c1's address", h.subflows(id4), []string{"10.55.2.1->10.55.0.2:8080"})
	h.inspect(func() {
		if c := h.s.conns.byToken[1]; c.closing != nil {
			t.Errorf("closing %v (cap %d) after the subflow closed", c.closing, cap(c.closing))
		}
	})
	h.sendNet(netAddr(NetAddressAdded, 1, false))
	h.settle()
	sameStrings(t, "IPv4 subflows with c1's address back", h.subflows(id4), []string{"10.55.1.1->10.55.0.2:8080", "10.55.2.1->10.55.0.2:8080"})

	// c2 loses carrier: both its subflows go, and come back with it.
	h.sendNet(netLink(2, false))
	h.settle()
	sameStrings(t, "IPv4 subflows, c2 down", h.subflows(id4), []string{"10.55.1.1->10.55.0.2:8080"})
	sameStrings(t, "IPv6 subflows, c2 down", h.subflows(id6), []string{"fd00:55::1->fd00:55::2:8080"})
	h.sendNet(netLink(2, true))
	h.settle()
	sameStrings(t, "IPv6 subflows, c2 up", h.subflows(id6), []string{"fd00:55:2::1->fd00:55::2:8080", "fd00:55::1->fd00:55::2:8080"})

	// Converged: another change that does not concern them asks nothing.
	mark = h.mark()
	h.sendNet(netAddr(NetAddressAdded, 5, false))
	h.settle()
	if got := h.calls(mark, "CreateSubflow", "DestroySubflow", "Announce", "Remove"); len(got) != 0 {
		t.Errorf("actions after convergence: %v", got)
	}
}

// serverConn makes a server-side userspace connection in the fake kernel
// and hands its events to the service; it returns the object number.
func (h *harness) serverConn(token uint32, local, remote string) uint64 {
	h.t.Helper()
	h.k.AddConnection(token, true, ap(local), ap(remote))
	for range 2 { // the fake's client-side CREATED and ESTABLISHED
		<-h.k.Events()
	}
	ev := pm.Event{Token: token, Family: 2, LocalAddr: ap(local).Addr(), LocalPort: ap(local).Port(),
		RemoteAddr: ap(remote).Addr(), RemotePort: ap(remote).Port(), ServerSide: true, Flags: pm.EventFlagServerSide}
	ev.Type = pm.EventCreated
	h.send(ev)
	ev.Type = pm.EventEstablished
	h.send(ev)
	id, err := h.s.ConnectionByToken(bg, token)
	if err != nil {
		h.t.Fatal(err)
	}
	return id
}

func TestSubflowPerInterfaceServer(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface))
	h.sendNet(append(hostNet(3), synced)...)
	id := h.serverConn(1, "10.55.0.1:8080", "10.55.0.2:40000")
	announced := func() []string {
		c, err := h.s.Connection(bg, id)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range c.AnnouncedAddresses {
			out = append(out, a.Address.String())
		}
		return out
	}
	sameStrings(t, "announced", announced(), []string{"10.55.1.1", "10.55.2.1"})
	// Without a port in the ADD_ADDR (an IPv6 one with a port does not
	// fit next to TCP timestamps): the peer joins the connection's port,
	// where a listener of the daemon stands.
	sameStrings(t, "ANNOUNCE commands", h.calls(0, "Announce"), []string{
		"Announce 1 {ID:1 Addr:10.55.1.1 Port:0 Flags:signal Ifindex:0}",
		"Announce 1 {ID:2 Addr:10.55.2.1 Port:0 Flags:signal Ifindex:0}",
	})
	open := h.lis.openAddrs()
	slices.Sort(open)
	sameStrings(t, "listeners", open, []string{"10.55.1.1:8080", "10.55.2.1:8080"})
	mark := h.mark()
	h.sendNet(netLink(1, false))
	sameStrings(t, "announced, c1 down", announced(), []string{"10.55.2.1"})
	if got := h.calls(mark, "Remove"); len(got) != 1 {
		t.Errorf("REMOVE calls %v, want one", got)
	}
	sameStrings(t, "listeners, c1 down", h.lis.openAddrs(), []string{"10.55.2.1:8080"})
	h.sendNet(netLink(1, true))
	sameStrings(t, "announced, c1 back", announced(), []string{"10.55.2.1", "10.55.1.1"})
}

func TestFullmeshPolicy(t *testing.T) {
	h := newHarness(t, withPolicy(PolicyFullmesh))
	h.sendNet(append(hostNet(2), synced)...)
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.settle()
	sameStrings(t, "before the peer announces", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080"})
	h.send(pm.Event{Type: pm.EventAnnounced, Token: 1, Family: 2, RemoteID: 1, RemoteAddr: netip.MustParseAddr("10.55.9.2")})
	h.settle()
	sameStrings(t, "after", h.subflows(id), []string{
		"10.55.0.1->10.55.9.2:8080", "10.55.1.1->10.55.0.2:8080", "10.55.1.1->10.55.9.2:8080",
	})
}

// quietKernel accepts every subflow command and records it, and emits no
// event: the test says what the kernel reports.
type quietKernel struct {
	*pmtest.FakeKernel
	mu    sync.Mutex
	calls []string
	fail  error // for the next CreateSubflow
}

func (k *quietKernel) CreateSubflow(token uint32, local pm.Address, remote netip.AddrPort) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, fmt.Sprintf("create %s", local.Addr))
	err := k.fail
	k.fail = nil
	return err
}

func (k *quietKernel) DestroySubflow(token uint32, local, remote netip.AddrPort) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, fmt.Sprintf("destroy %s", local))
	return nil
}

func (k *quietKernel) since(from int) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.calls[min(from, len(k.calls)):])
}

func (k *quietKernel) mark() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.calls)
}

// TestPendingAndBackoff drives the subflow-per-interface policy with
// events of the test's: a requested subflow is pending until it is heard
// of, and failures back off.
func TestPendingAndBackoff(t *testing.T) {
	var qk *quietKernel
	h := newHarness(t, withPolicy(PolicySubflowPerInterface), withService(func(s *Service) {
		s.backoff = backoff{min: 300 * time.Millisecond, max: 1200 * time.Millisecond}
	}), withKernelWrapper(func(k *pmtest.FakeKernel) Kernel {
		qk = &quietKernel{FakeKernel: k}
		return qk
	}))
	h.sendNet(append(hostNet(3), synced)...)
	h.k.AddConnection(1, true, ap("10.55.0.1:40000"), ap("10.55.0.2:8080"))
	conn := func(typ pm.EventType) pm.Event {
		return pm.Event{Type: typ, Token: 1, Family: 2, LocalAddr: cliAddr, LocalPort: 40000, RemoteAddr: srvAddr, RemotePort: 8080}
	}
	sub := func(typ pm.EventType, local string, port uint16, errno uint8) pm.Event {
		return pm.Event{Type: typ, Token: 1, Family: 2, LocalAddr: netip.MustParseAddr(local), LocalPort: port,
			RemoteAddr: srvAddr, RemotePort: 8080, Error: errno}
	}
	creates := func(from int) []string {
		var out []string
		for _, c := range qk.since(from) {
			if a, ok := strings.CutPrefix(c, "create "); ok {
				out = append(out, a)
			}
		}
		return out
	}

	mark := qk.mark()
	h.send(conn(pm.EventCreated), conn(pm.EventEstablished))
	h.take()
	sameStrings(t, "at ESTABLISHED", creates(mark), []string{"10.55.1.1", "10.55.2.1"})

	// Both pending: a peer's announcement asks nothing more.
	mark = qk.mark()
	h.send(pm.Event{Type: pm.EventAnnounced, Token: 1, Family: 2, RemoteID: 1, RemoteAddr: netip.MustParseAddr("10.55.9.2")})
	h.take()
	sameStrings(t, "while pending", creates(mark), nil)

	// c1's comes up; c2's fails (connection refused): it backs off.
	h.send(sub(pm.EventSubEstablished, "10.55.1.1", 41000, 0), sub(pm.EventSubClosed, "10.55.2.1", 41001, 111))
	h.send(pm.Event{Type: pm.EventRemoved, Token: 1, RemoteID: 1})
	h.take()
	sameStrings(t, "after the failure", creates(mark), nil)
	h.inspect(func() {
		c := h.s.conns.byToken[1]
		if len(c.pending) != 0 || len(c.failures) != 1 || c.failures[0].count != 1 {
			t.Errorf("pending %v, failures %+v", c.pending, c.failures)
		}
	})
	// The retry when the backoff ends is refused by the kernel: the next
	// backoff is longer, and the refusal is in the log.
	qk.mu.Lock()
	qk.fail = &pm.Error{Op: "create subflow", Errno: syscall.EINVAL, Message: "some kernel words"}
	qk.mu.Unlock()
	start := time.Now()
	eventually(t, "the first retry", func() bool { return len(creates(mark)) == 1 })
	eventually(t, "the second retry", func() bool { return len(creates(mark)) == 2 })
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("two retries after %v: the backoffs are 300 ms and 600 ms", d)
	}
	if log := h.log.String(); !strings.Contains(log, "some kernel words") || !strings.Contains(log, "token=00000001") {
		t.Errorf("the refusal is not in the log:\n%s", log)
	}
	sameStrings(t, "retries", creates(mark), []string{"10.55.2.1", "10.55.2.1"})
	h.send(sub(pm.EventSubEstablished, "10.55.2.1", 41002, 0))

	// A subflow the policy made closes without being asked: back off too.
	mark = qk.mark()
	h.send(sub(pm.EventSubClosed, "10.55.1.1", 41000, 104))
	h.take()
	sameStrings(t, "right after the reset", creates(mark), nil)
	eventually(t, "the retry after the reset", func() bool { return len(creates(mark)) == 1 })

	// The closing of a subflow the policy closed itself is no failure.
	h.send(sub(pm.EventSubEstablished, "10.55.1.1", 41003, 0))
	mark = qk.mark()
	h.sendNet(netLink(2, false))
	h.take()
	if got := qk.since(mark); !slices.Equal(got, []string{"destroy 10.55.2.1:41002"}) {
		t.Fatalf("calls %v, want the destruction of c2's subflow", got)
	}
	h.send(sub(pm.EventSubClosed, "10.55.2.1", 41002, 0))
	h.sendNet(netLink(2, true))
	h.take()
	sameStrings(t, "c2 back", creates(mark), []string{"10.55.2.1"})
	h.inspect(func() {
		c := h.s.conns.byToken[1]
		if len(c.closing) != 0 || len(c.pending) != 1 {
			t.Errorf("closing %v, pending %v", c.closing, c.pending)
		}
	})
}

// TestPendingTimeout: a requested subflow never heard of fails.
func TestPendingTimeout(t *testing.T) {
	h := newHarness(t, withPolicy(PolicySubflowPerInterface), withService(func(s *Service) {
		s.pendingTO = 100 * time.Millisecond
		s.backoff = backoff{min: 50 * time.Millisecond, max: 50 * time.Millisecond}
	}))
	h.sendNet(append(hostNet(2), synced)...)
	h.k.AddConnection(1, true, ap("10.55.0.1:40000"), ap("10.55.0.2:8080"))
	mark := h.mark()
	h.send(pm.Event{Type: pm.EventEstablished, Token: 1, Family: 2, LocalAddr: cliAddr, LocalPort: 40000, RemoteAddr: srvAddr, RemotePort: 8080})
	eventually(t, "a second request after the timeout", func() bool { return len(h.calls(mark, "CreateSubflow")) == 2 })
	if log := h.log.String(); !strings.Contains(log, "no news of a requested subflow") {
		t.Errorf("log:\n%s", log)
	}
}

// TestControllerStopsThePolicy: while a controller is registered the policy
// does nothing; when the claim ends it reconciles every connection and
// endpoint.
func TestControllerStopsThePolicy(t *testing.T) {
	for _, end := range []string{"unregister", "vanish"} {
		t.Run(end, func(t *testing.T) {
			h := newHarness(t, withPolicy(PolicySubflowPerInterface))
			if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
				t.Fatal(err)
			}
			if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
				t.Fatal(err)
			}
			h.sendNet(append(hostNet(3), synced)...)
			mark := h.mark()
			id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
			// The controller adds one subflow, from c1.
			err := h.s.CreateSubflow(bg, ctlr, id, SubflowRequest{LocalAddress: cli2, RemoteAddress: srvAddr, RemotePort: 8080})
			if err != nil {
				t.Fatal(err)
			}
			h.settle()
			h.sendNet(netLink(2, false), netLink(2, true))
			h.settle()
			if got := h.calls(mark, "CreateSubflow"); len(got) != 1 {
				t.Fatalf("requests while controlled: %v, want the controller's only", got)
			}
			sameStrings(t, "subflows while controlled", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080"})

			if end == "unregister" {
				if err := h.s.UnregisterController(bg, ctlr, "/c"); err != nil {
					t.Fatal(err)
				}
			} else {
				h.s.ControllerVanished(ctlName)
			}
			h.settle()
			sameStrings(t, "subflows after the claim", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080", "10.55.2.1->10.55.0.2:8080"})
		})
	}
}

func TestControllerEndReconcilesEndpoints(t *testing.T) {
	h := newHarness(t, withPM("kernel"), withPolicy(PolicyEndpoints))
	if err := h.s.RegisterController(bg, ctlr, "/c"); err != nil {
		t.Fatal(err)
	}
	h.sendNet(append(hostNet(1), synced)...)
	if got := h.endpoints(); len(got) != 0 {
		t.Fatalf("endpoints while controlled: %v", got)
	}
	h.s.ControllerVanished(ctlName)
	sameStrings(t, "after", h.endpoints(), []string{"10.55.0.1 [subflow] c0 policy", "fd00:55::1 [subflow] c0 policy"})
}

func TestPathManagerCheck(t *testing.T) {
	h := newHarness(t, withPM("kernel"), withPolicy(PolicySubflowPerInterface))
	h.take() // the start is done
	want := "policy subflow-per-interface needs net.mptcp.path_manager=userspace; set it or set `set_path_manager = true`"
	if log := h.log.String(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, want) {
		t.Errorf("log lacks the error %q:\n%s", want, log)
	}
	if len(h.pmSets) != 0 {
		t.Errorf("path manager set without set_path_manager: %v", h.pmSets)
	}

	h = newHarness(t, withPM("kernel"), withPolicy(PolicySubflowPerInterface), withConfig(func(c *Config) { c.SetPathManager = true }))
	m, err := h.s.Manager(bg)
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	sets := slices.Clone(h.pmSets)
	h.mu.Unlock()
	if !slices.Equal(sets, []string{"userspace"}) || m.KernelPathManager != "userspace" {
		t.Errorf("set %v, KernelPathManager %q; want userspace", sets, m.KernelPathManager)
	}
	if log := h.log.String(); strings.Contains(log, "level=ERROR") {
		t.Errorf("error logged:\n%s", log)
	}
}

func TestReload(t *testing.T) {
	h := newHarness(t, withPolicy(PolicyNone))
	h.sendNet(append(hostNet(3), synced)...)
	if err := h.s.SetLimits(bg, Caller{}, Limits{Subflows: 8, AddAddrAccepted: 8}); err != nil {
		t.Fatal(err)
	}
	id := h.open(1, "10.55.0.1:40000", "10.55.0.2:8080")
	h.settle()
	if got := h.subflows(id); len(got) != 0 {
		t.Fatalf("policy none made subflows: %v", got)
	}
	h.take()

	// Invalid: refused, nothing changes.
	mark := h.mark()
	for _, bad := range []func(*Config){
		func(c *Config) { c.Policy = "mesh" },
		func(c *Config) { c.EndpointFlags = pm.FlagSignal | pm.FlagFullmesh },
		func(c *Config) { c.Filter.Deny = []string{"eth["} },
		func(c *Config) { c.Policy = PolicySubflowPerInterface; c.Limits = &Limits{Subflows: 9} },
	} {
		cfg := DefaultConfig()
		bad(&cfg)
		wantKind(t, h.s.Reload(bg, cfg), ErrInvalidArguments)
	}
	if m, _ := h.s.Manager(bg); m.Policy != PolicyNone {
		t.Errorf("policy %q after refused reloads", m.Policy)
	}
	if got := h.calls(mark, "CreateSubflow", "SetLimits"); len(got) != 1 { // the refused limits
		t.Errorf("calls after refused reloads: %v", got)
	}
	if ns := describeAll(h.take()); len(ns) != 0 {
		t.Errorf("published after refused reloads: %v", ns)
	}

	// Valid: a new policy and filter, applied to the live connection.
	cfg := DefaultConfig()
	cfg.Policy = PolicySubflowPerInterface
	cfg.Filter.Deny = []string{"c2"}
	if err := h.s.Reload(bg, cfg); err != nil {
		t.Fatal(err)
	}
	h.settle()
	sameStrings(t, "subflows after reload", h.subflows(id), []string{"10.55.1.1->10.55.0.2:8080"})
	m, err := h.s.Manager(bg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Policy != PolicySubflowPerInterface || slices.ContainsFunc(m.LocalAddresses, func(a LocalAddress) bool { return a.Interface == "c2" }) {
		t.Errorf("after reload: policy %q, local addresses %v", m.Policy, m.LocalAddresses)
	}

	// Back to the endpoints policy in a kernel-PM namespace: endpoints
	// made; then to none: they go.
	h.setPM("kernel")
	cfg = DefaultConfig()
	if err := h.s.Reload(bg, cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.endpoints(); len(got) != 6 {
		t.Errorf("endpoints after reload to endpoints: %v", got)
	}
	cfg.Interfaces = map[string]InterfaceConfig{"c0": {Flags: pm.FlagSubflow | pm.FlagBackup}}
	mark = h.mark()
	if err := h.s.Reload(bg, cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.calls(mark, "SetEndpointFlags", "AddEndpoint", "DeleteEndpoint"); len(got) != 2 ||
		!strings.HasPrefix(got[0], "SetEndpointFlags") || !strings.HasPrefix(got[1], "SetEndpointFlags") {
		t.Errorf("calls after a flags change: %v", got)
	}
	cfg.Policy = PolicyNone
	if err := h.s.Reload(bg, cfg); err != nil {
		t.Fatal(err)
	}
	if got := h.endpoints(); len(got) != 0 {
		t.Errorf("endpoints after reload to none: %v", got)
	}
}
