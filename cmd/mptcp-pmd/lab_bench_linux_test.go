package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// labMode is one way of managing paths in BenchmarkLab, on a lab of its
// own: a client namespace with three paths to its server.
type labMode struct {
	name   string
	lab    *pmtest.Lab
	kev    *kernelLog      // the client's events, from a listener of the benchmark's own
	pkts   *pmtest.Capture // the client's handshake packets, by the kernel's clock
	server netip.AddrPort
	first  []time.Duration // ESTABLISHED -> the first extra SUB_ESTABLISHED, by the packets
	both   []time.Duration // ESTABLISHED -> the second
	batch  int             // connections whose ESTABLISHED and first SUB_ESTABLISHED the listener read at once
	pid    int             // the path manager's process, 0 for none
	cpu    time.Duration   // its CPU time over the run
	runs   int             // the times its threads were scheduled in over the run
	tid    int             // the path manager's thread, when it is one thread of pid (the floor)
	events int             // the kernel's events in the namespace over the run
}

// BenchmarkLab measures how soon a new connection gets its extra subflows
// under each way of managing paths, interleaved connection by connection
// in one run, so that every mode sees the same machine: the kernel's
// in-kernel path manager with subflow endpoints made by hand ("kernel"),
// the same with ip mptcp monitor listening to the events and doing nothing
// ("kernel+monitor": the cost of any listener to the kernel's path
// manager, and the least CPU per event of a process), mptcp-pmd's endpoints, subflow-per-interface and fullmesh policies, and
// the floor of any userspace path manager ("floor": one goroutine that
// reads the events and sends SUBFLOW_CREATE, no D-Bus, no state), and,
// where Debian's mptcpd and mptcpd-plugins are installed, mptcpd with its
// addr_adv plugin (endpoints, like mptcp-pmd's endpoints policy). Each
// mode has a lab of its own (three paths); the client sends its first
// bytes right after connect(), as real clients do. Every connection gets
// two extra subflows, from the client's second and third path.
//
// It reports, per mode, the median and 99th percentile from the client's
// ESTABLISHED to the first and to both extra SUB_ESTABLISHED, in µs, and
// as ratios to the floor and to the kernel. These times are the kernel's:
// those of the packets on which the client's kernel reports the events
// (pmtest.Capture), not the times a listener reads the events, which
// measure the listener's own wake-up: under the in-kernel path manager a
// listener reads ESTABLISHED and the first SUB_ESTABLISHED in one receive
// for a third or more of the connections (the "one read" column), and
// the medians of such times moved by up to 2.4x from run to run with
// another process awake. For the daemons it reports their CPU
// time per kernel event of their namespace (all their threads' run time,
// from /proc), also as a ratio to mptcpd's, and their threads' times
// scheduled in per event; the same for the floor's thread (the kernel's
// work of a SUBFLOW_CREATE, the join's handshake included, is charged to
// the thread that sends it). LAB_CONNS sets the connections per mode
// (default 1000: the 99th percentile of 200 or 400 is the second or fourth
// worst, and fullmesh's moved between 1.1 and 2.0 times the floor's from
// run to run at 400). LAB_BASELINE, the path of another
// build of mptcp-pmd, adds a "baseline" mode for each of the daemon's
// policies run with that build, interleaved like the others: an A/B
// comparison of two versions in one run. Run it with make bench-lab.
func BenchmarkLab(b *testing.B) {
	conns := 1000
	if v, err := strconv.Atoi(os.Getenv("LAB_CONNS")); err == nil && v > 0 {
		conns = v
	}
	const pace = 2 * time.Millisecond
	baseline := os.Getenv("LAB_BASELINE")

	newMode := func(name, clientPM string) *labMode { return newLabMode(b, name, clientPM) }
	kernel := newMode("kernel", "kernel")
	for i, a := range kernel.lab.Client.Addrs4 {
		kernel.lab.Client.Run(b, "ip", "mptcp", "endpoint", "add", a.String(), "dev", kernel.lab.Client.Ifaces[i], "subflow")
	}
	// The same with a listener that does nothing with the events (ip mptcp
	// monitor): what any program that follows the connections costs the
	// kernel's path manager (the kernel wakes every listener in the
	// context of the event), and the CPU per event of the least a
	// listening process does.
	monitored := newMode("kernel+monitor", "kernel")
	for i, a := range monitored.lab.Client.Addrs4 {
		monitored.lab.Client.Run(b, "ip", "mptcp", "endpoint", "add", a.String(), "dev", monitored.lab.Client.Ifaces[i], "subflow")
	}
	monitored.pid = startMonitor(b, monitored.lab.Client)
	modes := []*labMode{kernel, monitored}
	for _, p := range []struct{ policy, pm string }{
		{"endpoints", "kernel"}, {"subflow-per-interface", "userspace"}, {"fullmesh", "userspace"},
	} {
		m := newMode(p.policy, p.pm)
		bus := dbustest.StartBus(b, dbustest.SystemDefaults())
		m.pid = startDaemon(b, m.lab.Client, bus, "--policy", p.policy, "--log-level", "warn").pid()
		modes = append(modes, m)
		if baseline != "" {
			m := newMode(p.policy+" baseline", p.pm)
			bus := dbustest.StartBus(b, dbustest.SystemDefaults())
			m.pid = launchDaemon(b, m.lab.Client, bus, daemonSpec{Binary: baseline,
				Args: []string{"--policy", p.policy, "--log-level", "warn"}}).pid()
			modes = append(modes, m)
		}
	}
	var mptcpd *labMode
	if _, err := os.Stat(mptcpdPluginDir + "/addr_adv.so"); err == nil {
		mptcpd = newMode("mptcpd addr_adv", "kernel")
		mptcpd.pid = startMptcpd(b, mptcpd.lab.Client)
		modes = append(modes, mptcpd)
	} else {
		b.Logf("no mptcpd mode: %v (apt-get install mptcpd mptcpd-plugins)", err)
	}
	floor := newMode("floor", "userspace")
	floor.tid = startFloor(b, floor.lab.Client, floor.server)
	floor.pid = os.Getpid()
	modes = append(modes, floor)
	// The daemons' endpoints are in place before the first connection.
	for _, m := range modes {
		if strings.HasPrefix(m.name, "endpoints") || m == mptcpd {
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(m.lab.Client.Run(b, "ip", "mptcp", "endpoint", "show"), m.lab.Client.Addrs4[2].String()) {
				if time.Now().After(deadline) {
					b.Fatal("the daemon made no endpoints")
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}

	for _, m := range modes {
		cpu, runs := cpuTime(b, m.pid, m.tid)
		m.cpu, m.runs, m.events = -cpu, -runs, -len(m.kev.events())
	}
	for b.Loop() {
		interleave(b, modes, conns, pace)
	}

	for _, m := range modes {
		cpu, runs := cpuTime(b, m.pid, m.tid)
		m.cpu, m.runs, m.events = m.cpu+cpu, m.runs+runs, m.events+len(m.kev.events())
	}
	q := quantileUS
	var table strings.Builder
	fmt.Fprintf(&table, "%d connections per mode; µs from ESTABLISHED, by the kernel's clock, and ratios to the floor and the kernel\n", conns)
	fmt.Fprintf(&table, "%-22s %9s %9s %9s %9s  %s\n", "mode", "1st p50", "1st p99", "both p50", "both p99",
		"p50 ratios: 1st/floor both/floor 1st/kernel both/kernel  one read")
	for _, m := range modes {
		f50, f99, b50, b99 := q(m.first, .5), q(m.first, .99), q(m.both, .5), q(m.both, .99)
		fmt.Fprintf(&table, "%-22s %9.0f %9.0f %9.0f %9.0f  %9.2f %10.2f %10.2f %11.2f  %8.0f%%\n", m.name, f50, f99, b50, b99,
			f50/q(floor.first, .5), b50/q(floor.both, .5), f50/q(kernel.first, .5), b50/q(kernel.both, .5),
			100*float64(m.batch)/float64(len(m.first)))
		unit := strings.ReplaceAll(m.name, " ", "-")
		b.ReportMetric(f50, unit+"-first-p50-µs")
		b.ReportMetric(b50, unit+"-both-p50-µs")
	}
	fmt.Fprintf(&table, "\n%-22s %9s %12s %14s %12s\n", "daemon", "events", "CPU/event µs", "ratio to mptcpd", "runs/event")
	for _, m := range modes {
		if m.pid == 0 {
			continue
		}
		per := us(m.cpu) / float64(m.events)
		ratio := "-"
		if mptcpd != nil {
			ratio = fmt.Sprintf("%.2f", per/(us(mptcpd.cpu)/float64(mptcpd.events)))
		}
		name := m.name
		if m.tid != 0 {
			name += " (its thread)"
		}
		fmt.Fprintf(&table, "%-22s %9d %12.1f %14s %12.2f\n", name, m.events, per, ratio, float64(m.runs)/float64(m.events))
		b.ReportMetric(per, strings.ReplaceAll(m.name, " ", "-")+"-cpu-per-event-µs")
	}
	b.Log("\n" + table.String())
}

// interleave opens conns connections in each mode, each mode in turn, pace
// apart, and records how soon each got its extra subflows. The order is
// shuffled for every round (with a fixed seed): a mode's connection ends
// while the next mode's opens, and with a fixed cycle each mode would
// always share the machine with the same neighbour. Two daemons with the
// same binary differed by 6% in CPU per event and 9% in wake-ups per event
// that way.
func interleave(b *testing.B, modes []*labMode, conns int, pace time.Duration) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range conns {
		for _, j := range rng.Perm(len(modes)) {
			m := modes[j]
			first, both := m.connect(b, i)
			m.first, m.both = append(m.first, first), append(m.both, both)
			time.Sleep(pace)
		}
	}
}

// newLabMode makes a mode's lab (three paths, the client's path manager
// clientPM), its listener of the client's events, and its server.
func newLabMode(b *testing.B, name, clientPM string) *labMode {
	lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 3, ClientPM: clientPM})
	m := &labMode{name: name, lab: lab, kev: listenKernel(b, lab.Client), pkts: lab.Client.Capture(b)}
	m.server = lab.Server.Serve(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	return m
}

// quantileUS returns the p quantile of d in µs.
func quantileUS(d []time.Duration, p float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return us(s[min(int(p*float64(len(s))), len(s)-1)])
}

// connect opens a connection in the mode's lab, waits for its two extra
// subflows, and returns the times from its ESTABLISHED to the first and to
// the second one's SUB_ESTABLISHED, by the kernel's clock: from the
// arrival of the server's first packet after its SYN-ACK (on which the
// client's kernel makes the connection fully established and reports
// ESTABLISHED) to the arrival of each join's SYN-ACK (on which it reports
// SUB_ESTABLISHED). The listener's events say which packets those are.
func (m *labMode) connect(b *testing.B, i int) (first, both time.Duration) {
	cli := m.lab.Client
	c := dialQuiet(b, cli, m.server)
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	what := fmt.Sprintf("%s, connection %d", m.name, i)
	est := m.kev.wait(b, what+": ESTABLISHED", func(ev pm.Event) bool {
		return ev.Type == pm.EventEstablished && ev.LocalPort == local.Port() && ev.LocalAddr == local.Addr()
	})
	seen := map[netip.Addr]bool{}
	var subs []kernelEvent
	for len(subs) < 2 {
		sub := m.kev.wait(b, what+": SUB_ESTABLISHED", func(ev pm.Event) bool {
			return ev.Type == pm.EventSubEstablished && ev.Token == est.Token && !seen[ev.LocalAddr]
		})
		if sub.LocalAddr != cli.Addrs4[1] && sub.LocalAddr != cli.Addrs4[2] {
			b.Fatalf("%s: a subflow from %s", what, sub.LocalAddr)
		}
		seen[sub.LocalAddr] = true
		subs = append(subs, sub)
	}
	if subs[0].At.Equal(est.At) {
		m.batch++
	}
	flow := func(ev pm.Event) pmtest.Flow {
		return pmtest.Flow{Local: netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort), Remote: netip.AddrPortFrom(ev.RemoteAddr, ev.RemotePort)}
	}
	initial := m.pkts.Wait(b, flow(est.Event), func(h pmtest.Handshake) bool { return !h.Reply.IsZero() })
	if est.At.Before(initial.Reply) {
		b.Fatalf("%s: ESTABLISHED read at %v, before the packet that causes it arrived (%v)", what, est.At, initial.Reply)
	}
	var at []time.Time
	for _, sub := range subs {
		join := m.pkts.Wait(b, flow(sub.Event), func(h pmtest.Handshake) bool { return !h.SYNACK.IsZero() })
		at = append(at, join.SYNACK)
	}
	slices.SortFunc(at, func(x, y time.Time) int { return x.Compare(y) })
	return at[0].Sub(initial.Reply), at[1].Sub(initial.Reply)
}

