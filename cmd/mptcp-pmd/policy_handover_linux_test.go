package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The handover policy with real traffic: a paced stream from the client
// (which runs the daemon) to the server over path 0 (cheap) with path 1
// expensive.

// hoStream is a paced stream of 1000-byte records, each with its sequence
// number, from a client to a server in a lab, and what the receiver saw.
type hoStream struct {
	conn net.Conn

	mu      sync.Mutex
	arrived []time.Time // arrival time of each record, by sequence number
	err     error       // a record out of order, or the connection's failure
}

const hoRecord = 1000

// startHoStream dials from path 0 to the server and sends a record every
// 4 ms (2 Mbit/s) until the test ends.
func startHoStream(t *testing.T, lab *pmtest.Lab) *hoStream {
	t.Helper()
	var ln net.Listener
	if err := lab.Server.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(lab.Server.Addrs4[0], 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &hoStream{}
	accepted := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		close(accepted)
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, hoRecord)
		for seq := uint64(0); ; seq++ {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			now := time.Now()
			s.mu.Lock()
			if got := binary.BigEndian.Uint64(buf); got != seq && s.err == nil {
				s.err = fmt.Errorf("record %d arrived as number %d", got, seq)
			}
			s.arrived = append(s.arrived, now)
			s.mu.Unlock()
		}
	}()
	s.conn = lab.Client.Dial(t, lab.Client.Addrs4[0], addrPortOf(t, ln.Addr()))
	<-accepted
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		tick := time.NewTicker(4 * time.Millisecond)
		defer tick.Stop()
		rec := make([]byte, hoRecord)
		for seq := uint64(0); ; seq++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(rec, seq)
			if _, err := s.conn.Write(rec); err != nil {
				s.mu.Lock()
				if s.err == nil {
					s.err = err
				}
				s.mu.Unlock()
				return
			}
		}
	}()
	return s
}

func addrPortOf(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// maxGap returns the longest time between two arrivals after from (or
// between from and the first arrival), and the number of records after
// from.
func (s *hoStream) maxGap(from time.Time) (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gap time.Duration
	prev, n := from, 0
	for _, at := range s.arrived {
		if at.Before(from) {
			continue
		}
		gap = max(gap, at.Sub(prev))
		prev = at
		n++
	}
	return gap, n
}

func (s *hoStream) check(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		t.Fatalf("the stream: %v", s.err)
	}
}

// hoBytes returns the bytes the peer acknowledged on each of the client's
// established subflows of the connection from local port lport, by local
// address.
func hoBytes(t *testing.T, dc *diag.Client, lport uint16) map[netip.Addr]uint64 {
	t.Helper()
	conns, err := dc.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]uint64{}
	for _, c := range conns.Conns {
		if c.Local.Port() != lport {
			continue
		}
		for _, sf := range c.Subflows {
			if sf.State == diag.StateEstablished {
				out[pm.CanonicalAddr(sf.Local.Addr())] += sf.TCP.BytesAcked
			}
		}
	}
	return out
}

// hoGrowth returns how many bytes each path carried over d.
func hoGrowth(t *testing.T, dc *diag.Client, lport uint16, d time.Duration) map[netip.Addr]uint64 {
	t.Helper()
	before := hoBytes(t, dc, lport)
	time.Sleep(d)
	after := hoBytes(t, dc, lport)
	out := map[netip.Addr]uint64{}
	for a, n := range after {
		if n >= before[a] {
			out[a] = n - before[a]
		}
	}
	return out
}

// hoWaitCarrying waits until the stream has moved to the subflow from
// local: it carries at least 40 kB within 200 ms (the stream's rate is
// 250 kB/s) and the subflow from other less than 2 kB; and returns when.
func hoWaitCarrying(t *testing.T, dc *diag.Client, lport uint16, local, other netip.Addr, limit time.Duration, what string) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if g := hoGrowth(t, dc, lport, 200*time.Millisecond); g[local] >= 40_000 && g[other] < 2_000 {
			return time.Now()
		} else if time.Now().After(deadline) {
			t.Fatalf("%s: the stream is not on %s alone within %v (last 200 ms: %v)", what, local, limit, g)
		}
	}
}

