package main

// The built-in policies in the built daemon, with real MPTCP traffic in a
// namespace lab. What the kernel does is read from the kernel itself: an
// event listener of the test's (independent of the daemon) and the kernel's
// endpoint table.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/netmon"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// reaction is how long the daemon may take to follow an address or link
// change: the mission's "within a second".
const reaction = time.Second

// connToken waits for the ESTABLISHED of the connection c in k and returns
// its token. serverSide says k listens at the server end.
func connToken(t *testing.T, k *kernelLog, c net.Conn, serverSide bool) uint32 {
	t.Helper()
	local := addrPort(t, c.LocalAddr())
	return k.wait(t, "ESTABLISHED of "+local.String(), func(ev pm.Event) bool {
		if ev.Type != pm.EventEstablished {
			return false
		}
		if serverSide {
			return ev.RemotePort == local.Port()
		}
		return ev.LocalPort == local.Port()
	}).Token
}

// subflowsOf returns the subflows of token that the kernel reported
// established and not closed since, as "local -> remote" addresses without
// ports, sorted; the initial subflow is not among them.
func subflowsOf(k *kernelLog, token uint32) []string {
	type tuple struct{ l, r netip.AddrPort }
	live := map[tuple]bool{}
	for _, ev := range k.events() {
		if ev.Token != token {
			continue
		}
		t := tuple{netip.AddrPortFrom(ev.LocalAddr.Unmap(), ev.LocalPort), netip.AddrPortFrom(ev.RemoteAddr.Unmap(), ev.RemotePort)}
		switch ev.Type {
		case pm.EventSubEstablished:
			live[t] = true
		case pm.EventSubClosed:
			delete(live, t)
		}
	}
	var out []string
	for t := range live {
		out = append(out, t.l.Addr().String()+" -> "+t.r.Addr().String())
	}
	slices.Sort(out)
	return out
}

// paths returns "local -> remote" for each local address in from.
func paths(remote netip.Addr, from ...netip.Addr) []string {
	var out []string
	for _, l := range from {
		out = append(out, l.String()+" -> "+remote.String())
	}
	slices.Sort(out)
	return out
}

