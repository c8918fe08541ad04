package main

// Tests of the daemon's start, restart and lost events: its view must be
// the kernel's whatever happened while it was not looking.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// kill9 kills the daemon with SIGKILL, as a crash would, and waits for it
// to be gone; the end of the test then expects nothing of it.
func (d *testDaemon) kill9(tb testing.TB) {
	tb.Helper()
	d.stopOnce.Do(func() {
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	})
}

// listed returns the tokens of the MPTCP connections sock_diag lists in h
// (what `ss -M` shows), sorted.
func listed(tb testing.TB, h *pmtest.Host) []uint32 {
	tb.Helper()
	c, err := diag.Dial(&diag.Config{NetNS: h.NSFD()})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	conns, err := c.Connections()
	if err != nil {
		tb.Fatal(err)
	}
	var out []uint32
	for _, cn := range conns {
		if cn.Token != 0 {
			out = append(out, cn.Token)
		}
	}
	slices.Sort(out)
	return out
}

// objectTokens returns the tokens of the daemon's connection objects,
// sorted.
func (d *testDaemon) objectTokens(tb testing.TB) []uint32 {
	tb.Helper()
	var out []uint32
	for _, c := range d.managedObjects(tb) {
		out = append(out, c.Token)
	}
	slices.Sort(out)
	return out
}

// objectByToken returns the daemon's object of the connection with token.
func (d *testDaemon) objectByToken(tb testing.TB, token uint32) connObject {
	tb.Helper()
	for _, c := range d.managedObjects(tb) {
		if c.Token == token {
			return c
		}
	}
	tb.Fatalf("no object for token %08x", token)
	return connObject{}
}