// startFloor runs the floor of any userspace path manager in h until the
// benchmark ends: one goroutine on one thread that reads the path-manager
// events and, on each ESTABLISHED, sends SUBFLOW_CREATE from h's second and
// third path to server. No D-Bus, no state.
//
// It returns the thread's id, for its CPU time (a lower bound of the
// floor's: the Go runtime's own threads are left out).
func startFloor(b *testing.B, h *pmtest.Host, server netip.AddrPort) int {
	l, err := pmnl.ListenEvents(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		b.Fatal(err)
	}
	k, err := pmnl.Dial(&pmnl.Config{NetNS: h.NSFD()})
	if err != nil {
		l.Close()
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.Cleanup(func() {
		cancel()
		l.Close()
		<-done
		k.Close()
	})
	tid := make(chan int, 1)
	go func() {
		defer close(done)
		runtime.LockOSThread()
		tid <- syscall.Gettid()
		buf := make([]pm.Event, 0, 64)
		for ctx.Err() == nil {
			evs, err := l.Receive(buf)
			for _, ev := range evs {
				if ev.Type != pm.EventEstablished {
					continue
				}
				for id := uint8(1); id <= 2; id++ {
					// A refusal shows as a missing subflow, which the
					// benchmark reports.
					k.CreateSubflow(ev.Token, pm.Address{ID: id, Addr: h.Addrs4[id]}, server)
				}
			}
			switch {
			case err == nil, errors.Is(err, pm.ErrInvalid), errors.Is(err, pmnl.ErrOverflow):
			default: // closed
				return
			}
			buf = evs[:0]
		}
	}()
	return <-tid
}

// mptcpdPluginDir is where Debian's mptcpd-plugins puts mptcpd's plugins.
const mptcpdPluginDir = "/usr/lib/x86_64-linux-gnu/mptcpd"

// startMptcpd runs Debian's mptcpd with the addr_adv plugin (a subflow
// endpoint per local address) in h until the benchmark ends, and returns
// its process id.
func startMptcpd(b *testing.B, h *pmtest.Host) int {
	cmd := exec.Command("ip", "netns", "exec", h.Name, "/usr/libexec/mptcpd", "--plugin-dir="+mptcpdPluginDir,
		"--path-manager=addr_adv", "--load-plugins=addr_adv", "--addr-flags=subflow",
		"--notify-flags=existing,skip_link_local,skip_loopback", "--log=stderr")
	var out pmtest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatalf("mptcpd: %v", err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if b.Failed() {
			b.Logf("mptcpd:\n%s", out.String())
		}
	})
	return cmd.Process.Pid
}

