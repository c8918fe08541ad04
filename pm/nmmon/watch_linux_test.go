package nmmon_test

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon"
	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon/nmtest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// await returns the first state from w that satisfies ok, failing the test
// after timeout, and how long it took.
func await(t *testing.T, w *nmmon.Watcher, timeout time.Duration, what string, ok func(nmmon.State) bool) (nmmon.State, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	var last nmmon.State
	for {
		select {
		case s, open := <-w.States():
			if !open {
				t.Fatalf("waiting for %s: the watcher stopped: %v", what, w.Err())
			}
			if ok(s) {
				return s, time.Since(start)
			}
			last = s
		case <-deadline:
			t.Fatalf("waiting for %s: not within %v; last state: %v", what, timeout, last)
		}
	}
}

// watch starts a watcher on a connection of its own, stopped when the
// test ends.
func watch(t *testing.T, bus *dbustest.Bus, log *slog.Logger) *nmmon.Watcher {
	t.Helper()
	conn := bus.Dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := nmmon.Watch(ctx, conn, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		for range w.States() {
		}
	})
	return w
}

// TestWatchNetworkManager follows a real NetworkManager that manages two of
// the three paths of a lab's client: started after the watcher, profiles
// with MPTCP flags and metered set, a deactivation, a stop and a restart.
func TestWatchNetworkManager(t *testing.T) {
	nmtest.Require(t)
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 3})
	cli := lab.Client
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), nmtest.Policy())
	var logs pmtest.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	w := watch(t, bus, logger)

	s, _ := await(t, w, 5*time.Second, "the first state", func(nmmon.State) bool { return true })
	if s.Running || len(s.Devices) != 0 {
		t.Fatalf("first state before NetworkManager runs: %v", s)
	}

	t0 := time.Now()
	nm := nmtest.Start(t, cli, bus, nmtest.Options{Managed: []string{"c0", "c1"}})
	started := time.Since(t0)
	s, d := await(t, w, 2*time.Second, "running with c0 and c1 managed", func(s nmmon.State) bool {
		return s.Running && s.Devices["c0"].Managed && s.Devices["c1"].Managed
	})
	t.Logf("NetworkManager started in %v; the watcher saw it %v after start-up ended (%v after the start)",
		started.Round(time.Millisecond), d.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	for _, name := range []string{"c2", "lo"} {
		if dev, ok := s.Devices[name]; !ok || dev.Managed || dev.Activated || dev.MPTCP.Known {
			t.Errorf("%s: %v, %v: want an unmanaged device", name, dev, ok)
		}
	}

	// Profile a on c0: subflow endpoints, metered.
	nm.Nmcli(t, "connection", "add", "type", "ethernet", "con-name", "a", "ifname", "c0", "autoconnect", "no",
		"ipv4.method", "manual", "ipv4.addresses", cli.Addrs4[0].String()+"/24", "ipv6.method", "disabled",
		"connection.mptcp-flags", "subflow,also-without-default-route", "connection.metered", "yes")
	t1 := time.Now()
	nm.Nmcli(t, "connection", "up", "a")
	s, d = await(t, w, 5*time.Second, "c0 activated", func(s nmmon.State) bool { return s.Devices["c0"].Activated })
	t.Logf("c0 activated: seen %v after nmcli connection up returned (%v after it started)",
		d.Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	a := s.Devices["c0"]
	if !a.Managed || a.IPInterface != "c0" || !a.MPTCP.Known || a.MPTCP.Disabled ||
		a.MPTCP.Flags != nmmon.MPTCPSubflow|nmmon.MPTCPAlsoWithoutDefaultRoute || !a.Metered.Expensive() || a.Metered != nmmon.MeteredYes {
		t.Errorf("c0 = %v (%+v)", a, a)
	}
	waitEndpoint(t, cli, cli.Addrs4[0].String()+" ", "subflow", "dev c0")

	// Profile b on c1: MPTCP disabled.
	nm.Nmcli(t, "connection", "add", "type", "ethernet", "con-name", "b", "ifname", "c1", "autoconnect", "no",
		"ipv4.method", "manual", "ipv4.addresses", cli.Addrs4[1].String()+"/24", "ipv6.method", "disabled",
		"connection.mptcp-flags", "disabled")
	nm.Nmcli(t, "connection", "up", "b")
	s, _ = await(t, w, 5*time.Second, "c1 activated", func(s nmmon.State) bool { return s.Devices["c1"].Activated })
	if b := s.Devices["c1"]; !b.MPTCP.Known || !b.MPTCP.Disabled || b.MPTCP.Flags != nmmon.MPTCPDisabled || b.Metered.Expensive() {
		t.Errorf("c1 = %v (%+v)", b, b)
	}

	readableByNobody(t, bus)

	// a down.
	nm.Nmcli(t, "connection", "down", "a")
	s, _ = await(t, w, 5*time.Second, "c0 deactivated", func(s nmmon.State) bool { return !s.Devices["c0"].Activated })
	if a := s.Devices["c0"]; !a.Managed || a.MPTCP.Known {
		// Deactivation passes through states; the last one must be plain.
		s, _ = await(t, w, 5*time.Second, "c0 disconnected", func(s nmmon.State) bool {
			a := s.Devices["c0"]
			return a.Managed && !a.Activated && !a.MPTCP.Known
		})
	}
	if !s.Devices["c1"].Activated {
		t.Errorf("c1 is no longer activated: %v", s)
	}

	// Stop: not running within 1 s of the stop.
	t2 := time.Now()
	nm.Stop(t)
	stopped := time.Since(t2)
	_, d = await(t, w, time.Second, "not running", func(s nmmon.State) bool { return !s.Running })
	t.Logf("NetworkManager stopped in %v; the watcher saw it %v later", stopped.Round(time.Millisecond), d.Round(time.Millisecond))

	// Restart with the run state kept: b is assumed again.
	t3 := time.Now()
	nm.Restart(t)
	s, d = await(t, w, 2*time.Second, "running again with c1 activated", func(s nmmon.State) bool {
		return s.Running && s.Devices["c1"].Activated && s.Devices["c0"].Managed
	})
	t.Logf("restarted in %v; the watcher saw c1 activated %v later", (time.Since(t3) - d).Round(time.Millisecond), d.Round(time.Millisecond))
	if b := s.Devices["c1"]; !b.MPTCP.Disabled {
		t.Errorf("after the restart c1 = %v", b)
	}
	if s.Devices["c0"].Activated {
		t.Errorf("after the restart c0 is activated: %v", s)
	}

	// A watcher started against a running NetworkManager: the time to its
	// first state, and the heap a watcher holds (the average of 20, on one
	// connection; rough, as the test's other goroutines allocate too).
	conn := bus.Dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t4 := time.Now()
	w2, err := nmmon.Watch(ctx, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := await(t, w2, 2*time.Second, "the first state", func(nmmon.State) bool { return true })
	startup := time.Since(t4)
	if !s2.Running || !s2.Devices["c1"].Activated || !s2.Devices["c1"].MPTCP.Disabled {
		t.Errorf("second watcher's first state %v", s2)
	}
	const n = 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	ws := make([]*nmmon.Watcher, n)
	for i := range ws {
		if ws[i], err = nmmon.Watch(ctx, conn, nil); err != nil {
			t.Fatal(err)
		}
		await(t, ws[i], 2*time.Second, "the first state", func(nmmon.State) bool { return true })
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	goroutines := runtime.NumGoroutine() - g0
	t.Logf("a watcher against a running NetworkManager (%d devices): first state after %v; each holds about %d bytes of heap, %d bytes of stack, %.1f goroutines",
		len(s2.Devices), startup.Round(10*time.Microsecond), (int64(after.HeapAlloc)-int64(before.HeapAlloc))/n,
		(int64(after.StackInuse)-int64(before.StackInuse))/n, float64(goroutines)/n)
	cancel()
	for range w2.States() {
	}
	for _, w := range ws {
		for range w.States() {
		}
	}

	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("the watcher warned:\n%s", logs.String())
	}
}

// readableByNobody checks that an unprivileged user (the daemon runs as
// mptcp-pm) may make every call the watcher makes, under NetworkManager's
// bus policy. (NetworkManager itself runs without polkit here; it asks
// polkit nothing for these reads anyway.)
func readableByNobody(t *testing.T, bus *dbustest.Bus) {
	t.Helper()
	busctl := pmtest.RequireProgram(t, "busctl")
	const nobody = 65534
	call := func(args ...string) string {
		t.Helper()
		cmd := bus.CommandAs(t, nobody, nobody, busctl, append([]string{"--address=" + bus.Address()}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("busctl %s as nobody: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	paths := func(out string) []string { // "ao 2 "/a" "/b"" -> /a, /b
		var ps []string
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, `"/`) {
				ps = append(ps, strings.Trim(f, `"`))
			}
		}
		return ps
	}
	const nm, mgr = nmmon.BusName, "/org/freedesktop/NetworkManager"
	devs := paths(call("call", nm, mgr, nm, "GetAllDevices"))
	if len(devs) == 0 {
		t.Fatal("nobody sees no devices")
	}
	for _, d := range devs {
		if out := call("call", nm, d, "org.freedesktop.DBus.Properties", "GetAll", "s", nm+".Device"); !strings.Contains(out, `"ActiveConnection"`) {
			t.Errorf("GetAll of %s as nobody: %s", d, out)
		}
	}
	actives := paths(call("get-property", nm, mgr, nm, "ActiveConnections"))
	if len(actives) == 0 {
		t.Fatal("nobody sees no active connections")
	}
	for _, a := range actives {
		for _, p := range paths(call("get-property", nm, a, nm+".Connection.Active", "Connection")) {
			if out := call("call", nm, p, nm+".Settings.Connection", "GetSettings"); !strings.Contains(out, `"mptcp-flags"`) {
				t.Errorf("GetSettings of %s as nobody has no mptcp-flags: %s", p, out)
			}
		}
	}
}

// waitEndpoint waits until an MPTCP endpoint of the namespace shows all
// the parts.
func waitEndpoint(t *testing.T, h *pmtest.Host, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		out := h.Run(t, "ip", "mptcp", "endpoint", "show")
		for _, l := range strings.Split(out, "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(l+" ", p)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no endpoint with %q; endpoints:\n%s", parts, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
