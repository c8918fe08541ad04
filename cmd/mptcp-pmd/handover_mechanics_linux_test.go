package main

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

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// hbVariant is a sequence of userspace-PM commands a path manager can send
// once it knows that the active path failed.
type hbVariant struct {
	name string
	doc  string
	// run sends the commands for the connection with token: dead is the
	// failed initial subflow, standby the backup subflow on path 1, both
	// to remote. It returns the commands' errors, by command.
	run func(c *pmnl.Client, token uint32, dead, standby, remote netip.AddrPort) []string
}

// hbVariants are the sequences BenchmarkHandoverMechanics compares.
var hbVariants = []hbVariant{
	{"none", "nothing: the kernel alone", func(*pmnl.Client, uint32, netip.AddrPort, netip.AddrPort, netip.AddrPort) []string {
		return nil
	}},
	{"a", "standby backup=false", func(c *pmnl.Client, token uint32, dead, standby, remote netip.AddrPort) []string {
		return hbErrs("promote", c.SetSubflowFlags(token, standby, remote, 0))
	}},
	{"b", "standby backup=false, then destroy the dead initial subflow", func(c *pmnl.Client, token uint32, dead, standby, remote netip.AddrPort) []string {
		return append(hbErrs("promote", c.SetSubflowFlags(token, standby, remote, 0)),
			hbErrs("destroy", c.DestroySubflow(token, dead, remote))...)
	}},
	{"c", "dead backup=true, then standby backup=false", func(c *pmnl.Client, token uint32, dead, standby, remote netip.AddrPort) []string {
		return append(hbErrs("demote", c.SetSubflowFlags(token, dead, remote, pm.FlagBackup)),
			hbErrs("promote", c.SetSubflowFlags(token, standby, remote, 0))...)
	}},
	{"d", "destroy the dead initial subflow only (the standby stays backup)", func(c *pmnl.Client, token uint32, dead, standby, remote netip.AddrPort) []string {
		return hbErrs("destroy", c.DestroySubflow(token, dead, remote))
	}},
}

// hbErrs is the error of command what, as a list of zero or one entry.
func hbErrs(what string, err error) []string {
	if err == nil {
		return nil
	}
	return []string{what + ": " + err.Error()}
}

// hbMechTrial is one variant's result.
type hbMechTrial struct {
	resume  time.Duration // from T until the first new record at the receiver
	gap     time.Duration // the longest gap from T until the stream kept up again
	capped  bool
	lagAtT  time.Duration // how far behind the receiver was at T
	unacked uint32        // segments outstanding on the dead subflow at T
	retrans uint64        // data-level bytes retransmitted from T to the end of the window
	errs    []string      // the commands' refusals
	cmds    time.Duration // the commands' own time
}