// waitSubflows waits until token's live subflows are want, at the latest
// until deadline, and returns when they were.
func waitSubflows(t *testing.T, k *kernelLog, token uint32, deadline time.Time, what string, want []string) time.Time {
	t.Helper()
	for {
		now := time.Now()
		got := subflowsOf(k, token)
		if slices.Equal(got, want) {
			return now
		}
		if now.After(deadline) {
			t.Fatalf("%s: subflows of token %08x at the deadline:\n  %s\nwant:\n  %s", what, token,
				strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// within returns the deadline d from now.
func within(d time.Duration) time.Time { return time.Now().Add(d) }

// carrierLog records when the kernel reports a link's carrier changes in a
// namespace (rtnetlink, independent of the daemon).
type carrierLog struct {
	mu      sync.Mutex
	changes []carrierChange
}

type carrierChange struct {
	name    string
	carrier bool
	at      time.Time
}

func watchCarrier(t *testing.T, h *pmtest.Host) *carrierLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mon, err := netmon.Start(ctx, netmon.Options{NetNS: h.NSFD()})
	if err != nil {
		cancel()
		t.Fatalf("network monitor in %s: %v", h.Name, err)
	}
	l := &carrierLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for u := range mon.Updates() {
			if u.Kind == netmon.LinkChanged {
				l.mu.Lock()
				l.changes = append(l.changes, carrierChange{u.Link.Name, u.Link.Up && u.Link.Carrier, time.Now()})
				l.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l
}

// wait returns when the kernel reported that link name's carrier became
// carrier, after mark (the number of changes seen before).
func (l *carrierLog) wait(t *testing.T, name string, carrier bool, mark int) time.Time {
	t.Helper()
	deadline := within(5 * time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		for _, c := range l.changes[min(mark, len(l.changes)):] {
			if c.name == name && c.carrier == carrier {
				l.mu.Unlock()
				return c.at
			}
		}
		l.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("the kernel did not report %s's carrier %v within 5 s", name, carrier)
	return time.Time{}
}

func (l *carrierLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.changes)
}

// TestPolicySubflowPerInterfaceClient: on the client under the userspace
// path manager, each new connection gets one established subflow from each
// other interface (three paths: three subflows), IPv4 and IPv6; a removed
// address or a lost carrier takes its subflows within a second, and they
// come back with it.
func TestPolicySubflowPerInterfaceClient(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 3, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kev := listenKernel(t, cli)
	carrier := watchCarrier(t, cli)
	startDaemon(t, cli, s.bus, "--policy", "subflow-per-interface")

	server4 := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	server6 := srv.Serve(t, netip.AddrPortFrom(srv.Addrs6[0], 0))
	c4 := dial(t, cli, cli.Addrs4[0], server4)
	c6 := dial(t, cli, cli.Addrs6[0], server6)
	tok4, tok6 := connToken(t, kev, c4, false), connToken(t, kev, c6, false)
	want4 := paths(server4.Addr(), cli.Addrs4[1], cli.Addrs4[2])
	want6 := paths(server6.Addr(), cli.Addrs6[1], cli.Addrs6[2])
	waitSubflows(t, kev, tok4, within(5*time.Second), "IPv4 connection", want4)
	waitSubflows(t, kev, tok6, within(5*time.Second), "IPv6 connection", want6)

	// The subflows carry traffic: the connections still work.
	for _, c := range []net.Conn{c4, c6} {
		if _, err := c.Write(make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
	}

	// An address goes: its subflow goes; it comes back: so does the
	// subflow. The source route goes with the address, and comes back
	// first (onlink), as a DHCP client would bring both.
	start := time.Now()
	cli.Run(t, "ip", "addr", "del", cli.Addrs4[1].String()+"/24", "dev", "c1")
	at := waitSubflows(t, kev, tok4, within(reaction), "address removed", paths(server4.Addr(), cli.Addrs4[2]))
	t.Logf("address removed: subflow closed %v after the command", at.Sub(start))
	waitSubflows(t, kev, tok6, time.Now(), "IPv6 after the IPv4 address went", want6)
	cli.Run(t, "ip", "route", "replace", "default", "via", "10.55.1.2", "dev", "c1", "onlink", "table", "101")
	start = time.Now()
	cli.Run(t, "ip", "addr", "add", cli.Addrs4[1].String()+"/24", "dev", "c1")
	at = waitSubflows(t, kev, tok4, within(reaction), "address back", want4)
	t.Logf("address back: subflow established %v after the command", at.Sub(start))

	// The peer end of path 2 goes down: c2 loses carrier, and both
	// connections lose their subflow over it. The kernel reports a lost
	// carrier up to a second late (linkwatch); the daemon has a second
	// from the report. The server keeps its IPv6 address through the
	// down (by default it would lose it, and the path with it).
	srv.Run(t, "sysctl", "-qw", "net.ipv6.conf.s2.keep_addr_on_down=1")
	mark := carrier.mark()
	start = time.Now()
	srv.Run(t, "ip", "link", "set", "s2", "down")
	lost := carrier.wait(t, "c2", false, mark)
	at4 := waitSubflows(t, kev, tok4, lost.Add(reaction), "carrier lost", paths(server4.Addr(), cli.Addrs4[1]))
	at6 := waitSubflows(t, kev, tok6, lost.Add(reaction), "carrier lost, IPv6", paths(server6.Addr(), cli.Addrs6[1]))
	t.Logf("carrier lost: reported %v after the command; subflows closed %v (IPv4), %v (IPv6) after the report",
		lost.Sub(start), at4.Sub(lost), at6.Sub(lost))
	mark = carrier.mark()
	start = time.Now()
	srv.Run(t, "ip", "link", "set", "s2", "up")
	back := carrier.wait(t, "c2", true, mark)
	// The daemon asks for the subflows at once (see its log), but they
	// take one to two seconds to come up: the FIN of the closed subflow,
	// sent while the carrier was lost, left the gateway's neighbour entry
	// INCOMPLETE, so the first SYN waits for the neighbour timer's next
	// probe, and may need a retransmission.
	at4 = waitSubflows(t, kev, tok4, back.Add(5*time.Second), "carrier back", want4)
	at6 = waitSubflows(t, kev, tok6, back.Add(5*time.Second), "carrier back, IPv6", want6)
	t.Logf("carrier back: reported %v after the command; subflows established %v (IPv4), %v (IPv6) after the report",
		back.Sub(start), at4.Sub(back), at6.Sub(back))

	// A new connection after all this gets its subflows too.
	c := dial(t, cli, cli.Addrs4[0], server4)
	waitSubflows(t, kev, connToken(t, kev, c, false), within(5*time.Second), "a later connection", want4)
}

// TestPolicySubflowPerInterfaceServer: on the server under the userspace
// path manager, the daemon announces the other local addresses of each
// connection's family, and the client's in-kernel path manager joins them;
// an address that goes is withdrawn, and the client closes its subflow.
func TestPolicySubflowPerInterfaceServer(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 3, ServerPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kcli := listenKernel(t, cli)
	startDaemon(t, srv, s.bus, "--policy", "subflow-per-interface")

	server4 := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	server6 := srv.Serve(t, netip.AddrPortFrom(srv.Addrs6[0], 0))
	c4 := dial(t, cli, cli.Addrs4[0], server4)
	c6 := dial(t, cli, cli.Addrs6[0], server6)
	tok4, tok6 := connToken(t, kcli, c4, false), connToken(t, kcli, c6, false)
	// The client joins from the address that routes to each announced one.
	want4 := []string{
		cli.Addrs4[1].String() + " -> " + srv.Addrs4[1].String(),
		cli.Addrs4[2].String() + " -> " + srv.Addrs4[2].String(),
	}
	want6 := []string{
		cli.Addrs6[1].String() + " -> " + srv.Addrs6[1].String(),
		cli.Addrs6[2].String() + " -> " + srv.Addrs6[2].String(),
	}
	waitSubflows(t, kcli, tok4, within(5*time.Second), "IPv4 joins", want4)
	waitSubflows(t, kcli, tok6, within(5*time.Second), "IPv6 joins", want6)

	start := time.Now()
	srv.Run(t, "ip", "addr", "del", srv.Addrs4[1].String()+"/24", "dev", "s1")
	at := waitSubflows(t, kcli, tok4, within(reaction), "address withdrawn", want4[1:])
	t.Logf("server address removed: the client's subflow closed %v after the command", at.Sub(start))
	waitSubflows(t, kcli, tok6, time.Now(), "IPv6 after the IPv4 address went", want6)
}

// endpointTable returns the kernel's endpoints in h as "addr [flags]",
// sorted.
func endpointTable(t *testing.T, k *pmnl.Client) []string {
	t.Helper()
	eps, err := k.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range eps {
		out = append(out, fmt.Sprintf("%s [%s]", e.Addr, e.Flags))
	}
	slices.Sort(out)
	return out
}

// TestPolicyEndpoints: the endpoints policy keeps the kernel's endpoint
// table equal to the usable addresses, with require_default_route, through
// address, carrier and route changes, with no stale or duplicate entry; an
// endpoint made with `ip mptcp endpoint add` stays through everything,
// including the daemon's exit, which removes the policy's own.
func TestPolicyEndpoints(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 3})
	cli, srv := s.lab.Client, s.lab.Server
	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	// Another program's endpoint, for an address of path 2.
	cli.Run(t, "ip", "mptcp", "endpoint", "add", cli.Addrs4[2].String(), "signal")
	external := cli.Addrs4[2].String() + " [signal]"
	carrier := watchCarrier(t, cli)

	d := startDaemon(t, cli, s.bus, "--policy", "endpoints",
		configArg(t, "[filter]\nrequire_default_route = true\n[interfaces.c1]\nflags = [\"subflow\", \"backup\"]\n"))
	table := func(drop ...netip.Addr) []string {
		out := []string{external}
		for i := range 3 {
			for _, a := range []netip.Addr{cli.Addrs4[i], cli.Addrs6[i]} {
				if a == cli.Addrs4[2] || slices.Contains(drop, a) {
					continue
				}
				flags := "subflow"
				if i == 1 {
					flags = "subflow,backup"
				}
				out = append(out, fmt.Sprintf("%s [%s]", a, flags))
			}
		}
		slices.Sort(out)
		return out
	}
	// checkFrom waits until the table is want, within a second of start.
	checkFrom := func(start time.Time, what string, want []string) {
		t.Helper()
		for !slices.Equal(endpointTable(t, k), want) {
			if time.Since(start) > reaction {
				t.Fatalf("%s: endpoints\n  %s\nwant\n  %s", what, strings.Join(endpointTable(t, k), "\n  "), strings.Join(want, "\n  "))
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Logf("%s: table right %v after the change", what, time.Since(start))
	}
	run := func(h *pmtest.Host, what string, want []string, args ...string) {
		t.Helper()
		start := time.Now()
		h.Run(t, args...)
		checkFrom(start, what, want)
	}
	// runStill is run for a change that must change nothing: it gives
	// the daemon time to do something wrong first.
	runStill := func(h *pmtest.Host, what string, want []string, args ...string) {
		t.Helper()
		h.Run(t, args...)
		time.Sleep(200 * time.Millisecond)
		checkFrom(time.Now(), what, want)
	}
	checkFrom(time.Now(), "at start", table())

	// The endpoints work: a connection gets a subflow from c1's (path 2
	// has the other program's signal endpoint, which makes no subflow).
	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	kev := listenKernel(t, cli)
	c := dial(t, cli, cli.Addrs4[0], server)
	waitSubflows(t, kev, connToken(t, kev, c, false), within(5*time.Second), "in-kernel subflows",
		paths(server.Addr(), cli.Addrs4[1]))

	run(cli, "address removed", table(cli.Addrs4[1]), "ip", "addr", "del", cli.Addrs4[1].String()+"/24", "dev", "c1")
	runStill(cli, "address back, its default route not yet", table(cli.Addrs4[1]),
		"ip", "addr", "add", cli.Addrs4[1].String()+"/24", "dev", "c1")
	run(cli, "default route back", table(), "ip", "route", "replace", "default", "via", "10.55.1.2", "dev", "c1", "table", "101")

	// The kernel reports a lost carrier up to a second late (linkwatch):
	// the daemon has a second from the report.
	mark := carrier.mark()
	srv.Run(t, "ip", "link", "set", "s2", "down")
	checkFrom(carrier.wait(t, "c2", false, mark), "carrier lost", table(cli.Addrs6[2]))
	mark = carrier.mark()
	srv.Run(t, "ip", "link", "set", "s2", "up")
	checkFrom(carrier.wait(t, "c2", true, mark), "carrier back", table())

	run(cli, "IPv6 default route of c0 removed", table(cli.Addrs6[0]), "ip", "-6", "route", "del", "default", "table", "100")
	run(cli, "IPv6 default route of c0 back", table(),
		"ip", "-6", "route", "add", "default", "via", "fd00:55:0::2", "dev", "c0", "table", "100")
	run(cli, "c1 down", table(cli.Addrs4[1], cli.Addrs6[1]), "ip", "link", "set", "c1", "down")
	// An administrative down takes the IPv4 routes and the IPv6 address
	// (and its routes) of the link with it: all to be made again.
	runStill(cli, "c1 up, without routes and IPv6 address", table(cli.Addrs4[1], cli.Addrs6[1]), "ip", "link", "set", "c1", "up")
	run(cli, "IPv4 default route back", table(cli.Addrs6[1]), "ip", "route", "replace", "default", "via", "10.55.1.2", "dev", "c1", "table", "101")
	cli.Run(t, "ip", "-6", "route", "replace", "default", "via", "fd00:55:1::2", "dev", "c1", "onlink", "table", "101")
	run(cli, "IPv6 address back", table(), "ip", "-6", "addr", "add", cli.Addrs6[1].String()+"/64", "dev", "c1", "nodad")

	// The daemon's exit removes its endpoints, not the other one.
	d.stop(t)
	if got := endpointTable(t, k); !slices.Equal(got, []string{external}) {
		t.Errorf("after the daemon's exit: %v, want only %s", got, external)
	}
}

// TestPolicyReload: SIGHUP re-reads the file. A valid new policy applies
// to the live connections; an invalid file is refused with its line, and
// the old configuration stays.
func TestPolicyReload(t *testing.T) {
	s := newSetup(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cli, srv := s.lab.Client, s.lab.Server
	kev := listenKernel(t, cli)
	conf := configArg(t, "policy = \"none\"\n")
	path := strings.TrimPrefix(conf, "--config=")
	d := startDaemon(t, cli, s.bus, conf, "--policy=") // the file decides

	server := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	tok := connToken(t, kev, c, false)
	time.Sleep(100 * time.Millisecond)
	if got := subflowsOf(kev, tok); len(got) != 0 {
		t.Fatalf("policy none made subflows: %v", got)
	}

	writeFile(t, path, "policy = \"subflow-per-interface\"\n[endpoints]\nflags = [\"signal\", \"fullmesh\"]\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "the refusal in the log", func() bool {
		return strings.Contains(d.log.String(), "reload refused") && strings.Contains(d.log.String(), path+":3:")
	})
	time.Sleep(100 * time.Millisecond)
	if got := subflowsOf(kev, tok); len(got) != 0 {
		t.Fatalf("subflows after a refused reload: %v", got)
	}

	writeFile(t, path, "policy = \"subflow-per-interface\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitSubflows(t, kev, tok, within(5*time.Second), "after the reload", paths(server.Addr(), cli.Addrs4[1]))
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
