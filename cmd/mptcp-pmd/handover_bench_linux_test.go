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

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// The bounds of BenchmarkHandover's windows.
const (
	hbWarmUp     = time.Second             // the stream flows this long before a failure
	hbFailMin    = 1500 * time.Millisecond // a failure's window lasts at least this long
	hbFailBound  = 5 * time.Second         // and at most this long
	hbHysteresis = 3 * time.Second         // the handover policy's, in its configuration
	hbBackBound  = hbHysteresis + 5*time.Second
)

// hbStallTimeout is the handover policy's stall_timeout in the benchmark:
// HANDOVER_STALL, default 60ms (the lab's round trip is 0.1 ms).
func hbStallTimeout() string {
	if s := os.Getenv("HANDOVER_STALL"); s != "" {
		return s
	}
	return "60ms"
}

// hbMode is one way of managing the paths in BenchmarkHandover, on a lab
// of its own (two paths).
type hbMode struct {
	name    string
	mptcp   bool
	standby bool // a backup subflow on path 1 is up before the failure
	lab     *hbLab
	ln      net.Listener // the server's
	dc      *diag.Client // sock_diag in the client's namespace (MPTCP modes)
	d       *testDaemon  // the daemon, for the handover modes
	trials  map[hbFailure][]hbTrial
}

// hbTrial is what one failure of path 0 did to one stream.
type hbTrial struct {
	gap       time.Duration // the longest time without a new record from the failure until the stream was steady
	capped    bool          // the stream was not steady at the bound: gap is a lower bound
	failover  time.Duration // from the failure until path 1 carried the stream (MPTCP modes)
	failedTo  bool          // path 1 carried the stream at some point
	standbyKB float64       // kB path 1 carried in the failure's window

	backGap    time.Duration // the longest gap from the restore until the stream was back on path 0 and steady
	backCapped bool          // not back or not steady at the bound
	backAfter  time.Duration // from the restore until path 0 carried the stream
	movedBack  bool
	path0KB    float64 // kB each path carried over the whole trial
	path1KB    float64
}