// BenchmarkHandoverMechanics is a study for the handover policy, without
// the daemon: which userspace path-manager commands, sent once the active
// path is known to have failed, give the receiver of a paced stream the
// shortest gap. On a lab whose client has the userspace path manager, a
// 2 Mbit/s stream (as BenchmarkHandover's) runs over a connection whose
// initial subflow is on path 0, with a backup subflow on path 1 made with
// SUBFLOW_CREATE; path 0 is blackholed, and after a delay (the time a path
// manager needs to notice; HANDOVER_MECH_DELAYS, default 150ms,300ms:
// before and after the MPTCP-level retransmission timer's first expiry), at
// T, one of hbVariants is sent (pm/pmnl in the client's namespace). It
// reports, per variant and delay, the time from T until the receiver gets
// a new record (the data stuck on the dead subflow must come first: this
// shows whether it is re-sent on the standby at once or only when the
// MPTCP-level retransmission timer fires) and the longest gap from T until
// the stream has kept up for 500 ms (at most 5 s). Variants are
// interleaved, HANDOVER_MECH_ROUNDS rounds (default 3). Run it with make
// bench-handover.
func BenchmarkHandoverMechanics(b *testing.B) {
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("HANDOVER_MECH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	delays := []time.Duration{150 * time.Millisecond, 300 * time.Millisecond}
	if v := os.Getenv("HANDOVER_MECH_DELAYS"); v != "" {
		delays = nil
		for _, f := range strings.Split(v, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("HANDOVER_MECH_DELAYS=%q: %v", v, err)
			}
			delays = append(delays, d)
		}
	}

	lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	for _, h := range []*pmtest.Host{lab.Client, lab.Server} {
		h.Run(b, "ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
	}
	l := newHBLab(b, lab)
	ln := hbListen(b, lab.Server, lab.Server.Addrs4[0], true)
	// A listener of the path manager's events, as a daemon would have.
	listenKernel(b, lab.Client)
	nl, err := pmnl.Dial(&pmnl.Config{NetNS: lab.Client.NSFD()})
	if err != nil {
		b.Fatalf("mptcp_pm netlink in %s: %v", lab.Client.Name, err)
	}
	b.Cleanup(func() { nl.Close() })
	dc, err := diag.Dial(&diag.Config{NetNS: lab.Client.NSFD()})
	if err != nil {
		b.Fatalf("sock_diag in %s: %v", lab.Client.Name, err)
	}
	b.Cleanup(func() { dc.Close() })

	results := map[string][]hbMechTrial{} // by variant and delay
	key := func(v hbVariant, d time.Duration) string { return v.name + " " + d.String() }
	for b.Loop() {
		for r := range rounds {
			for di, d := range delays {
				for j := range hbVariants {
					v := hbVariants[(r+di+j)%len(hbVariants)]
					what := fmt.Sprintf("variant %s, delay %v, round %d", v.name, d, r)
					results[key(v, d)] = append(results[key(v, d)], hbMechanics(b, l, ln, nl, dc, v, d, what))
				}
			}
		}
	}

	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond)) }
	var out strings.Builder
	fmt.Fprintf(&out, "%d rounds; userspace PM, no daemon; path 0 blackholed, the commands sent at T = the failure + delay;\n", rounds)
	fmt.Fprintf(&out, "resume: ms from T until the receiver got a new record; gap: the longest ms without one from T until the stream kept up\n")
	fmt.Fprintf(&out, "(at most %v); lag at T: how far behind the receiver was at T; retrans kB: data-level retransmissions from T on\n\n", hbFailBound)
	fmt.Fprintf(&out, "%-7s %-6s %10s %10s %8s %8s %9s %11s  %s\n", "variant", "delay", "resume p50", "resume max",
		"gap p50", "gap max", "lag at T", "retrans kB", "commands")
	for _, d := range delays {
		for _, v := range hbVariants {
			ts := results[key(v, d)]
			if len(ts) == 0 {
				continue
			}
			res := func(t hbMechTrial) (time.Duration, bool, bool) { return t.resume, false, true }
			gap := func(t hbMechTrial) (time.Duration, bool, bool) { return t.gap, t.capped, true }
			r50, rmax := hbMechStats(ts, res)
			g50, gmax := hbMechStats(ts, gap)
			var lag []time.Duration
			var kb []float64
			errs := map[string]bool{}
			for _, t := range ts {
				lag = append(lag, t.lagAtT)
				kb = append(kb, float64(t.retrans)/1000)
				for _, e := range t.errs {
					errs[e] = true
				}
			}
			slices.Sort(lag)
			slices.Sort(kb)
			note := v.doc
			if len(errs) > 0 {
				note += "; refused: " + strings.Join(slices.Sorted(func(yield func(string) bool) {
					for e := range errs {
						if !yield(e) {
							return
						}
					}
				}), "; ")
			}
			fmt.Fprintf(&out, "%-7s %-6s %10s %10s %8s %8s %9s %11.1f  %s\n", v.name, d, r50, rmax, g50, gmax,
				ms(lag[len(lag)/2]), kb[len(kb)/2], note)
			b.ReportMetric(float64(g50.d)/float64(time.Millisecond), v.name+"-"+d.String()+"-gap-p50-ms")
		}
	}
	b.Log("\n" + out.String())
}

// hbMechStats is hbStats for mechanics trials.
func hbMechStats(ts []hbMechTrial, get func(hbMechTrial) (time.Duration, bool, bool)) (median, worst hbStat) {
	conv := make([]hbTrial, 0, len(ts))
	for _, t := range ts {
		d, capped, _ := get(t)
		conv = append(conv, hbTrial{gap: d, capped: capped})
	}
	return hbStats(conv, func(t hbTrial) (time.Duration, bool, bool) { return t.gap, t.capped, true })
}