// blackhole points both ends' neighbour entries of path 0 at a MAC address
// nobody has (frames are dropped, the link stays up), or undoes it.
func blackhole(t *testing.T, lab *pmtest.Lab, on bool) {
	t.Helper()
	cli, srv := lab.Client, lab.Server
	if on {
		cli.Run(t, "ip", "neigh", "replace", srv.Addrs4[0].String(), "lladdr", "02:00:00:00:00:01", "dev", cli.Ifaces[0], "nud", "permanent")
		srv.Run(t, "ip", "neigh", "replace", cli.Addrs4[0].String(), "lladdr", "02:00:00:00:00:01", "dev", srv.Ifaces[0], "nud", "permanent")
		return
	}
	cli.Run(t, "ip", "neigh", "del", srv.Addrs4[0].String(), "dev", cli.Ifaces[0])
	srv.Run(t, "ip", "neigh", "del", cli.Addrs4[0].String(), "dev", srv.Ifaces[0])
}

// hoArgs are the daemon's arguments for the handover tests.
func hoArgs(t *testing.T, standby string) []string {
	return []string{"--policy", "handover", configArg(t, fmt.Sprintf(`
[handover]
standby = %q
stall_timeout = "150ms"
hysteresis = "2s"
[interfaces.c1]
preference = "expensive"
`, standby))}
}

