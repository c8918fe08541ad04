package main

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// BenchmarkPolicyLatency measures, in one run, how long a new connection
// waits for its extra subflow: from the client's ESTABLISHED event to the
// first SUB_ESTABLISHED, both as an independent listener in the client's
// namespace receives them. First with mptcp-pmd's subflow-per-interface
// policy (userspace path manager), then with the kernel's in-kernel path
// manager and a subflow endpoint doing the same; two paths, 200 paced
// connections each. It reports the median and the 99th percentile of
// both, in µs, and the ratio of the medians. A third phase gives the floor
// of any userspace path manager here: the benchmark itself sends
// SUBFLOW_CREATE as soon as its listener has the ESTABLISHED ("raw").
// Run it once:
//
//	go test -run '^$' -bench PolicyLatency -benchtime 1x ./cmd/mptcp-pmd
func BenchmarkPolicyLatency(b *testing.B) {
	const (
		conns = 200
		pace  = 5 * time.Millisecond
	)
	lab := pmtest.NewLab(b, pmtest.LabOptions{Paths: 2, ClientPM: "userspace"})
	cli, srv := lab.Client, lab.Server
	bus := dbustest.StartBus(b, dbustest.SystemDefaults())
	kev := listenKernel(b, cli)
	server := srv.Serve(b, netip.AddrPortFrom(srv.Addrs4[0], 0))

	k, err := pmnl.Dial(&pmnl.Config{NetNS: cli.NSFD()})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	// measure makes the connections; react, if not nil, is called with
	// each one's ESTABLISHED.
	measure := func(what string, react func(token uint32)) []time.Duration {
		var lat []time.Duration
		for i := range conns {
			c := dialQuiet(b, cli, server)
			local := addrPort(b, c.LocalAddr())
			est := kev.wait(b, fmt.Sprintf("%s: ESTABLISHED %d", what, i), func(ev pm.Event) bool {
				return ev.Type == pm.EventEstablished && ev.LocalPort == local.Port()
			})
			if react != nil {
				react(est.Token)
			}
			sub := kev.wait(b, fmt.Sprintf("%s: SUB_ESTABLISHED %d", what, i), func(ev pm.Event) bool {
				return ev.Type == pm.EventSubEstablished && ev.Token == est.Token
			})
			if sub.LocalAddr != cli.Addrs4[1] {
				b.Fatalf("%s: subflow from %s, want %s", what, sub.LocalAddr, cli.Addrs4[1])
			}
			lat = append(lat, sub.At.Sub(est.At))
			c.Close()
			time.Sleep(pace)
		}
		slices.Sort(lat)
		return lat
	}
	quantile := func(lat []time.Duration, q float64) float64 {
		return us(lat[min(int(q*float64(len(lat))), len(lat)-1)])
	}

	for b.Loop() {
		d := startDaemon(b, cli, bus, "--policy", "subflow-per-interface", "--log-level", "warn")
		daemon := measure("mptcp-pmd", nil)
		d.stop(b)

		raw := measure("raw", func(token uint32) {
			if err := k.CreateSubflow(token, pm.Address{ID: 1, Addr: cli.Addrs4[1]}, server); err != nil {
				b.Fatal(err)
			}
		})

		cli.SetPathManager(b, "kernel")
		cli.Run(b, "ip", "mptcp", "endpoint", "add", cli.Addrs4[1].String(), "dev", "c1", "subflow")
		kernel := measure("in-kernel", nil)
		cli.Run(b, "ip", "mptcp", "endpoint", "flush")
		cli.SetPathManager(b, "userspace")

		b.ReportMetric(quantile(daemon, 0.5), "pmd-median-µs")
		b.ReportMetric(quantile(daemon, 0.99), "pmd-p99-µs")
		b.ReportMetric(quantile(raw, 0.5), "raw-median-µs")
		b.ReportMetric(quantile(raw, 0.99), "raw-p99-µs")
		b.ReportMetric(quantile(kernel, 0.5), "kernel-median-µs")
		b.ReportMetric(quantile(kernel, 0.99), "kernel-p99-µs")
		b.ReportMetric(quantile(daemon, 0.5)/quantile(kernel, 0.5), "median-ratio")
	}
}