// hbMechanics runs one trial: a stream with a backup subflow on path 1,
// path 0 blackholed, variant v sent delay later.
func hbMechanics(b *testing.B, l *hbLab, ln net.Listener, nl *pmnl.Client, dc *diag.Client, v hbVariant, delay time.Duration, what string) hbMechTrial {
	b.Helper()
	lab := l.lab
	remote := addrPort(b, ln.Addr())
	s := startHBStream(b, lab.Client, lab.Client.Addrs4[0], ln, true)
	p := startHBPaths(b, dc, lab, s.local)
	defer p.end()

	// The connection's token, once the kernel lists it.
	var token uint32
	eventually(b, 5*time.Second, what+": the connection in sock_diag", func() bool {
		snap, err := dc.Snapshot()
		if err != nil {
			b.Fatalf("%s: sock_diag: %v", what, err)
		}
		for _, c := range snap.Conns {
			if c.Local == s.local && c.Token != 0 {
				token = c.Token
				return true
			}
		}
		return false
	})
	// The standby: a backup subflow from path 1 (refused until the
	// connection is fully established: retried).
	standbyAddr := pm.Address{Addr: lab.Client.Addrs4[1], Flags: pm.FlagBackup}
	var createErr error
	deadline := time.Now().Add(5 * time.Second)
	for createErr = nl.CreateSubflow(token, standbyAddr, remote); createErr != nil; createErr = nl.CreateSubflow(token, standbyAddr, remote) {
		if time.Now().After(deadline) {
			b.Fatalf("%s: SUBFLOW_CREATE of the standby from %s to %s: %v", what, standbyAddr.Addr, remote, createErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var standby netip.AddrPort
	eventually(b, 5*time.Second, what+": the standby subflow established", func() bool {
		up, _ := p.established(1)
		for _, sf := range p.last().subflows {
			if up && sf.Local.Addr().Unmap() == lab.Client.Addrs4[1] {
				standby = netip.AddrPortFrom(sf.Local.Addr().Unmap(), sf.Local.Port())
			}
		}
		return up
	})
	if _, backup := p.established(1); !backup {
		if err := nl.SetSubflowFlags(token, standby, remote, pm.FlagBackup); err != nil {
			b.Fatalf("%s: make the standby backup: %v", what, err)
		}
	}
	time.Sleep(hbWarmUp)
	if _, ok := hbSteady(s, time.Now(), 0, 5*time.Second, nil); !ok {
		b.Fatalf("%s: the stream does not keep up before the failure", what)
	}
	if now := time.Now(); p.carried(1, now.Add(-500*time.Millisecond), now) > 5000 {
		b.Logf("%s: the standby carries data before the failure: %s", what, p.describe())
	}
	failed := l.fail(b, hbBlackhole, true)
	time.Sleep(time.Until(failed.Add(delay)))
	var t hbMechTrial
	before := p.last().info.BytesRetrans
	for _, sf := range p.last().subflows {
		if sf.Local == s.local {
			t.unacked = sf.TCP.Unacked
		}
	}
	at := time.Now()
	t.lagAtT = s.lag(at)
	t.errs = v.run(nl, token, s.local, standby, remote)
	t.cmds = time.Since(at)
	end, ok := hbSteady(s, at, time.Second, hbFailBound, nil)
	t.gap, t.capped = s.gap(at, end), !ok
	if first, _, ok := s.firstAfter(at); ok {
		t.resume = first.Sub(at)
	} else {
		t.resume = end.Sub(at)
	}
	t.retrans = p.last().info.BytesRetrans - before
	b.Logf("%s: resume %v, gap %v%s, lag at T %v, %d segments outstanding on the dead subflow, %d bytes retransmitted at the data level, commands %v %v; %s",
		what, t.resume.Round(time.Millisecond), t.gap.Round(time.Millisecond), capMark(t.capped), t.lagAtT.Round(time.Millisecond),
		t.unacked, t.retrans, t.cmds.Round(time.Microsecond), t.errs, p.describe())
	l.fail(b, hbBlackhole, false)
	s.finish(b, what)
	return t
}