// TestAdoptConnectionsAtStart: connections opened before the daemon
// starts get their objects, on both sides, with the kernel's token,
// addresses, ports and subflows, and under subflow-per-interface the
// policy gives them their subflows.
func TestAdoptConnectionsAtStart(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 3, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kcli, ksrv := listenKernel(t, cli), listenKernel(t, srv)
	server4 := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	server6 := srv.Serve(t, netip.AddrPortFrom(srv.Addrs6[0], 0))
	conns := []net.Conn{
		dial(t, cli, cli.Addrs4[0], server4),
		dial(t, cli, cli.Addrs6[0], server6),
		dial(t, cli, cli.Addrs4[0], server4),
	}
	var tokens, srvTokens []uint32
	for _, c := range conns {
		tokens = append(tokens, connToken(t, kcli, c, false))
		srvTokens = append(srvTokens, connToken(t, ksrv, c, true))
	}
	// The third connection already has a subflow, made by hand on c1.
	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	var c1 *net.Interface
	if err := cli.Do(func() (err error) { c1, err = net.InterfaceByName("c1"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := k.CreateSubflow(tokens[2], pm.Address{ID: 7, Addr: cli.Addrs4[1], Ifindex: int32(c1.Index)}, server4); err != nil {
		t.Fatal(err)
	}
	waitSubflows(t, kcli, tokens[2], within(5*time.Second), "subflow by hand", paths(server4.Addr(), cli.Addrs4[1]))

	start := time.Now()
	d := startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")
	t.Logf("daemon ready with 3 live connections %v after its start", time.Since(start))
	// A server-side daemon on its own bus, observing.
	sbus := dbustest.StartBus(t, dbustest.SystemDefaults())
	ds := startDaemon(t, srv, sbus)

	if got := d.objectTokens(t); !slices.Equal(got, sorted(tokens)) {
		t.Fatalf("client objects %08x, want the kernel's %08x", got, sorted(tokens))
	}
	if got := ds.objectTokens(t); !slices.Equal(got, sorted(srvTokens)) {
		t.Fatalf("server objects %08x, want the kernel's %08x", got, sorted(srvTokens))
	}
	for i, c := range conns {
		local, remote := addrPort(t, c.LocalAddr()), addrPort(t, c.RemoteAddr())
		co, so := d.objectByToken(t, tokens[i]), ds.objectByToken(t, srvTokens[i])
		checkConn(t, fmt.Sprintf("client object %d", i), co, connObject{
			Path: co.Path, Token: tokens[i], ServerSide: false, State: "established",
			LocalAddress: local.Addr().String(), LocalPort: local.Port(),
			RemoteAddress: remote.Addr().String(), RemotePort: remote.Port(),
		})
		checkConn(t, fmt.Sprintf("server object %d", i), so, connObject{
			Path: so.Path, Token: srvTokens[i], ServerSide: true, State: "established",
			LocalAddress: remote.Addr().String(), LocalPort: remote.Port(),
			RemoteAddress: local.Addr().String(), RemotePort: local.Port(),
		})
	}
	// The subflow made by hand is in the object as SUB_ESTABLISHED would
	// have put it.
	o := d.objectByToken(t, tokens[2])
	if !slices.ContainsFunc(o.Subflows, func(sf subflowInfo) bool {
		return sf.LocalAddress == cli.Addrs4[1].String() && sf.LocalID == 7 && sf.RemoteAddress == server4.Addr().String() &&
			sf.RemotePort == server4.Port() && sf.Interface == "c1"
	}) {
		t.Errorf("adopted subflows %+v, want the one from %s (id 7, c1)", o.Subflows, cli.Addrs4[1])
	}
	// The policy acts on adopted connections as on new ones.
	waitSubflows(t, kcli, tokens[0], within(5*time.Second), "adopted IPv4 connection",
		paths(server4.Addr(), cli.Addrs4[1], cli.Addrs4[2]))
	waitSubflows(t, kcli, tokens[1], within(5*time.Second), "adopted IPv6 connection",
		paths(server6.Addr(), cli.Addrs6[1], cli.Addrs6[2]))
	waitSubflows(t, kcli, tokens[2], within(5*time.Second), "adopted connection with a subflow",
		paths(server4.Addr(), cli.Addrs4[1], cli.Addrs4[2]))
	eventually(t, 5*time.Second, "the objects show the policy's subflows", func() bool {
		return len(d.objectByToken(t, tokens[0]).Subflows) == 2
	})
}

func sorted(s []uint32) []uint32 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestRestartEndpoints: after a kill -9, an address deleted while the
// daemon was down, and a restart, the endpoint of that address is gone
// (it was the policy's, the record says so), the policy's others show
// origin policy, and one made with `ip mptcp endpoint add` is still
// external and still there.
func TestRestartEndpoints(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 3})
	cli := s.lab.Client
	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	cli.Run(t, "ip", "mptcp", "endpoint", "add", cli.Addrs4[2].String(), "signal")
	table := func(drop ...netip.Addr) []string {
		out := []string{cli.Addrs4[2].String() + " [signal]"}
		for i := range 3 {
			for _, a := range []netip.Addr{cli.Addrs4[i], cli.Addrs6[i]} {
				if a != cli.Addrs4[2] && !slices.Contains(drop, a) {
					out = append(out, a.String()+" [subflow]")
				}
			}
		}
		slices.Sort(out)
		return out
	}
	d := startDaemon(t, cli, s.bus, "--policy", "endpoints")
	eventually(t, reaction, "the policy's endpoints", func() bool { return slices.Equal(endpointTable(t, k), table()) })

	d.kill9(t)
	cli.Run(t, "ip", "addr", "del", cli.Addrs4[1].String()+"/24", "dev", "c1")
	if got := endpointTable(t, k); !slices.Equal(got, table()) {
		t.Fatalf("while the daemon is down the kernel keeps every endpoint: %v", got)
	}
	start := time.Now()
	d = startDaemon(t, cli, s.bus, "--policy", "endpoints")
	eventually(t, reaction, "no stale endpoint after the restart", func() bool {
		return slices.Equal(endpointTable(t, k), table(cli.Addrs4[1]))
	})
	t.Logf("stale endpoint removed %v after the restart", time.Since(start))

	out, _, code := ctl(t, s.bus, "endpoints", "--json")
	if code != 0 {
		t.Fatalf("mptcpctl endpoints: %d", code)
	}
	for _, line := range table(cli.Addrs4[1]) {
		addr := strings.Fields(line)[0]
		want := `"origin":"policy"`
		if addr == cli.Addrs4[2].String() {
			want = `"origin":"external"`
		}
		if !strings.Contains(endpointJSON(t, out, addr), want) {
			t.Errorf("endpoint %s: %s, want %s\n%s", addr, endpointJSON(t, out, addr), want, out)
		}
	}
}

// endpointJSON returns the JSON object of addr's endpoint in mptcpctl's
// `endpoints --json` output, without spaces.
func endpointJSON(t *testing.T, out, addr string) string {
	t.Helper()
	compact := strings.Join(strings.Fields(out), "")
	i := strings.Index(compact, `"address":"`+addr+`"`)
	if i < 0 {
		return ""
	}
	start := strings.LastIndex(compact[:i], "{")
	end := strings.Index(compact[i:], "}")
	return compact[start : i+end+1]
}

// TestRestartAnnouncements: the server's daemon (subflow-per-interface,
// userspace PM) announced its other addresses on a connection; after a
// kill -9 and a restart the object is back with its announcements, and
// the listeners behind them are open again: the client can still join.
func TestRestartAnnouncements(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 3, ClientPM: "userspace", ServerPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kcli, ksrv := listenKernel(t, cli), listenKernel(t, srv)
	d := startDaemon(t, srv, s.bus, "--policy", "subflow-per-interface")
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	tok, srvTok := connToken(t, kcli, c, false), connToken(t, ksrv, c, true)
	announced := func(o connObject) []string {
		var out []string
		for _, a := range o.AnnouncedAddresses {
			out = append(out, a.Address)
		}
		slices.Sort(out)
		return out
	}
	want := []string{srv.Addrs4[1].String(), srv.Addrs4[2].String()}
	eventually(t, 5*time.Second, "announcements", func() bool { return slices.Equal(announced(d.objectByToken(t, srvTok)), want) })
	before := d.objectByToken(t, srvTok)

	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	join := func(i int) {
		t.Helper()
		remote := netip.AddrPortFrom(srv.Addrs4[i], server.Port())
		if err := k.CreateSubflow(tok, pm.Address{ID: uint8(10 + i), Addr: cli.Addrs4[i]}, remote); err != nil {
			t.Fatalf("join to %s: %v", remote, err)
		}
	}
	join(1)
	waitSubflows(t, kcli, tok, within(5*time.Second), "join before the restart", paths(srv.Addrs4[1], cli.Addrs4[1]))

	d.kill9(t)
	d = startDaemon(t, srv, s.bus, "--policy", "subflow-per-interface")
	after := d.objectByToken(t, srvTok)
	if !slices.Equal(announced(after), want) {
		t.Errorf("announcements after the restart: %+v, before: %+v", after.AnnouncedAddresses, before.AnnouncedAddresses)
	}
	join(2)
	waitSubflows(t, kcli, tok, within(5*time.Second), "join after the restart",
		[]string{cli.Addrs4[1].String() + " -> " + srv.Addrs4[1].String(), cli.Addrs4[2].String() + " -> " + srv.Addrs4[2].String()})
}

// TestLostEvents: the daemon is stopped (SIGSTOP) while enough
// connections open and close to overflow its event socket, and five stay
// open; continued, within a second its objects are the kernel's
// connections, and nothing is left behind.
func TestLostEvents(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 1})
	cli, srv := s.lab.Client, s.lab.Server
	d := startDaemon(t, cli, s.bus)
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	early := dial(t, cli, cli.Addrs4[0], server) // open before, closed while stopped
	eventually(t, reaction, "the first object", func() bool { return len(d.objectTokens(t)) == 1 })

	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A stopped daemon cannot stop at the end: continue it whatever
	// happens (before the harness's stop, which a later cleanup is).
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
	early.Close()
	// Each connection is 3 events of a few hundred bytes of socket buffer
	// each: 8000 fill the daemon's 4 MiB (8 MiB as the kernel counts it).
	const churn = 8000
	start := time.Now()
	for i := range churn {
		c := dial(t, cli, cli.Addrs4[0], server)
		c.Close()
		if i%2000 == 1999 {
			t.Logf("%d connections opened and closed in %v", i+1, time.Since(start))
		}
	}
	var keep []net.Conn
	for range 5 {
		keep = append(keep, dial(t, cli, cli.Addrs4[0], server))
	}
	// Closed connections leave the kernel's list a moment after close().
	var want []uint32
	eventually(t, 5*time.Second, "the kernel lists the 5 kept connections only", func() bool {
		want = listed(t, cli)
		return len(want) == 5
	})
	if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	cont := time.Now()
	eventually(t, reaction, "objects equal to the kernel's connections", func() bool {
		return slices.Equal(d.objectTokens(t), want)
	})
	t.Logf("objects equal the kernel's list %v after SIGCONT", time.Since(cont))
	if !strings.Contains(d.log.String(), "kernel events were lost") {
		t.Errorf("the event socket did not overflow: the test proves nothing; log:\n%s", tail(d.log.String(), 40))
	}
	for _, c := range keep {
		c.Close()
	}
	eventually(t, reaction, "no object left after the kept ones close", func() bool { return len(d.objectTokens(t)) == 0 })
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// TestRecordNotTrusted: a record that is corrupt, empty, or names
// endpoints that are gone does not stop the daemon, which says so.
func TestRecordNotTrusted(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 1})
	cli := s.lab.Client
	dir := runtimeDir(t, cli)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(dir, "endpoints.json")
	for _, tc := range []struct{ name, data, log string }{
		{"corrupt", `{"version": 1, "boot_id":`, "unreadable"},
		{"empty", "", "empty"},
		{"another boot", `{"version":1,"boot_id":"0","netns":"net:[1]","endpoints":[]}`, "another boot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(rec, []byte(tc.data), 0o644); err != nil {
				t.Fatal(err)
			}
			d := startDaemon(t, cli, s.bus, "--policy", "endpoints")
			if !strings.Contains(d.log.String(), "record of the daemon's endpoints is not used") || !strings.Contains(d.log.String(), tc.log) {
				t.Errorf("the log does not say why the record is set aside (%s):\n%s", tc.log, d.log.String())
			}
			if b, err := os.ReadFile(rec + ".bad"); err != nil || string(b) != tc.data {
				t.Errorf("set-aside record: %q, %v", b, err)
			}
			d.stop(t)
		})
	}
	// A record naming endpoints the kernel no longer has: they drop out.
	gone := `{"version":1,"boot_id":"%s","netns":"%s","endpoints":[{"id":9,"addr":"10.55.9.1","flags":"subflow","origin":"policy"}]}`
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	var ns string
	if err := cli.Do(func() (err error) { ns, err = os.Readlink("/proc/thread-self/ns/net"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, []byte(fmt.Sprintf(gone, strings.TrimSpace(string(boot)), ns)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cli, s.bus, "--policy", "endpoints")
	eventually(t, reaction, "the record without the endpoint that is gone", func() bool {
		b, _ := os.ReadFile(rec)
		return strings.Contains(string(b), cli.Addrs4[0].String()) && !strings.Contains(string(b), "10.55.9.1")
	})
	d.stop(t)
}

// TestStartUnderChurn: the daemon starts while connections open and close
// all the time; its start completes, and once the churn stops its objects
// are the kernel's connections, with no ghost left.
func TestStartUnderChurn(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 1})
	cli, srv := s.lab.Client, s.lab.Server
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	var kept []net.Conn
	for range 20 {
		kept = append(kept, dial(t, cli, cli.Addrs4[0], server))
	}
	stop := make(chan struct{})
	churned := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				churned <- n
				return
			default:
			}
			c, err := cli.DialErr(cli.Addrs4[0], server)
			if err != nil {
				continue
			}
			c.Write([]byte("x"))
			if n%2 == 0 {
				time.Sleep(time.Millisecond) // some close after their ESTABLISHED, some before
			}
			c.Close()
			n++
		}
	}()
	time.Sleep(100 * time.Millisecond)
	d := startDaemon(t, cli, s.bus)
	time.Sleep(300 * time.Millisecond) // churn on after the start
	close(stop)
	t.Logf("%d connections opened and closed around the start", <-churned)
	want := listed(t, cli)
	if len(want) != len(kept) {
		t.Logf("the kernel lists %d connections (%d kept; the others are closing)", len(want), len(kept))
	}
	eventually(t, reaction, "objects equal to the kernel's connections", func() bool {
		want = listed(t, cli)
		return slices.Equal(d.objectTokens(t), want)
	})
	for _, c := range kept {
		c.Close()
	}
	eventually(t, reaction, "no object left", func() bool { return len(d.objectTokens(t)) == 0 })
}
