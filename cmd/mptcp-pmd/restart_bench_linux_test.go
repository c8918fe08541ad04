package main

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// openHeld opens n MPTCP connections from the lab's client to a server
// process (pmtest.Host.StartServer) and keeps them open until the end of
// the benchmark.
func openHeld(b *testing.B, lab *pmtest.Lab, n int) {
	b.Helper()
	server := lab.Server.StartServer(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	conns := make([]net.Conn, 0, n)
	for range n {
		conns = append(conns, dial(b, lab.Client, lab.Client.Addrs4[0], server))
	}
	b.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
}

// logDuration returns the duration of the last log record with the field
// name (as slog's text handler writes it, name=1.5ms).
func logDuration(b *testing.B, log, name string) time.Duration {
	b.Helper()
	m := regexp.MustCompile(` `+name+`=([0-9.]+[a-zµ]+)`).FindAllStringSubmatch(log, -1)
	if m == nil {
		b.Fatalf("no %s= in the daemon's log:\n%s", name, tail(log, 20))
	}
	d, err := time.ParseDuration(m[len(m)-1][1])
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkStartup measures the daemon's start-up, from the process's
// start to the bus name owned (READY follows at once), with 0, 1000 and
// 10000 live connections to adopt, as the daemon logs it (startup=).
func BenchmarkStartup(b *testing.B) {
	for _, n := range []int{0, 1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 1})
			bus := dbustest.StartBus(b, dbustest.SystemDefaults())
			openHeld(b, lab, n)
			var total time.Duration
			b.ResetTimer()
			for range b.N {
				d := startDaemon(b, lab.Client, bus)
				total += logDuration(b, d.log.String(), "startup")
				if got := len(d.objectTokens(b)); got != n {
					b.Fatalf("%d objects, want %d", got, n)
				}
				d.stop(b)
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/ready")
		})
	}
}

// BenchmarkResync10000 measures the repair after lost events with 10000
// live connections: the daemon is stopped while 8000 connections open and
// close (its event socket overflows), then continued; the figure is the
// re-listing and repair the daemon logs (took=).
func BenchmarkResync10000(b *testing.B) {
	const live, churn = 10000, 8000
	lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 1})
	bus := dbustest.StartBus(b, dbustest.SystemDefaults())
	openHeld(b, lab, live)
	d := startDaemon(b, lab.Client, bus)
	server := lab.Server.StartServer(b, netip.AddrPortFrom(lab.Server.Addrs4[0], 0))
	var total time.Duration
	b.ResetTimer()
	for i := range b.N {
		d.cmd.Process.Signal(syscall.SIGSTOP)
		for range churn {
			dial(b, lab.Client, lab.Client.Addrs4[0], server).Close()
		}
		d.cmd.Process.Signal(syscall.SIGCONT)
		want := fmt.Sprintf("listed=%d", live)
		eventually(b, 10*time.Second, "the resync", func() bool {
			return len(regexp.MustCompile(`connections synchronised.* `+want).FindAllString(d.log.String(), -1)) > i
		})
		total += logDuration(b, d.log.String(), "took")
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/resync")
}
