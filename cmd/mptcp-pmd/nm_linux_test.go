package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon/nmtest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The daemon beside a real NetworkManager (Debian's network-manager, run
// by nmtest in the lab's client namespace on the test's private bus).

// nmSetup is a lab whose client runs NetworkManager, on a private bus with
// the system's policy, the project's and NetworkManager's.
type nmSetup struct {
	lab *pmtest.Lab
	bus *dbustest.Bus
	k   *pmnl.Client // the client namespace's path manager, for the tests' own reads
}

func newNMSetup(t testing.TB, opts pmtest.LabOptions) *nmSetup {
	t.Helper()
	nmtest.Require(t)
	lab := pmtest.NewLab(t, opts)
	k, err := pmnl.Dial(&pmnl.Config{NetNS: lab.Client.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return &nmSetup{lab: lab, bus: dbustest.StartBus(t, dbustest.SystemDefaults(), nmtest.Policy()), k: k}
}

// profile adds and activates a NetworkManager profile for the client's path
// i with its lab address (IPv4 only) and the settings given, then puts the
// path's source route back (the lab's table 100+i: NetworkManager's
// takeover of the device flushes it).
func (s *nmSetup) profile(t testing.TB, nm *nmtest.NM, name string, i int, settings ...string) {
	t.Helper()
	cli := s.lab.Client
	args := append([]string{"connection", "add", "type", "ethernet", "con-name", name, "ifname", cli.Ifaces[i],
		"autoconnect", "no", "ipv4.method", "manual", "ipv4.addresses", cli.Addrs4[i].String() + "/24",
		"ipv6.method", "disabled"}, settings...)
	nm.Nmcli(t, args...)
	s.up(t, nm, name, i)
}

// up activates profile name of path i and puts the path's source route
// back.
func (s *nmSetup) up(t testing.TB, nm *nmtest.NM, name string, i int) {
	t.Helper()
	nm.Nmcli(t, "connection", "up", name)
	s.lab.Client.Run(t, "ip", "route", "replace", "default", "via", fmt.Sprintf("10.55.%d.2", i),
		"dev", s.lab.Client.Ifaces[i], "onlink", "table", fmt.Sprint(100+i))
}

// table returns the kernel's endpoints as "id addr [flags] dev IF", sorted.
func (s *nmSetup) table(t *testing.T) []string {
	t.Helper()
	eps, err := s.k.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, fmt.Sprintf("%d %s [%s] dev %d", e.ID, e.Addr, e.Flags, e.Ifindex))
	}
	slices.Sort(out)
	return out
}

// addrs returns the kernel's endpoint addresses as "addr [flags]", sorted.
func (s *nmSetup) addrs(t *testing.T) []string {
	t.Helper()
	return endpointTable(t, s.k)
}

// origins returns the daemon's Endpoints property as "addr origin",
// sorted.
func origins(t *testing.T, d *testDaemon) []string {
	t.Helper()
	eps, err := d.endpointsProperty()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(eps))
	for _, e := range eps {
		out = append(out, e.Address+" "+e.Origin)
	}
	slices.Sort(out)
	return out
}

