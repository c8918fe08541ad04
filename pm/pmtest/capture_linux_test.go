package pmtest_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// TestCaptureHandshakes checks the capture against the kernel's in-kernel
// path manager, over IPv4 and IPv6: the initial subflow's SYN, SYN-ACK and
// the server's first packet after it come in that order, and the join the
// path manager opens from the client's "subflow" endpoint leaves no sooner
// than that first packet (the one that makes the connection fully
// established, when the path manager may act), and is answered.
func TestCaptureHandshakes(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	cli, srv := lab.Client, lab.Server
	capture := cli.Capture(t)
	for _, family := range []struct {
		name     string
		cli, srv []netip.Addr
	}{{"IPv4", cli.Addrs4, srv.Addrs4}, {"IPv6", cli.Addrs6, srv.Addrs6}} {
		t.Run(family.name, func(t *testing.T) {
			cli.Run(t, "ip", "mptcp", "endpoint", "flush")
			cli.Run(t, "ip", "mptcp", "endpoint", "add", family.cli[1].String(), "dev", cli.Ifaces[1], "subflow")
			server := srv.Serve(t, netip.AddrPortFrom(family.srv[0], 0))
			c := cli.Dial(t, family.cli[0], server)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
			initial := capture.Wait(t, pmtest.Flow{Local: local, Remote: server}, func(h pmtest.Handshake) bool { return !h.Reply.IsZero() })
			if !initial.SYN.Before(initial.SYNACK) || initial.Reply.Before(initial.SYNACK) {
				t.Fatalf("initial subflow's packets out of order: %+v", initial)
			}
			var join pmtest.Handshake
			deadline := time.Now().Add(5 * time.Second)
			for join.SYNACK.IsZero() {
				if time.Now().After(deadline) {
					t.Fatalf("no answered join from %s within 5 s; flows: %+v", family.cli[1], capture.Flows())
				}
				time.Sleep(10 * time.Millisecond)
				for f, h := range capture.Flows() {
					if f.Local.Addr() == family.cli[1] && f.Remote == server {
						join = h
					}
				}
			}
			if join.SYN.Before(initial.Reply) || !join.SYN.Before(join.SYNACK) {
				t.Fatalf("join %+v against the initial subflow %+v: it left before the connection was fully established, or out of order", join, initial)
			}
			if d := join.SYN.Sub(initial.SYN); d > 5*time.Second {
				t.Fatalf("join %v after the initial SYN: the timestamps are not the packets'", d)
			}
		})
	}
}
