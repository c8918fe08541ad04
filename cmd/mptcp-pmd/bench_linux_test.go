package main

// Benchmarks of the built daemon in a namespace lab:
//
//	go test -run '^$' -bench . ./cmd/mptcp-pmd
//
// They need what the e2e tests need (root, MPTCP, dbus-daemon) and skip
// without it.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// objectSignal is an InterfacesAdded or InterfacesRemoved as a client
// received it.
type objectSignal struct {
	added bool
	path  dbus.ObjectPath
	token uint32 // InterfacesAdded only
	at    time.Time
}

// watchObjects subscribes a new client of bus to the daemon's
// ObjectManager signals and delivers them, stamped when received.
func watchObjects(tb testing.TB, bus *dbustest.Bus) <-chan objectSignal {
	tb.Helper()
	conn := bus.Dial(tb)
	raw := make(chan *dbus.Signal, 4096)
	conn.Signal(raw)
	if err := conn.AddMatchSignal(dbus.WithMatchSender(dbusapi.BusName), dbus.WithMatchObjectPath(dbusapi.ManagerPath),
		dbus.WithMatchInterface("org.freedesktop.DBus.ObjectManager")); err != nil {
		tb.Fatalf("subscribe: %v", err)
	}
	out := make(chan objectSignal, 4096)
	go func() {
		for s := range raw {
			now := time.Now()
			if len(s.Body) != 2 {
				continue
			}
			o := objectSignal{added: s.Name == sigInterfacesAdded, at: now}
			o.path, _ = s.Body[0].(dbus.ObjectPath)
			if o.added {
				ifaces, _ := s.Body[1].(map[string]map[string]dbus.Variant)
				if v, ok := ifaces[dbusapi.ConnectionInterface]["Token"]; ok {
					o.token, _ = v.Value().(uint32)
				}
			}
			out <- o
		}
	}()
	return out
}

// nextObject returns the next object signal of the kind, failing after 10 s.
func nextObject(tb testing.TB, ch <-chan objectSignal, added bool) objectSignal {
	tb.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case o := <-ch:
			if o.added == added {
				return o
			}
		case <-timeout:
			tb.Fatalf("no InterfacesAdded/Removed (added=%v) within 10s", added)
		}
	}
}

// BenchmarkEventToSignal measures, per connection, the time from the
// kernel's CREATED event (when an independent listener in the daemon's
// namespace received it) to the InterfacesAdded of its object (when a bus
// client received it). Both receive delays are in the figure. Connections
// are paced: each is closed, and its object gone, before the next. For
// scale, each connection is preceded by a Peer.Ping call to the daemon
// through the bus (two bus hops; a signal takes one), so that pings and
// connections see the same machine: ping-median-µs is the median round
// trip, and ratio-to-ping the median event→signal time over it. Run it
// with an iteration count (-benchtime 300x), as make bench-lab does.
func BenchmarkEventToSignal(b *testing.B) {
	lab := pmtest.NewLab(b, pmtest.LabOptions{ClientPM: "userspace", Paths: 1})
	bus := dbustest.StartBus(b, dbustest.SystemDefaults())
	kev := listenKernel(b, lab.Client)
	objs := watchObjects(b, bus)
	d := startDaemon(b, lab.Client, bus, "--log-level", "info")
	server := lab.Server.Serve(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))

	lat := make([]time.Duration, 0, b.N)
	pings := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		// For scale: a method call round trip to the daemon through the
		// bus, right before the connection.
		t0 := time.Now()
		if err := d.obj(dbusapi.ManagerPath).Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
			b.Fatalf("Ping: %v", err)
		}
		pings = append(pings, time.Since(t0))

		c := dialQuiet(b, lab.Client, server)
		added := nextObject(b, objs, true)
		created := lastCreated(b, kev, added.token)
		lat = append(lat, added.at.Sub(created.At))
		c.Close()
		if o := nextObject(b, objs, false); o.path != added.path {
			b.Fatalf("InterfacesRemoved %s, want %s", o.path, added.path)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	slices.Sort(pings)
	b.ReportMetric(us(lat[len(lat)/2]), "median-µs")
	b.ReportMetric(us(lat[(len(lat)*99)/100]), "p99-µs")
	b.ReportMetric(us(lat[len(lat)-1]), "max-µs")
	b.ReportMetric(us(pings[len(pings)/2]), "ping-median-µs")
	b.ReportMetric(float64(lat[len(lat)/2])/float64(pings[len(pings)/2]), "ratio-to-ping")
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// dialQuiet opens an MPTCP connection from h to remote without closing it at
// cleanup per connection (the benchmark closes it).
func dialQuiet(tb testing.TB, h *pmtest.Host, remote netip.AddrPort) net.Conn {
	tb.Helper()
	var c net.Conn
	err := h.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		c, err = d.Dial("tcp", remote.String())
		return err
	})
	if err != nil {
		tb.Fatalf("dial %s: %v", remote, err)
	}
	if _, err := c.Write([]byte("hello\n")); err != nil {
		tb.Fatalf("write: %v", err)
	}
	return c
}

