//go:build linux

package pmnl_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// BenchmarkRoundTripLimits measures one GET_LIMITS request and its reply
// against the kernel, in a fresh namespace.
func BenchmarkRoundTripLimits(b *testing.B) {
	c := clientDial(b, pmtest.NewNamespace(b))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Limits(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRoundTripEndpointAddDel measures adding one endpoint with its id
// and deleting it again: two acknowledged commands. It also reports the
// time of each command alone (the kernel waits for an RCU grace period
// before it acknowledges a delete).
func BenchmarkRoundTripEndpointAddDel(b *testing.B) {
	c := clientDial(b, pmtest.NewNamespace(b))
	ep := pm.Address{ID: 1, Addr: netip.MustParseAddr("10.77.0.1"), Flags: pm.FlagSubflow}
	var add, del time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.AddEndpoint(ep); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := c.DeleteEndpoint(ep.ID); err != nil {
			b.Fatal(err)
		}
		add += t1.Sub(t0)
		del += time.Since(t1)
	}
	b.ReportMetric(float64(add.Nanoseconds())/float64(b.N), "add-ns/op")
	b.ReportMetric(float64(del.Nanoseconds())/float64(b.N), "del-ns/op")
}