// startMonitor runs ip mptcp monitor in h, its output discarded, until the
// benchmark ends, and returns its pid.
func startMonitor(b *testing.B, h *pmtest.Host) int {
	cmd := exec.Command("ip", "-n", h.Name, "mptcp", "monitor")
	if err := cmd.Start(); err != nil {
		b.Fatalf("ip mptcp monitor: %v", err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// cpuTime returns the CPU time process pid has used so far, all its
// threads together (/proc/PID/task/*/schedstat), and how many times they
// were scheduled in (each a wake-up or a preemption, which cost much on a
// virtual machine); 0 for pid 0. With tid, only that thread's.
func cpuTime(b *testing.B, pid, tid int) (time.Duration, int) {
	if pid == 0 {
		return 0, 0
	}
	task := "*"
	if tid != 0 {
		task = strconv.Itoa(tid)
	}
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, task))
	if err != nil || len(files) == 0 {
		b.Fatalf("CPU time of %d: %v", pid, err)
	}
	var total time.Duration
	var runs int
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		// Time on the CPU (ns), time waiting for it, times scheduled in.
		var ns, wait int64
		var n int
		fmt.Sscan(string(data), &ns, &wait, &n)
		total += time.Duration(ns)
		runs += n
	}
	return total, runs
}

// BenchmarkBurst opens BURST_CONNS connections (default 10,000) as fast as
// 16 dialers can, under the subflow-per-interface policy with three paths,
// and waits until every one has its two extra subflows (as sock_diag
// lists them), or 60 s. It reports how long the opening took, how long
// until the last connection had its subflows, how many never got them,
// how often the daemon lost kernel events (its event socket overflowed,
// and it repaired from sock_diag), and the daemon's anonymous memory per
// live connection (right after the burst, and once the daemon returned its
// unused heap) and above idle after they closed (trimInterval+2 s and a
// minute), and GetManagedObjects at the peak from a godbus client and from
// a client that reads the reply without decoding it (rawManagedObjects).
// Run it with make bench-lab.
func BenchmarkBurst(b *testing.B) {
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("BURST_CONNS")); err == nil && v > 0 {
		n = v
	}
	const dialers = 16
	lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 3, ClientPM: "userspace"})
	bus := dbustest.StartBus(b, dbustest.SystemDefaults())
	d := launchDaemon(b, lab.Client, bus, daemonSpec{
		Args: []string{"--policy", "subflow-per-interface", "--log-level", "warn"},
		Env:  []string{"GODEBUG=madvdontneed=1"},
	})
	// The server is a process of its own: this one's open-file limit holds
	// the client ends only.
	server := lab.Server.StartServer(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	time.Sleep(time.Second) // the start's allocations settle
	_, _, idleAnon := procMem(b, d.pid())
	// complete counts the connections to the server, and those with both
	// extra subflows.
	complete := func() (done, total int) {
		var snap *diag.Snapshot
		if err := lab.Client.Do(func() error {
			dc, err := diag.Dial(nil)
			if err != nil {
				return err
			}
			defer dc.Close()
			snap, err = dc.Snapshot()
			return err
		}); err != nil {
			b.Fatal(err)
		}
		for _, c := range snap.Conns {
			if c.Remote == server {
				total++
				if len(c.Subflows) == 3 {
					done++
				}
			}
		}
		return done, total
	}

	for b.Loop() {
		t0 := time.Now()
		conns := make([]net.Conn, n)
		errs := make(chan error, dialers)
		for w := range dialers {
			go func() {
				for i := w; i < n; i += dialers {
					c, err := lab.Client.DialErr(netip.Addr{}, server)
					if err == nil {
						_, err = c.Write([]byte("x"))
					}
					if err != nil {
						errs <- err
						return
					}
					conns[i] = c
				}
				errs <- nil
			}()
		}
		for range dialers {
			if err := <-errs; err != nil {
				b.Fatalf("dial: %v", err)
			}
		}
		opened := time.Since(t0)
		deadline := t0.Add(60 * time.Second)
		done, _ := complete()
		for done < n && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			done, _ = complete()
		}
		all := time.Since(t0)
		_, _, burstAnon := procMem(b, d.pid())
		time.Sleep(trimInterval + 2*time.Second) // what stays once the daemon returned its unused heap
		_, _, openAnon := procMem(b, d.pid())
		// A client lists them all, three times.
		var gmo []time.Duration
		for range 3 {
			t := time.Now()
			if objs := d.managedObjects(b); len(objs) != n {
				b.Errorf("GetManagedObjects: %d objects, want %d", len(objs), n)
			}
			gmo = append(gmo, time.Since(t))
		}
		_, _, listedAnon := procMem(b, d.pid())
		b.Logf("GetManagedObjects at %d connections, a godbus client: %v; anonymous memory %.0f kB more after the three", n, gmo, listedAnon-openAnon)
		// A client that reads the reply without decoding it: the daemon
		// and the bus.
		var raw []time.Duration
		var size int
		for range 3 {
			t, sz := rawManagedObjects(b, bus.Address())
			raw, size = append(raw, t), sz
		}
		_, _, rawAnon := procMem(b, d.pid())
		b.Logf("GetManagedObjects at %d connections, read without decoding: %v, %d bytes; anonymous memory %.0f kB more after the three",
			n, raw, size, rawAnon-listedAnon)
		b.ReportMetric(float64(slices.Max(raw).Microseconds())/1000, "GetManagedObjects-raw-max-ms")
		for _, c := range conns {
			c.(*net.TCPConn).SetLinger(0) // reset: the server holds its ends open
			c.Close()
		}
		time.Sleep(trimInterval + 2*time.Second) // the daemon returns unused heap every trimInterval
		_, _, closedAnon := procMem(b, d.pid())
		_, kernelConns := complete()
		objects := len(d.managedObjects(b))
		time.Sleep(time.Minute - trimInterval - 2*time.Second)
		_, _, minuteAnon := procMem(b, d.pid())
		b.Logf("after the close: %d objects, %d connections in the kernel", objects, kernelConns)
		lost := strings.Count(d.log.String(), "kernel events were lost")
		b.Logf("%d connections opened in %v; %d with both extra subflows after %v, %d without; event losses %d; "+
			"anonymous memory: %.0f kB idle; per live connection %.0f B right after the burst, %.0f B settled; "+
			"above idle after they closed: %.0f kB after %v, %.0f kB after a minute",
			n, opened.Round(time.Millisecond), done, all.Round(time.Millisecond), n-done, lost,
			idleAnon, (burstAnon-idleAnon)*1024/float64(n), (openAnon-idleAnon)*1024/float64(n),
			closedAnon-idleAnon, trimInterval+2*time.Second, minuteAnon-idleAnon)
		b.ReportMetric(opened.Seconds(), "open-s")
		b.ReportMetric(all.Seconds(), "complete-s")
		b.ReportMetric(float64(n-done), "incomplete")
		b.ReportMetric((openAnon-idleAnon)*1024/float64(n), "anon-B/conn")
		b.ReportMetric(minuteAnon-idleAnon, "anon-minute-after-kB")
		b.ReportMetric(float64(slices.Max(gmo).Milliseconds()), "GetManagedObjects-max-ms")
	}
}