// BenchmarkHandover measures, at the receiver of a paced stream (2 Mbit/s:
// 1000-byte records every 4 ms, each with its sequence number and due time)
// sent by a client over one connection whose initial subflow is on path 0,
// the longest time without new in-order data when path 0 fails, and when it
// comes back. Failures: the carrier (the server's end of path 0 set down, so
// the client's interface loses its carrier) and a blackhole (each end's
// neighbour entry for the other pointed at a MAC address nobody has; the
// links stay up). Modes, each on a lab of its own:
//
//   - tcp: plain TCP over path 0; its gap lasts until the path comes back
//     (shown as ">=" the window's bound);
//   - kernel: the in-kernel path manager at both ends, a backup subflow
//     endpoint on the client's path 1 (the kernel's scheduler moves to a
//     backup subflow once the active one is stale);
//   - handover-warm and handover-cold: the built daemon in the client's
//     namespace with the handover policy (path 1 expensive, stall timeout
//     150 ms, hysteresis 3 s), the server's in-kernel path manager accepting
//     the joins.
//
// Every trial is a new connection: the stream flows a second (the standby
// subflow checked up in the kernel and warm modes), path 0 fails; the
// failure's window lasts until the stream has kept up for 500 ms (at least
// 1.5 s, at most 5 s); then path 0 is restored, and the way back's window
// lasts until path 0 carries the stream again and it keeps up (at most the
// hysteresis plus 5 s). Then the sender stops and the receiver must have
// every record, in order. The byte counts by path come from sock_diag
// (acknowledged bytes of every subflow, sampled every 50 ms). Modes are
// interleaved trial by trial, HANDOVER_ROUNDS rounds (default 3) of every
// failure; HANDOVER_MODES (comma-separated names) runs some modes only;
// HANDOVER_LOG=1 shows the daemon's log of each trial.
//
// It prints, per failure and mode, the median and worst gap and their
// ratios to the kernel mode's, when path 1 carried the stream, and for
// the way back the gap, when path 0 carried the stream again and in how
// many trials it did. Run it with make bench-handover.
func BenchmarkHandover(b *testing.B) {
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("HANDOVER_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	want := map[string]bool{}
	for _, n := range strings.Split(os.Getenv("HANDOVER_MODES"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	selected := func(name string) bool { return len(want) == 0 || want[name] }
	failures := []hbFailure{hbCarrier, hbBlackhole}

	newMode := func(name, clientPM string, mptcp bool) *hbMode {
		lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 2, ClientPM: clientPM})
		m := &hbMode{name: name, mptcp: mptcp, lab: newHBLab(b, lab), trials: map[hbFailure][]hbTrial{}}
		m.ln = hbListen(b, lab.Server, lab.Server.Addrs4[0], mptcp)
		if mptcp {
			for _, h := range []*pmtest.Host{lab.Client, lab.Server} {
				h.Run(b, "ip", "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
			}
			dc, err := diag.Dial(&diag.Config{NetNS: lab.Client.NSFD()})
			if err != nil {
				b.Fatalf("sock_diag in %s: %v", lab.Client.Name, err)
			}
			b.Cleanup(func() { dc.Close() })
			m.dc = dc
		}
		return m
	}
	var modes []*hbMode
	var kernel *hbMode
	if selected("tcp") {
		modes = append(modes, newMode("tcp", "kernel", false))
	}
	if selected("kernel") {
		kernel = newMode("kernel", "kernel", true)
		kernel.standby = true
		cli := kernel.lab.lab.Client
		cli.Run(b, "ip", "mptcp", "endpoint", "add", cli.Addrs4[1].String(), "dev", cli.Ifaces[1], "subflow", "backup")
		modes = append(modes, kernel)
	}
	for _, standby := range []string{"warm", "cold"} {
		name := "handover-" + standby
		if !selected(name) {
			continue
		}
		m := newMode(name, "userspace", true)
		m.standby = standby == "warm"
		bus := dbustest.StartBus(b, dbustest.SystemDefaults())
		m.d = startDaemon(b, m.lab.lab.Client, bus, "--policy", "handover", "--log-level", "info", configArg(b, fmt.Sprintf(`
policy = "handover"
[handover]
standby = %q
stall_timeout = %q
hysteresis = %q
[interfaces.c1]
preference = "expensive"
`, standby, hbStallTimeout(), hbHysteresis)))
		modes = append(modes, m)
	}
	if len(modes) == 0 {
		b.Fatalf("HANDOVER_MODES=%q names no mode (tcp, kernel, handover-warm, handover-cold)", os.Getenv("HANDOVER_MODES"))
	}

	for b.Loop() {
		for r := range rounds {
			for fi, f := range failures {
				// Each mode in turn, starting with another one each time.
				for j := range modes {
					m := modes[(r+fi+j)%len(modes)]
					what := fmt.Sprintf("%s, %s, round %d", m.name, f, r)
					t := m.trial(b, f, what)
					m.trials[f] = append(m.trials[f], t)
				}
			}
		}
	}

	b.Log("\n" + hbTable(b, modes, kernel, failures, rounds))
}

// trial runs one stream in m's lab through failure f of path 0 and its
// restoration.
func (m *hbMode) trial(b *testing.B, f hbFailure, what string) hbTrial {
	b.Helper()
	lab := m.lab.lab
	s := startHBStream(b, lab.Client, lab.Client.Addrs4[0], m.ln, m.mptcp)
	var p *hbPaths
	if m.mptcp {
		p = startHBPaths(b, m.dc, lab, s.local)
		defer p.end()
	}
	start := time.Now()
	logFrom := 0
	if m.d != nil {
		logFrom = len(m.d.log.String())
	}
	defer func() {
		if m.d != nil && os.Getenv("HANDOVER_LOG") != "" {
			b.Logf("%s: the daemon's log:\n%s", what, m.d.log.String()[logFrom:])
		}
	}()

	// Before the failure: the stream flows on path 0, the standby subflow
	// (kernel, warm) is up and a backup.
	time.Sleep(hbWarmUp)
	if p != nil {
		deadline := start.Add(5 * time.Second)
		for {
			up, backup := p.established(1)
			if !m.standby && up {
				b.Fatalf("%s: a subflow on path 1 before the failure, and this mode has no standby: %s", what, p.describe())
			}
			if !m.standby || up && backup {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: no backup subflow on path 1 5 s after the connection: %s", what, p.describe())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, ok := hbSteady(s, time.Now(), 0, 5*time.Second, nil); !ok {
		b.Fatalf("%s: the stream does not keep up before the failure (lag %v)", what, s.lag(time.Now()))
	}
	if p != nil {
		now := time.Now()
		if kb := p.carried(1, now.Add(-500*time.Millisecond), now); kb > 5000 {
			b.Logf("%s: path 1 carried %d bytes in the 500 ms before the failure (a standby should carry nothing)", what, kb)
		}
	}

	var t hbTrial
	failed := m.lab.fail(b, f, true)
	end, ok := hbSteady(s, failed, hbFailMin, hbFailBound, nil)
	t.gap, t.capped = s.gap(failed, end), !ok
	if p != nil {
		t.standbyKB = float64(p.carried(1, failed, end)) / 1000
		if at, ok := p.carryingFrom(1, failed); ok && !at.After(end) {
			t.failover, t.failedTo = at.Sub(failed), true
		}
	}

	restored := m.lab.fail(b, f, false)
	back := func(now time.Time) bool {
		if p == nil {
			return true
		}
		ok, start := p.carrying(0, now)
		return ok && !start.Before(restored)
	}
	end, ok = hbSteady(s, restored, 0, hbBackBound, back)
	t.backGap, t.backCapped = s.gap(restored, end), !ok
	if p != nil {
		if at, ok := p.carryingFrom(0, restored); ok {
			t.backAfter, t.movedBack = at.Sub(restored), true
		}
	} else if at, _, ok := s.firstAfter(restored); ok {
		t.backAfter, t.movedBack = at.Sub(restored), true
	}
	if f == hbCarrier {
		m.lab.waitCarrier(b)
	}
	if p != nil {
		last := p.last()
		t.path0KB, t.path1KB = float64(last.bytes[0])/1000, float64(last.bytes[1])/1000
		b.Logf("%s: gap %v%s, path 1 carried the stream %v after the failure (%.0f kB in the window); back: gap %v, path 0 carried it %v after the restore (moved back %v); kB by path 0/1 %.0f/%.0f; data-level retransmissions %d (%d bytes); %s",
			what, t.gap.Round(time.Millisecond), capMark(t.capped), t.failover.Round(time.Millisecond), t.standbyKB,
			t.backGap.Round(time.Millisecond), t.backAfter.Round(time.Millisecond), t.movedBack,
			t.path0KB, t.path1KB, last.info.Retransmits, last.info.BytesRetrans, p.describe())
	} else {
		b.Logf("%s: gap %v%s; back: gap %v, the first record %v after the restore", what,
			t.gap.Round(time.Millisecond), capMark(t.capped), t.backGap.Round(time.Millisecond), t.backAfter.Round(time.Millisecond))
	}
	s.finish(b, what)
	return t
}

// capMark is " (bound)" for a figure that is a lower bound.
func capMark(capped bool) string {
	if capped {
		return " (bound)"
	}
	return ""
}

// hbStat is a median or worst of trials, and whether it is a lower bound.
type hbStat struct {
	d      time.Duration
	capped bool
	ok     bool // there was a value
}

func (s hbStat) String() string {
	if !s.ok {
		return "-"
	}
	ms := fmt.Sprintf("%.0f", float64(s.d)/float64(time.Millisecond))
	if s.capped {
		return ">=" + ms
	}
	return ms
}

// ratio formats s/k, ">=" when s is a lower bound, "?" when k is one.
func (s hbStat) ratio(k hbStat) string {
	if !s.ok || !k.ok || k.d == 0 {
		return "-"
	}
	r := fmt.Sprintf("%.2f", float64(s.d)/float64(k.d))
	switch {
	case k.capped:
		return "?"
	case s.capped:
		return ">=" + r
	}
	return r
}

// hbStats returns the median and the worst of the values get picks from
// the trials (those it reports ok).
func hbStats(trials []hbTrial, get func(hbTrial) (time.Duration, bool, bool)) (median, worst hbStat) {
	var v []hbStat
	for _, t := range trials {
		if d, capped, ok := get(t); ok {
			v = append(v, hbStat{d, capped, true})
		}
	}
	if len(v) == 0 {
		return hbStat{}, hbStat{}
	}
	slices.SortFunc(v, func(a, b hbStat) int { return int(a.d - b.d) })
	return v[len(v)/2], v[len(v)-1]
}

// hbTable formats the results.
func hbTable(b *testing.B, modes []*hbMode, kernel *hbMode, failures []hbFailure, rounds int) string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond)) }
	gapOf := func(t hbTrial) (time.Duration, bool, bool) { return t.gap, t.capped, true }
	backOf := func(t hbTrial) (time.Duration, bool, bool) { return t.backGap, t.backCapped, true }
	failoverOf := func(t hbTrial) (time.Duration, bool, bool) { return t.failover, false, t.failedTo }
	returnOf := func(t hbTrial) (time.Duration, bool, bool) { return t.backAfter, false, t.movedBack }
	kstats := func(f hbFailure, get func(hbTrial) (time.Duration, bool, bool)) (hbStat, hbStat) {
		if kernel == nil {
			return hbStat{}, hbStat{}
		}
		return hbStats(kernel.trials[f], get)
	}

	var out strings.Builder
	fmt.Fprintf(&out, "%d rounds; a 2 Mbit/s stream (1000-byte records every 4 ms) from the client over one connection, its initial subflow on path 0\n", rounds)
	fmt.Fprintf(&out, "gap: ms without a new in-order record at the receiver, from path 0's failure until the stream kept up again (at most %v);\n", hbFailBound)
	fmt.Fprintf(&out, "to path 1: ms from the failure until path 1 carried the stream (the start of the first %v in which path 1 carried\n", hbMoveWindow)
	fmt.Fprintf(&out, "80%% of its bytes and path 0 at most 20%%, as acknowledged at the TCP level); path1 kB: carried by path 1 in the window\n\n")
	fmt.Fprintf(&out, "%-10s %-14s %8s %8s %10s %10s %10s %8s  %s\n", "failure", "mode", "gap p50", "gap max",
		"p50/kernel", "max/kernel", "to path 1", "path1 kB", "gap per round")
	for _, f := range failures {
		k50, kmax := kstats(f, gapOf)
		for _, m := range modes {
			p50, worst := hbStats(m.trials[f], gapOf)
			fo, _ := hbStats(m.trials[f], failoverOf)
			var each []string
			var kb []float64
			for _, t := range m.trials[f] {
				each = append(each, hbStat{t.gap, t.capped, true}.String())
				kb = append(kb, t.standbyKB)
			}
			slices.Sort(kb)
			kbs := "-"
			if m.mptcp && len(kb) > 0 {
				kbs = fmt.Sprintf("%.0f", kb[len(kb)/2])
			}
			fmt.Fprintf(&out, "%-10s %-14s %8s %8s %10s %10s %10s %8s  %s\n", f, m.name, p50, worst,
				p50.ratio(k50), worst.ratio(kmax), fo, kbs, strings.Join(each, " "))
			if p50.ok {
				b.ReportMetric(float64(p50.d)/float64(time.Millisecond), m.name+"-"+string(f)+"-gap-p50-ms")
			}
		}
	}
	fmt.Fprintf(&out, "\nthe way back: path 0 restored; gap: ms without a new record from the restore until path 0 carried the stream\n")
	fmt.Fprintf(&out, "again and it kept up (at most %v); back after: ms from the restore until path 0 carried the stream (likewise)\n\n", hbBackBound)
	fmt.Fprintf(&out, "%-10s %-14s %8s %8s %10s %10s %10s %6s  %s\n", "restored", "mode", "gap p50", "gap max",
		"p50/kernel", "back p50", "back max", "back", "back after, per round")
	for _, f := range failures {
		k50, _ := kstats(f, backOf)
		for _, m := range modes {
			p50, worst := hbStats(m.trials[f], backOf)
			r50, rmax := hbStats(m.trials[f], returnOf)
			moved := 0
			var each []string
			for _, t := range m.trials[f] {
				if t.movedBack {
					moved++
					each = append(each, ms(t.backAfter))
				} else {
					each = append(each, "no")
				}
			}
			fmt.Fprintf(&out, "%-10s %-14s %8s %8s %10s %10s %10s %6s  %s\n", f, m.name, p50, worst, p50.ratio(k50),
				r50, rmax, fmt.Sprintf("%d/%d", moved, len(m.trials[f])), strings.Join(each, " "))
		}
	}
	fmt.Fprintf(&out, "\nkB carried by path 0 / path 1 over each trial (medians): ")
	var parts []string
	for _, m := range modes {
		if !m.mptcp {
			continue
		}
		var p0, p1 []float64
		for _, f := range failures {
			for _, t := range m.trials[f] {
				p0, p1 = append(p0, t.path0KB), append(p1, t.path1KB)
			}
		}
		slices.Sort(p0)
		slices.Sort(p1)
		if len(p0) > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f/%.0f", m.name, p0[len(p0)/2], p1[len(p1)/2]))
		}
	}
	out.WriteString(strings.Join(parts, ", ") + "\n")
	return out.String()
}