// reasons returns ListAddresses for IPv4 addresses as "iface usable reason".
func reasons(t *testing.T, d *testDaemon) map[string]string {
	t.Helper()
	var list []struct {
		Interface, Address string
		Usable             bool
		Reason             string
	}
	if err := d.obj(dbusapi.ManagerPath).Call(mgrMethod+"ListAddresses", 0).Store(&list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, a := range list {
		if netip.MustParseAddr(a.Address).Is4() && a.Interface != "lo" {
			out[a.Interface] = strings.TrimSpace(fmt.Sprintf("%v %s", a.Usable, a.Reason))
		}
	}
	return out
}

// until polls cond every 20 ms until it holds, failing the test after
// limit; it returns how long it took.
func until(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// ours returns the lines of table whose address is one of addrs.
func ours(table []string, addrs ...netip.Addr) []string {
	var out []string
	for _, l := range table {
		for _, a := range addrs {
			if strings.Contains(l, " "+a.String()+" ") {
				out = append(out, l)
			}
		}
	}
	return out
}

// TestNetworkManagerNoFight: NetworkManager manages path 1 with MPTCP
// subflow endpoints and path 2 with MPTCP disabled; the daemon's endpoints
// policy has path 0. Once both have settled, the kernel's endpoint table
// does not change for 10 s; each endpoint has its origin; reapply and a
// profile's down and up leave the daemon's endpoints alone; path 2 gets no
// endpoint; and a connection gets its subflows over the daemon's and
// NetworkManager's endpoints.
func TestNetworkManagerNoFight(t *testing.T) {
	s := newNMSetup(t, pmtest.LabOptions{Paths: 3})
	cli, srv := s.lab.Client, s.lab.Server
	nm := nmtest.Start(t, cli, s.bus, nmtest.Options{Managed: []string{"c1", "c2"}})
	s.profile(t, nm, "wifi", 1, "connection.mptcp-flags", "subflow,also-without-default-route")
	s.profile(t, nm, "off", 2, "connection.mptcp-flags", "disabled")
	// Strict reverse-path filtering everywhere: NetworkManager loosens it
	// on its devices, the daemon warns about the one it uses alone.
	cli.Run(t, "sysctl", "-qw", "net.ipv4.conf.c0.rp_filter=1", "net.ipv4.conf.c1.rp_filter=1")
	s.up(t, nm, "wifi", 1)
	d := startDaemon(t, cli, s.bus, "--policy", "endpoints")
	out, _, code := ctl(t, s.bus, "status")
	if code != 0 || !strings.Contains(out, "Warning: strict reverse-path filtering (rp_filter 1) on c0") || strings.Contains(out, "on c1") {
		t.Errorf("mptcpctl status (exit %d) does not warn about c0's rp_filter alone:\n%s", code, out)
	}

	want := []string{
		cli.Addrs4[0].String() + " [subflow]",
		cli.Addrs4[1].String() + " [subflow]", // NetworkManager's
		cli.Addrs6[0].String() + " [subflow]",
	}
	slices.Sort(want)
	until(t, 5*time.Second, "the endpoints of c0 (the daemon's) and c1 (NetworkManager's)", func() bool {
		return slices.Equal(s.addrs(t), want)
	})
	wantOrigins := []string{
		cli.Addrs4[0].String() + " policy",
		cli.Addrs4[1].String() + " networkmanager",
		cli.Addrs6[0].String() + " policy",
	}
	slices.Sort(wantOrigins)
	if got := origins(t, d); !slices.Equal(got, wantOrigins) {
		t.Errorf("origins %q, want %q", got, wantOrigins)
	}
	wantReasons := map[string]string{
		"c0": "true",
		"c1": "true managed by NetworkManager",
		"c2": "false MPTCP disabled by the NetworkManager profile",
	}
	if got := reasons(t, d); fmt.Sprint(got) != fmt.Sprint(wantReasons) {
		t.Errorf("ListAddresses %q, want %q", got, wantReasons)
	}

	if testing.Verbose() { // what a user sees, for the README
		for _, args := range [][]string{{"status"}, {"endpoints"}, {"addresses"}} {
			out, _, _ := ctl(t, s.bus, args...)
			t.Logf("$ mptcpctl %s\n%s", strings.Join(args, " "), out)
		}
		t.Logf("$ ip mptcp endpoint show\n%s", cli.Run(t, "ip", "mptcp", "endpoint", "show"))
	}

	// No fight: 10 s without a change.
	settled := s.table(t)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if got := s.table(t); !slices.Equal(got, settled) {
			t.Fatalf("the endpoint table changed:\n  %s\nwas:\n  %s", strings.Join(got, "\n  "), strings.Join(settled, "\n  "))
		}
	}

	// Reapply, and the profile's down and up: the daemon's endpoints stay
	// as they are (same ids); NetworkManager's is back after the up.
	mine := ours(settled, cli.Addrs4[0], cli.Addrs6[0])
	nm.Nmcli(t, "device", "reapply", "c1")
	time.Sleep(2 * time.Second)
	if got := ours(s.table(t), cli.Addrs4[0], cli.Addrs6[0]); !slices.Equal(got, mine) {
		t.Errorf("after reapply the daemon's endpoints are %q, were %q", got, mine)
	}
	nm.Nmcli(t, "connection", "down", "wifi")
	time.Sleep(time.Second)
	if got := s.addrs(t); slices.Contains(got, cli.Addrs4[1].String()+" [subflow]") {
		t.Errorf("c1's endpoint is there while its profile is down: %q", got)
	}
	s.up(t, nm, "wifi", 1)
	until(t, 5*time.Second, "NetworkManager's endpoint back after the up", func() bool { return slices.Equal(s.addrs(t), want) })
	time.Sleep(2 * time.Second) // the daemon's poll and policy had their say
	if got := ours(s.table(t), cli.Addrs4[0], cli.Addrs6[0]); !slices.Equal(got, mine) {
		t.Errorf("after down and up the daemon's endpoints are %q, were %q", got, mine)
	}
	if got := s.addrs(t); !slices.Equal(got, want) {
		t.Errorf("endpoints after down and up %q, want %q", got, want)
	}
	if strings.Contains(d.log.String(), "policy: endpoint removed") || strings.Contains(d.log.String(), "another program removed") {
		t.Errorf("the daemon removed endpoints or saw its own removed:\n%s", d.log.String())
	}

	// Real traffic: a connection from path 0 joins paths 1 (NetworkManager's
	// endpoint) and not 2 (MPTCP disabled).
	kev := listenKernel(t, cli)
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	tok := connToken(t, kev, c, false)
	waitSubflows(t, kev, tok, within(5*time.Second), "subflows", paths(server.Addr(), cli.Addrs4[1]))
	if _, err := c.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}

	// The dispatcher example, called as NetworkManager calls it.
	requirePython(t)
	for _, tc := range []struct{ args, want string }{
		{"c1 up", "mptcp-pmd: c1 up: " + cli.Addrs4[1].String() + " used (managed by NetworkManager); warning: strict reverse-path filtering (rp_filter 1) on c0"},
		{"c1 pre-down", "mptcp-pmd: c1 going down: 1 MPTCP connection(s) lose a subflow over it, 1 of them keep another path"},
		{"c2 down", "mptcp-pmd: c2 going down: no MPTCP connection has a subflow over it"},
		{"c1 hostname", ""},
	} {
		out, errOut, code := python(t, s.bus, "dist/examples/nm-dispatcher.py", strings.Fields(tc.args)...)
		if code != 0 || !strings.HasPrefix(strings.TrimSpace(out), tc.want) || tc.want == "" && out != "" {
			t.Errorf("nm-dispatcher.py %s: exit %d, %q (stderr %q), want it to start with %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

// TestNetworkManagerMetered: under subflow-per-interface, a metered
// profile's interface gets a backup subflow, the peer sees MP_PRIO when the
// profile's metered setting changes, and an interface whose profile
// disables MPTCP gets no subflow.
func TestNetworkManagerMetered(t *testing.T) {
	s := newNMSetup(t, pmtest.LabOptions{Paths: 3, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	nm := nmtest.Start(t, cli, s.bus, nmtest.Options{Managed: []string{"c1", "c2"}})
	s.profile(t, nm, "off", 1, "connection.mptcp-flags", "disabled")
	s.profile(t, nm, "lte", 2, "connection.metered", "yes")
	kev, skev := listenKernel(t, cli), listenKernel(t, srv)
	startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")

	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	tok := connToken(t, kev, c, false)
	waitSubflows(t, kev, tok, within(5*time.Second), "subflows (none over c1, MPTCP disabled)", paths(server.Addr(), cli.Addrs4[2]))
	fromLTE := func(ev pm.Event) bool { return ev.RemoteAddr.Unmap() == cli.Addrs4[2] }
	joined := skev.wait(t, "the join from c2 at the server", func(ev pm.Event) bool {
		return ev.Type == pm.EventSubEstablished && fromLTE(ev)
	})
	if !joined.Backup {
		t.Errorf("the server sees the subflow from metered c2 as not backup: %+v", joined.Event)
	}
	if _, err := c.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}

	// Not metered any more, then metered again: MP_PRIO each time, and
	// none before (the join carried the flag).
	time.Sleep(500 * time.Millisecond)
	if slices.ContainsFunc(skev.events(), func(ev kernelEvent) bool { return ev.Type == pm.EventSubPriority }) {
		t.Errorf("MP_PRIO before any change: %v", skev.events())
	}
	mark := len(skev.events())
	for _, metered := range []bool{false, true} {
		value := map[bool]string{false: "no", true: "yes"}[metered]
		start := time.Now()
		nm.Nmcli(t, "connection", "modify", "lte", "connection.metered", value)
		ev := skev.waitFrom(t, mark, "MP_PRIO from c2, backup "+fmt.Sprint(metered), func(ev pm.Event) bool {
			return ev.Type == pm.EventSubPriority && fromLTE(ev) && ev.Backup == metered
		})
		mark = len(skev.events())
		t.Logf("metered %s: the server saw MP_PRIO %v after the nmcli command started", value, ev.At.Sub(start).Round(time.Millisecond))
	}
	waitSubflows(t, kev, tok, time.Now(), "subflows at the end", paths(server.Addr(), cli.Addrs4[2]))
}

// TestNetworkManagerLifecycle: NetworkManager started after the daemon,
// stopped and restarted: the daemon follows each change within a second,
// keeps its own endpoints on the other paths, and never removes an
// endpoint NetworkManager made.
func TestNetworkManagerLifecycle(t *testing.T) {
	s := newNMSetup(t, pmtest.LabOptions{Paths: 3})
	cli := s.lab.Client
	d := startDaemon(t, cli, s.bus, "--policy", "endpoints")
	until(t, 5*time.Second, "the daemon's endpoints on three paths", func() bool { return len(s.addrs(t)) == 6 })
	mine := ours(s.table(t), cli.Addrs4[0], cli.Addrs6[0], cli.Addrs4[2], cli.Addrs6[2])
	nmAddr := cli.Addrs4[1].String()
	origin := func(want string) func() bool {
		return func() bool { return slices.Contains(origins(t, d), nmAddr+" "+want) }
	}

	// Watch c1's endpoint from now on: once NetworkManager has made it, it
	// must stay until the test ends (NetworkManager leaves it when it
	// exits, and assumes it again at its restart).
	var mu sync.Mutex
	var gone []string
	watching := false
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			eps, err := s.k.Endpoints()
			if err != nil {
				continue
			}
			has := slices.ContainsFunc(eps, func(e pm.Address) bool { return e.Addr.String() == nmAddr })
			mu.Lock()
			if watching && !has {
				gone = append(gone, time.Now().Format("15:04:05.000"))
			}
			mu.Unlock()
		}
	}()
	defer func() { close(stop); <-done }()

	// NetworkManager starts and takes c1.
	nm := nmtest.Start(t, cli, s.bus, nmtest.Options{Managed: []string{"c1"}})
	took := until(t, reaction, "the daemon sees NetworkManager", func() bool {
		return strings.Contains(d.log.String(), "NetworkManager is running")
	})
	t.Logf("NetworkManager started: the daemon followed %v after nmcli said it runs", took.Round(time.Millisecond))
	s.profile(t, nm, "wifi", 1, "connection.mptcp-flags", "subflow,also-without-default-route")
	took = until(t, reaction, "NetworkManager's endpoint for c1", origin("networkmanager"))
	t.Logf("profile up: the daemon saw NetworkManager's endpoint %v after nmcli returned", took.Round(time.Millisecond))
	mu.Lock()
	watching = true
	mu.Unlock()
	logFrom := len(d.log.String())

	// NetworkManager stops: its endpoint stays, now external.
	start := time.Now()
	nm.Stop(t)
	took = until(t, reaction, "NetworkManager gone: c1's endpoint external", origin("external"))
	t.Logf("NetworkManager stopped (in %v): the daemon followed %v later", time.Since(start)-took, took.Round(time.Millisecond))

	// It comes back and assumes its profile: its endpoint is its own again.
	nm.Restart(t)
	took = until(t, reaction, "NetworkManager back: c1's endpoint its own", origin("networkmanager"))
	t.Logf("NetworkManager restarted: the daemon followed %v after nmcli said it runs", took.Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the poll and the policy had their say

	mu.Lock()
	if len(gone) > 0 {
		t.Errorf("NetworkManager's endpoint for %s was missing at %v", nmAddr, gone)
	}
	mu.Unlock()
	if got := ours(s.table(t), cli.Addrs4[0], cli.Addrs6[0], cli.Addrs4[2], cli.Addrs6[2]); !slices.Equal(got, mine) {
		t.Errorf("the daemon's endpoints on c0 and c2 are %q, were %q", got, mine)
	}
	if logs := d.log.String()[logFrom:]; strings.Contains(logs, "endpoint removed") {
		t.Errorf("the daemon removed an endpoint of %s:\n%s", nmAddr, logs)
	}
}