// burstMode is one way of managing paths in BenchmarkBurst300, on a lab of
// its own: a client namespace with three paths to its server.
type burstMode struct {
	name   string
	lab    *pmtest.Lab
	kev    *kernelLog // the client's events, from a listener of the benchmark's own
	server netip.AddrPort
	d      *testDaemon     // the daemon, nil for the kernel's path manager
	opened []time.Duration // per round: the first dial -> the last connection open
	last   []time.Duration // per round: the first dial -> the last connection complete
}

// BenchmarkBurst300 measures how soon every connection of a burst of 300,
// opened at once by 32 dialers, has its extra subflows: the time from just
// before the first dial until the client's event listener has seen
// SUB_ESTABLISHED from the client's second and third path for each of the
// 300 (as the listener received them). Its modes are the kernel's in-kernel
// path manager with subflow endpoints made by hand for those two paths
// ("kernel"), and the built daemon with the subflow-per-interface and the
// fullmesh policy (userspace path manager, each on a private bus). Each
// mode has a lab of its own (three paths); every connection writes its
// first bytes right after connect(), as real clients do. Rounds are
// interleaved: in each, every mode in turn, starting with another one each
// round, opens its burst, waits for the subflows, closes the connections
// and waits until neither namespace lists any (and the daemon has dropped
// their objects) before the next mode. A burst of 32 connections per mode
// before the first round warms up and is not counted. It fails if a
// connection has not got both extra subflows 30 s after the first dial.
//
// It prints, per mode, the median and worst time until the last connection
// was complete over the rounds, their ratios to the kernel's median, and
// every round's figure; it reports the medians in ms and the daemon's
// ratios to the kernel's. BURST300_ROUNDS sets the rounds (default 5). Run
// it with make bench-lab.
func BenchmarkBurst300(b *testing.B) {
	const (
		n       = 300
		dialers = 32
		timeout = 30 * time.Second
	)
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("BURST300_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	// The lab servers run in this process, so both ends of a burst count
	// against its open-file limit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("open-file limit: %v", err)
	}
	if need := uint64(2*n + 256); lim.Cur < need {
		b.Fatalf("open-file limit %d: a burst of %d needs about %d (both ends in this process)", lim.Cur, n, need)
	}

	newMode := func(name, clientPM string) *burstMode {
		lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 3, ClientPM: clientPM})
		m := &burstMode{name: name, lab: lab, kev: listenKernel(b, lab.Client)}
		m.server = lab.Server.Serve(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
		return m
	}
	kernel := newMode("kernel", "kernel")
	for i := 1; i <= 2; i++ {
		kernel.lab.Client.Run(b, "ip", "mptcp", "endpoint", "add", kernel.lab.Client.Addrs4[i].String(),
			"dev", kernel.lab.Client.Ifaces[i], "subflow")
	}
	modes := []*burstMode{kernel}
	for _, policy := range []string{"subflow-per-interface", "fullmesh"} {
		m := newMode(policy, "userspace")
		bus := dbustest.StartBus(b, dbustest.SystemDefaults())
		m.d = startDaemon(b, m.lab.Client, bus, "--policy", policy, "--log-level", "warn")
		modes = append(modes, m)
	}
	for _, m := range modes {
		m.burst(b, m.name+", warm-up", dialers, dialers, timeout)
	}

	for b.Loop() {
		for r := range rounds {
			// Each mode in turn, starting with another one each round.
			for j := range modes {
				m := modes[(r+j)%len(modes)]
				opened, last := m.burst(b, fmt.Sprintf("%s, round %d", m.name, r), n, dialers, timeout)
				m.opened, m.last = append(m.opened, opened), append(m.last, last)
			}
		}
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	median := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%d connections at once, %d rounds; ms from the first dial until the last connection had both extra subflows\n",
		n, len(kernel.last))
	fmt.Fprintf(&table, "%-22s %9s %9s %9s %10s %10s  %s\n", "mode", "open p50", "last p50", "last max",
		"p50/kernel", "max/kernel", "last, per round")
	for _, m := range modes {
		p50, worst := ms(median(m.last)), ms(slices.Max(m.last))
		var each []string
		for _, d := range m.last {
			each = append(each, fmt.Sprintf("%.0f", ms(d)))
		}
		fmt.Fprintf(&table, "%-22s %9.0f %9.0f %9.0f %10.2f %10.2f  %s\n", m.name, ms(median(m.opened)), p50, worst,
			p50/ms(median(kernel.last)), worst/ms(slices.Max(kernel.last)), strings.Join(each, " "))
		b.ReportMetric(p50, m.name+"-last-ms")
		if m != kernel {
			b.ReportMetric(p50/ms(median(kernel.last)), m.name+"-ratio-to-kernel")
		}
	}
	b.Log("\n" + table.String())
}