// BenchmarkHandoverIdle measures what the handover policy costs a laptop
// that holds connections and sends nothing: the daemon's CPU time per
// second with HANDOVER_IDLE_CONNS (default 4) idle connections under the
// handover policy, whose prober looks at their subflows every
// stall_timeout/3 (67 ms by default), against the same connections under
// subflow-per-interface (no prober), both daemons running at once, each
// in its lab (two paths, the second expensive: every connection has a
// standby subflow).
func BenchmarkHandoverIdle(b *testing.B) {
	n := 4
	if v, err := strconv.Atoi(os.Getenv("HANDOVER_IDLE_CONNS")); err == nil && v > 0 {
		n = v
	}
	type mode struct {
		name string
		pid  int
		cpu  time.Duration
	}
	var modes []*mode
	for _, policy := range []string{"handover", "subflow-per-interface"} {
		lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
		bus := dbustest.StartBus(b, dbustest.SystemDefaults())
		d := startDaemon(b, lab.Client, bus, "--policy", policy, "--log-level", "warn",
			configArg(b, "[interfaces.c1]\npreference = \"expensive\"\n"))
		server := lab.Server.StartServer(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
		for range n {
			c := dial(b, lab.Client, lab.Client.Addrs4[0], server)
			b.Cleanup(func() { c.Close() })
		}
		dc, err := diag.Dial(&diag.Config{NetNS: lab.Client.NSFD()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { dc.Close() })
		eventually(b, 10*time.Second, policy+": two subflows per connection", func() bool {
			sfs, err := dc.ListSubflows(nil, diag.States(diag.StateEstablished))
			return err == nil && len(sfs) == 2*n
		})
		modes = append(modes, &mode{name: policy, pid: d.pid()})
	}
	const window = 10 * time.Second
	for b.Loop() {
		for _, m := range modes {
			c, _ := cpuTime(b, m.pid, 0)
			m.cpu = -c
		}
		time.Sleep(window)
		for _, m := range modes {
			c, _ := cpuTime(b, m.pid, 0)
			m.cpu += c
		}
	}
	per := func(m *mode) float64 { return float64(m.cpu.Microseconds()) / window.Seconds() }
	for _, m := range modes {
		b.ReportMetric(per(m), m.name+"-cpu-µs/s")
	}
	b.ReportMetric(per(modes[0])/per(modes[1]), "handover/subflow-per-interface")
	b.Logf("%d idle connections: handover %.0f µs of CPU per second, subflow-per-interface %.0f", n, per(modes[0]), per(modes[1]))
}