// lastCreated returns the latest CREATED the listener received for token.
func lastCreated(tb testing.TB, k *kernelLog, token uint32) kernelEvent {
	tb.Helper()
	ev := k.wait(tb, fmt.Sprintf("CREATED of token %08x", token), func(ev pm.Event) bool {
		return ev.Type == pm.EventCreated && ev.Token == token
	})
	evs := k.events()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == pm.EventCreated && evs[i].Token == token {
			return evs[i]
		}
	}
	return ev
}

// procCPU returns the user plus system CPU time of a process.
func procCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14 and stime 15 (clock ticks of 1/100 s on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procMem returns a process's resident set size, its peak and its
// anonymous part (VmRSS, VmHWM, RssAnon), in kB. RssAnon leaves out the
// pages of the binary itself, which stay resident once the code has run.
func procMem(tb testing.TB, pid int) (rss, hwm, anon float64) {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		case "RssAnon:":
			anon = v
		}
	}
	return rss, hwm, anon
}

// BenchmarkConnections1000 opens 1000 MPTCP connections in the daemon's
// namespace, waits for their objects, closes them and waits for the
// objects to go, and reports the daemon's CPU time per 1000 connections
// and its memory: resident when idle before, with the 1000 open, right
// after they closed, and once the daemon has returned its unused heap
// (trimInterval later); the peak; and, when it runs more than
// one round (-benchtime 5x), the growth of RSS per round. The daemon runs
// with GODEBUG=madvdontneed=1 (Linux's default since Go 1.16, set to be
// sure) so that memory the Go runtime returns shows in RSS at once.
// anon-idle and anon-settled leave out the binary's own pages, which stay
// resident once its code has run: they are what must return to idle.
func BenchmarkConnections1000(b *testing.B) {
	const n = 1000
	lab := pmtest.NewLab(b, pmtest.LabOptions{ClientPM: "userspace", Paths: 1})
	bus := dbustest.StartBus(b, dbustest.SystemDefaults())
	objs := watchObjects(b, bus)
	d := launchDaemon(b, lab.Client, bus, daemonSpec{Args: []string{"--log-level", "info"}, Env: []string{"GODEBUG=madvdontneed=1"}})
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", d.pid())); strings.TrimSpace(string(comm)) != "mptcp-pmd" {
		b.Fatalf("process %d is %q, not mptcp-pmd", d.pid(), comm)
	}
	server := lab.Server.Serve(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	time.Sleep(time.Second) // the start's allocations settle
	idle, _, idleAnon := procMem(b, d.pid())

	var cpu time.Duration
	var open, closed, firstClosed float64
	b.ResetTimer()
	for i := range b.N {
		cpu0 := procCPU(b, d.pid())
		conns := make([]net.Conn, n)
		for i := range conns {
			conns[i] = dialQuiet(b, lab.Client, server)
		}
		for range n {
			nextObject(b, objs, true)
		}
		open, _, _ = procMem(b, d.pid())
		for _, c := range conns {
			c.Close()
		}
		for range n {
			nextObject(b, objs, false)
		}
		cpu += procCPU(b, d.pid()) - cpu0
		closed, _, _ = procMem(b, d.pid())
		if i == 0 {
			firstClosed = closed
		}
	}
	b.StopTimer()
	time.Sleep(trimInterval + 2*time.Second) // the daemon returns unused heap every trimInterval
	settled, hwm, settledAnon := procMem(b, d.pid())
	if left := d.managedObjects(b); len(left) != 0 {
		b.Errorf("%d objects left after closing every connection", len(left))
	}
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/1000conns")
	b.ReportMetric(idle, "rss-idle-kB")
	b.ReportMetric(open, "rss-open-kB")
	b.ReportMetric(closed, "rss-closed-kB")
	b.ReportMetric(settled, "rss-settled-kB")
	b.ReportMetric(hwm, "hwm-kB")
	b.ReportMetric(idleAnon, "anon-idle-kB")
	b.ReportMetric(settledAnon, "anon-settled-kB")
	if b.N > 1 {
		// Growth of the resident set from one round of 1000 to the next:
		// what stays behind per 1000 connections.
		b.ReportMetric((closed-firstClosed)/float64(b.N-1), "rss-growth-kB/1000conns")
	}
}
