package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon/nmtest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// BenchmarkNetworkManagerCost measures what following NetworkManager costs
// the daemon: with a real NetworkManager managing two of three paths
// (one MPTCP profile, one metered), the daemon starts with
// network_manager = "auto" and with "ignore", interleaved, under the
// endpoints policy. Reported per mode: the start-up to the bus name (the
// daemon's startup=), the anonymous memory (RssAnon) and the CPU time per
// second of an idle 5 s (the endpoint poll runs each second with "auto").
func BenchmarkNetworkManagerCost(b *testing.B) {
	s := newNMSetup(b, pmtest.LabOptions{Paths: 3})
	nm := nmtest.Start(b, s.lab.Client, s.bus, nmtest.Options{Managed: []string{"c1", "c2"}})
	s.profile(b, nm, "wifi", 1, "connection.mptcp-flags", "subflow,also-without-default-route")
	s.profile(b, nm, "lte", 2, "connection.metered", "yes")
	const idle = 5 * time.Second
	type figures struct {
		startup, cpu time.Duration
		anon         float64
	}
	modes := []string{"auto", "ignore"}
	sum := map[string]*figures{"auto": {}, "ignore": {}}
	b.ResetTimer()
	for range b.N {
		for _, mode := range modes {
			d := startDaemon(b, s.lab.Client, s.bus, "--policy", "endpoints",
				configArg(b, "network_manager = \""+mode+"\"\n"))
			f := sum[mode]
			f.startup += logDuration(b, d.log.String(), "startup")
			time.Sleep(time.Second) // past the start's allocations
			cpu0 := threadsCPU(b, d.pid())
			time.Sleep(idle)
			f.cpu += threadsCPU(b, d.pid()) - cpu0
			_, _, anon := procMem(b, d.pid())
			f.anon += anon
			d.stop(b)
		}
	}
	n := float64(b.N)
	for _, mode := range modes {
		f := sum[mode]
		b.ReportMetric(float64(f.startup.Microseconds())/1000/n, "ms/ready-"+mode)
		b.ReportMetric(f.anon/n, "anon-kB-"+mode)
		b.ReportMetric(float64(f.cpu.Microseconds())/n/idle.Seconds(), "idle-cpu-µs/s-"+mode)
	}
	b.ReportMetric(float64(sum["auto"].startup)/float64(sum["ignore"].startup), "ready-auto/ignore")
}

// threadsCPU returns the CPU time of all of a process's threads, to the
// nanosecond (/proc/PID/task/*/schedstat: /proc/PID/stat counts in ticks
// of 10 ms, too coarse for an idle daemon).
func threadsCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	files, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/schedstat")
	if err != nil || len(files) == 0 {
		tb.Fatalf("schedstat of %d: %v", pid, err)
	}
	var total time.Duration
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		if err != nil {
			tb.Fatalf("%s: %q", f, b)
		}
		total += time.Duration(ns)
	}
	return total
}
