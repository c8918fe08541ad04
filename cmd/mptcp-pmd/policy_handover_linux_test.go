package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The handover policy with real traffic: a paced stream from the client
// (which runs the daemon) to the server over path 0 (cheap) with path 1
// expensive. The stream and path 0's failures are make bench-handover's
// (handover_stream_linux_test.go).

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

// hoSetup starts a lab, the daemon with the handover policy, a sock_diag
// client in the client's namespace, and the stream, stopped and checked
// (nothing lost, nothing reordered) when the test ends. It returns the
// lab's path 0 failures and the stream's local port.
func hoSetup(t *testing.T, standby string) (*hbLab, *testDaemon, *hbStream, *diag.Client, uint16) {
	t.Helper()
	s := newSetup(t, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	d := startDaemon(t, s.lab.Client, s.bus, hoArgs(t, standby)...)
	dc, err := diag.Dial(&diag.Config{NetNS: s.lab.Client.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	ln := hbListen(t, s.lab.Server, s.lab.Server.Addrs4[0], true)
	st := startHBStream(t, s.lab.Client, s.lab.Client.Addrs4[0], ln, true)
	t.Cleanup(func() {
		if !t.Failed() {
			st.finish(t, "the stream")
		}
	})
	return newHBLab(t, s.lab), d, st, dc, st.local.Port()
}

// check fails the test if the stream went wrong so far.
func (s *hbStream) check(t *testing.T) {
	t.Helper()
	if err := s.errSoFar(); err != nil {
		t.Fatalf("the stream: %v", err)
	}
}

// TestHandoverWarm: the standby subflow on the expensive path carries
// nothing while the cheap one works; it carries the stream when path 0 is
// blackholed and when its carrier is lost; the stream moves back after the
// hysteresis; a preference set at run time applies to the live connection.
func TestHandoverWarm(t *testing.T) {
	hl, d, st, dc, lport := hoSetup(t, "warm")
	cheap, expensive := hl.lab.Client.Addrs4[0], hl.lab.Client.Addrs4[1]
	skev := listenKernel(t, hl.lab.Server)

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

	// usable waits until the daemon counts the cheap address as usable, or
	// not. A carrier change reaches user space when the kernel's linkwatch
	// runs, at most once a second for a device that is not "urgent" (a
	// physical NIC, or a veth whose peer in the other namespace has the
	// same index, as c0's has), and every veth made or removed by another
	// test on the machine makes it run: under make test the daemon heard
	// of a carrier loss only after the kernel had moved the stream by
	// itself, or not at all when the carrier came back first.
	usable := func(want bool) {
		t.Helper()
		eventually(t, 5*time.Second, fmt.Sprintf("LocalAddresses with %s: %v", cheap, want), func() bool {
			v, err := d.obj(dbusapi.ManagerPath).GetProperty(dbusapi.ManagerInterface + ".LocalAddresses")
			return err == nil && strings.Contains(fmt.Sprint(v.Value()), cheap.String()+"]") == want
		})
	}
	for _, failure := range []hbFailure{hbBlackhole, hbCarrier} {
		start := hl.fail(t, failure, true)
		if failure == hbCarrier {
			usable(false)
		}
		at := hoWaitCarrying(t, dc, lport, expensive, cheap, 5*time.Second, string(failure)+": failover")
		gap := st.gap(start, at)
		t.Logf("%s: the standby carries the stream %v after the failure; longest gap at the receiver %v",
			failure, at.Sub(start).Round(time.Millisecond), gap.Round(time.Millisecond))

		back := hl.fail(t, failure, false)
		if failure == hbCarrier {
			usable(true)
		}
		at = hoWaitCarrying(t, dc, lport, cheap, expensive, 15*time.Second, string(failure)+": back")
		if at.Sub(back) < 2*time.Second {
			t.Errorf("%s: the stream moved back %v after the path came back, before the hysteresis (2 s)", failure, at.Sub(back))
		}
		if g := hoGrowth(t, dc, lport, time.Second); g[expensive] > 2_000 {
			t.Errorf("%s: back on the cheap path, the standby still carries %d bytes a second", failure, g[expensive])
		}
		gap = st.gap(back, at)
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
	hl, _, st, dc, lport := hoSetup(t, "cold")
	cheap, expensive := hl.lab.Client.Addrs4[0], hl.lab.Client.Addrs4[1]
	time.Sleep(time.Second)
	if b := hoBytes(t, dc, lport); len(b) != 1 || b[cheap] == 0 {
		t.Fatalf("subflows while the cheap path works: %v, want only %s", b, cheap)
	}
	start := hl.fail(t, hbBlackhole, true)
	at := hoWaitCarrying(t, dc, lport, expensive, cheap, 5*time.Second, "cold failover")
	gap := st.gap(start, at)
	t.Logf("cold standby: carries the stream %v after the failure; longest gap %v", at.Sub(start).Round(time.Millisecond), gap.Round(time.Millisecond))
	hl.fail(t, hbBlackhole, false)
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
	hl, d, st, dc, lport := hoSetup(t, "warm")
	cheap, expensive := hl.lab.Client.Addrs4[0], hl.lab.Client.Addrs4[1]
	eventually(t, 5*time.Second, "the warm standby subflow", func() bool {
		_, ok := hoBytes(t, dc, lport)[expensive]
		return ok
	})
	hl.fail(t, hbBlackhole, true)
	hoWaitCarrying(t, dc, lport, expensive, cheap, 5*time.Second, "failover")
	d.kill9(t)
	d2 := startDaemon(t, hl.lab.Client, d.bus, hoArgs(t, "warm")...)
	back := hl.fail(t, hbBlackhole, false)
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