// burst opens n connections in m's lab at once, from dialers goroutines,
// and waits until the client's listener has seen SUB_ESTABLISHED from the
// client's second and third path for each; it fails the benchmark when
// some have not both within timeout of the first dial. It returns how long
// after the first dial the last connection was open and the last one
// complete (when the listener received the event that completed it). Then
// it closes the connections and waits until neither namespace lists an
// MPTCP connection and the daemon, if any, has no connection object left.
func (m *burstMode) burst(b *testing.B, what string, n, dialers int, timeout time.Duration) (opened, last time.Duration) {
	cli := m.lab.Client
	extra := [2]netip.Addr{cli.Addrs4[1], cli.Addrs4[2]}
	m.kev.mu.Lock()
	mark := len(m.kev.evs)
	m.kev.mu.Unlock()

	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	errs := make(chan error, dialers)
	t0 := time.Now()
	for w := range dialers {
		go func() {
			for i := w; i < n; i += dialers {
				c, err := cli.DialErr(netip.Addr{}, m.server)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
				if _, err := c.Write([]byte("hello\n")); err != nil {
					errs <- fmt.Errorf("write: %w", err)
					return
				}
			}
			errs <- nil
		}()
	}
	var dialErr error
	for range dialers {
		if err := <-errs; err != nil && dialErr == nil {
			dialErr = err
		}
	}
	opened = time.Since(t0)
	if dialErr != nil {
		b.Fatalf("%s: %v", what, dialErr)
	}

	// The burst's connections by their first subflow's local address; their
	// tokens as their ESTABLISHED events name them; the extra subflows seen
	// per token, by local address.
	ours := make(map[netip.AddrPort]bool, n)
	for _, c := range conns {
		ours[c.LocalAddr().(*net.TCPAddr).AddrPort()] = true
	}
	tokens := make(map[uint32]bool, n)
	subs := make(map[uint32]map[netip.Addr]time.Time, n)
	complete := 0
	var lastAt time.Time
	// done counts token as complete when it is the burst's and has both.
	done := func(token uint32) {
		if s := subs[token]; tokens[token] && len(s) == len(extra) {
			complete++
			for _, at := range s {
				if at.After(lastAt) {
					lastAt = at
				}
			}
		}
	}
	deadline := time.NewTimer(time.Until(t0.Add(timeout)))
	defer deadline.Stop()
	for i := mark; complete < n; {
		m.kev.mu.Lock()
		evs, changed, lost := m.kev.evs, m.kev.changed, m.kev.lost
		m.kev.mu.Unlock()
		for ; i < len(evs); i++ {
			ev := evs[i]
			switch ev.Type {
			case pm.EventEstablished:
				if ours[netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort)] && !tokens[ev.Token] {
					tokens[ev.Token] = true
					done(ev.Token)
				}
			case pm.EventSubEstablished:
				if ev.LocalAddr != extra[0] && ev.LocalAddr != extra[1] {
					if tokens[ev.Token] {
						b.Fatalf("%s: a subflow from %s (token %08x)", what, ev.LocalAddr, ev.Token)
					}
					continue
				}
				s := subs[ev.Token]
				if s == nil {
					s = make(map[netip.Addr]time.Time, len(extra))
					subs[ev.Token] = s
				}
				if _, seen := s[ev.LocalAddr]; !seen {
					s[ev.LocalAddr] = ev.At
					done(ev.Token)
				}
			}
		}
		if complete == n {
			break
		}
		select {
		case <-changed:
		case <-deadline.C:
			b.Fatalf("%s: %d of %d connections without both extra subflows %v after the first dial "+
				"(%d ESTABLISHED seen; the listener lost events: %v)", what, n-complete, n, timeout, len(tokens), lost)
		}
	}
	last = lastAt.Sub(t0)

	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	gone := time.Now().Add(timeout)
	for {
		left := len(listed(b, cli)) + len(listed(b, m.lab.Server))
		objs := 0
		if m.d != nil {
			objs = len(m.d.managedObjects(b))
		}
		if left == 0 && objs == 0 {
			break
		}
		if time.Now().After(gone) {
			b.Fatalf("%s: %v after the close, the namespaces list %d MPTCP connections and the daemon has %d objects",
				what, timeout, left, objs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return opened, last
}

// rawManagedObjects calls GetManagedObjects of the daemon on the bus at
// address as rawCall does.
func rawManagedObjects(tb testing.TB, address string) (time.Duration, int) {
	tb.Helper()
	return rawCall(tb, address, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
}

// rawCall calls a method without arguments of the daemon's manager object
// on the bus at address as a client that only reads the reply: it returns
// the time from sending the call to the reply's last byte, and the
// reply's size. It measures the daemon and the bus, not a client
// library's decoding (a godbus client spends most of its time there at
// 10,000 connections).
func rawCall(tb testing.TB, address, iface, member string) (time.Duration, int) {
	tb.Helper()
	path, ok := strings.CutPrefix(address, "unix:path=")
	if !ok {
		tb.Fatalf("bus address %q: not unix:path=", address)
	}
	path, _, _ = strings.Cut(path, ",")
	c, err := net.Dial("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 1<<16)
	uid := strconv.Itoa(os.Getuid())
	if _, err := fmt.Fprintf(c, "\x00AUTH EXTERNAL %x\r\n", uid); err != nil {
		tb.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK") {
		tb.Fatalf("auth: %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "BEGIN\r\n"); err != nil {
		tb.Fatal(err)
	}
	call := func(serial uint32, dest string, path dbus.ObjectPath, iface, member string) {
		m := &dbus.Message{Type: dbus.TypeMethodCall, Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldDestination: dbus.MakeVariant(dest), dbus.FieldPath: dbus.MakeVariant(path),
			dbus.FieldInterface: dbus.MakeVariant(iface), dbus.FieldMember: dbus.MakeVariant(member)}}
		var buf bytes.Buffer
		if err := m.EncodeTo(&buf, binary.LittleEndian); err != nil {
			tb.Fatal(err)
		}
		b := buf.Bytes()
		binary.LittleEndian.PutUint32(b[8:], serial) // godbus sets serials only on its connections
		if _, err := c.Write(b); err != nil {
			tb.Fatal(err)
		}
	}
	// reply reads messages until the method return or error to serial, and
	// returns its size.
	reply := func(serial uint32) int {
		for {
			var fixed [16]byte
			if _, err := io.ReadFull(r, fixed[:]); err != nil {
				tb.Fatal(err)
			}
			if fixed[0] != 'l' {
				tb.Fatalf("a big-endian message from the bus")
			}
			body := binary.LittleEndian.Uint32(fixed[4:])
			fields := binary.LittleEndian.Uint32(fixed[12:])
			rest := make([]byte, (fields+7)&^7+body)
			if _, err := io.ReadFull(r, rest); err != nil {
				tb.Fatal(err)
			}
			if typ := fixed[1]; (typ == 2 || typ == 3) && replySerial(rest[:fields]) == serial {
				if typ == 3 {
					tb.Fatalf("call %d: an error reply", serial)
				}
				return 16 + len(rest)
			}
		}
	}
	call(1, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
	reply(1)
	t0 := time.Now()
	call(2, dbusapi.BusName, dbusapi.ManagerPath, iface, member)
	n := reply(2)
	return time.Since(t0), n
}

// replySerial returns the REPLY_SERIAL of a message's header fields (the
// array's bytes, which start 8-aligned in the message at offset 16), or 0.
func replySerial(f []byte) uint32 {
	for i := 0; i+4 <= len(f); {
		i = (i + 7) &^ 7 // each field is a struct
		code, siglen := f[i], int(f[i+1])
		sig := string(f[i+2 : i+2+siglen])
		i += 2 + siglen + 1
		switch sig {
		case "u":
			i = (i + 3) &^ 3
			if code == 5 {
				return binary.LittleEndian.Uint32(f[i:])
			}
			i += 4
		case "s", "o":
			i = (i + 3) &^ 3
			i += 4 + int(binary.LittleEndian.Uint32(f[i:])) + 1
		case "g":
			i += 1 + int(f[i]) + 1
		default:
			return 0
		}
	}
	return 0
}