func hoSetup(t *testing.T, standby string) (*pmtest.Lab, *testDaemon, *hoStream, *diag.Client, uint16) {
	t.Helper()
	s := newSetup(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	d := startDaemon(t, s.lab.Client, s.bus, hoArgs(t, standby)...)
	dc, err := diag.Dial(&diag.Config{NetNS: s.lab.Client.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	st := startHoStream(t, s.lab)
	return s.lab, d, st, dc, addrPortOf(t, st.conn.LocalAddr()).Port()
}

// TestHandoverWarm: the standby subflow on the expensive path carries
// nothing while the cheap one works; it carries the stream when path 0 is
// blackholed and when its carrier is lost; the stream moves back after the
// hysteresis; a preference set at run time applies to the live connection.
func TestHandoverWarm(t *testing.T) {
	lab, d, st, dc, lport := hoSetup(t, "warm")
	cheap, expensive := lab.Client.Addrs4[0], lab.Client.Addrs4[1]
	skev := listenKernel(t, lab.Server)

	eventually(t, 5*time.Second, "the warm standby subflow", func() bool {
		_, ok := hoBytes(t, dc, lport)[expensive]
		return ok
	})
	if g := hoGrowth(t, dc, lport, time.Second); g[cheap] < 200_000 || g[expensive] > 2_000 {
		t.Fatalf("while the cheap path works, one second carried %v: want the stream (250 kB) on %s and nothing on %s", g, cheap, expensive)
	}
	// mptcpctl top sees the same: the stream's rate on the active subflow,
	// nothing on the standby.
	out, _, code := ctl(t, d.bus, "--json", "top", "--count", "1")
	var top struct {
		Connections []struct {
			SentPerS float64 `json:"sent_bytes_per_s"`
			Subflows []struct {
				Local    string  `json:"local"`
				Standby  bool    `json:"standby"`
				SentPerS float64 `json:"sent_bytes_per_s"`
			} `json:"subflows"`
		} `json:"connections"`
	}
	if err := json.Unmarshal([]byte(out), &top); code != 0 || err != nil || len(top.Connections) != 1 {
		t.Fatalf("mptcpctl --json top --count 1 (exit %d, %v):\n%s", code, err, out)
	}
	for _, sf := range top.Connections[0].Subflows {
		if onCheap := strings.HasPrefix(sf.Local, cheap.String()+":"); onCheap == sf.Standby ||
			onCheap && (sf.SentPerS < 150e3 || sf.SentPerS > 400e3) || !onCheap && sf.SentPerS > 2e3 {
			t.Errorf("mptcpctl top: subflow %+v (the stream is 250 kB/s on %s)", sf, cheap)
		}
	}
	if testing.Verbose() {
		out, _, _ := ctl(t, d.bus, "top", "--count", "1")
		t.Logf("$ mptcpctl top --count 1\n%s", out)
	}

	for _, failure := range []string{"blackhole", "carrier"} {
		start := time.Now()
		if failure == "blackhole" {
			blackhole(t, lab, true)
		} else {
			lab.Server.Run(t, "ip", "link", "set", lab.Server.Ifaces[0], "down")
		}
		at := hoWaitCarrying(t, dc, lport, expensive, cheap, 5*time.Second, failure+": failover")
		gap, _ := st.maxGap(start)
		t.Logf("%s: the standby carries the stream %v after the failure; longest gap at the receiver %v",
			failure, at.Sub(start).Round(time.Millisecond), gap.Round(time.Millisecond))

		back := time.Now()
		if failure == "blackhole" {
			blackhole(t, lab, false)
		} else {
			lab.Server.Run(t, "ip", "link", "set", lab.Server.Ifaces[0], "up")
		}
		at = hoWaitCarrying(t, dc, lport, cheap, expensive, 15*time.Second, failure+": back")
		if at.Sub(back) < 2*time.Second {
			t.Errorf("%s: the stream moved back %v after the path came back, before the hysteresis (2 s)", failure, at.Sub(back))
		}
		if g := hoGrowth(t, dc, lport, time.Second); g[expensive] > 2_000 {
			t.Errorf("%s: back on the cheap path, the standby still carries %d bytes a second", failure, g[expensive])
		}
		gap, _ = st.maxGap(back)
		t.Logf("%s: back on the cheap path %v after it returned; longest gap since %v", failure,
			at.Sub(back).Round(time.Millisecond), gap.Round(time.Millisecond))
		st.check(t)
	}

	// The expensive path made cheap at run time: its subflow is promoted
	// (the server sees MP_PRIO) and carries traffic too; back to the
	// configured preference, it is demoted.
	from := len(skev.events())
	if err := d.obj(dbusapi.ManagerPath).Call(mgrMethod+"SetInterfacePreference", 0, "c1", "cheap").Err; err != nil {
		t.Fatal(err)
	}
	skev.waitFrom(t, from, "MP_PRIO not backup from c1", func(ev pm.Event) bool {
		return ev.Type == pm.EventSubPriority && ev.RemoteAddr.Unmap() == expensive && !ev.Backup
	})
	from = len(skev.events())
	if err := d.obj(dbusapi.ManagerPath).Call(mgrMethod+"SetInterfacePreference", 0, "c1", "").Err; err != nil {
		t.Fatal(err)
	}
	skev.waitFrom(t, from, "MP_PRIO backup from c1", func(ev pm.Event) bool {
		return ev.Type == pm.EventSubPriority && ev.RemoteAddr.Unmap() == expensive && ev.Backup
	})
	st.check(t)
}

// TestHandoverCold: no standby subflow while the cheap path works; one is
// made at the failure and carries the stream; it is closed once the cheap
// path is back for the hysteresis.
func TestHandoverCold(t *testing.T) {
	lab, _, st, dc, lport := hoSetup(t, "cold")
	cheap, expensive := lab.Client.Addrs4[0], lab.Client.Addrs4[1]
	time.Sleep(time.Second)
	if b := hoBytes(t, dc, lport); len(b) != 1 || b[cheap] == 0 {
		t.Fatalf("subflows while the cheap path works: %v, want only %s", b, cheap)
	}
	start := time.Now()
	blackhole(t, lab, true)
	at := hoWaitCarrying(t, dc, lport, expensive, cheap, 5*time.Second, "cold failover")
	gap, _ := st.maxGap(start)
	t.Logf("cold standby: carries the stream %v after the failure; longest gap %v", at.Sub(start).Round(time.Millisecond), gap.Round(time.Millisecond))
	blackhole(t, lab, false)
	hoWaitCarrying(t, dc, lport, cheap, expensive, 15*time.Second, "cold: back")
	eventually(t, 5*time.Second, "the cold standby closed", func() bool {
		_, ok := hoBytes(t, dc, lport)[expensive]
		return !ok
	})
	st.check(t)
}

// TestHandoverRestart: the daemon is killed (kill -9) while the standby
// carries the stream; the next one finds the connection as it was (the
// cheap subflow standing by, from the kernel's flags) and moves the stream
// back once the cheap path has returned and held for the hysteresis.
func TestHandoverRestart(t *testing.T) {
	lab, d, st, dc, lport := hoSetup(t, "warm")
	cheap, expensive := lab.Client.Addrs4[0], lab.Client.Addrs4[1]
	eventually(t, 5*time.Second, "the warm standby subflow", func() bool {
		_, ok := hoBytes(t, dc, lport)[expensive]
		return ok
	})
	blackhole(t, lab, true)
	hoWaitCarrying(t, dc, lport, expensive, cheap, 5*time.Second, "failover")
	d.kill9(t)
	d2 := startDaemon(t, lab.Client, d.bus, hoArgs(t, "warm")...)
	blackhole(t, lab, false)
	back := time.Now()
	at := hoWaitCarrying(t, dc, lport, cheap, expensive, 15*time.Second, "back after the restart")
	if at.Sub(back) < 2*time.Second {
		t.Errorf("the stream moved back %v after the path returned, before the hysteresis", at.Sub(back))
	}
	if g := hoGrowth(t, dc, lport, time.Second); g[expensive] > 2_000 {
		t.Errorf("back on the cheap path, the standby still carries %d bytes a second", g[expensive])
	}
	st.check(t)
	if strings.Contains(d2.log.String(), "level=ERROR") {
		t.Errorf("the restarted daemon logged errors:\n%s", d2.log.String())
	}
}
