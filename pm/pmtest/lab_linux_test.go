package pmtest_test

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// TestLabCarriesMultipathTraffic checks that the lab's paths really carry
// MPTCP subflows: an in-kernel "subflow" endpoint on the client's second path
// must give the connection a second subflow that leaves through c1.
func TestLabCarriesMultipathTraffic(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	cli, srv := lab.Client, lab.Server
	if len(cli.Addrs4) != 2 || cli.Addrs4[1] != netip.MustParseAddr("10.55.1.1") || srv.Ifaces[0] != "s0" {
		t.Fatalf("unexpected lab layout: %+v %+v", cli, srv)
	}
	cli.Run(t, "ip", "mptcp", "endpoint", "add", cli.Addrs4[1].String(), "dev", "c1", "subflow")
	addr := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := cli.Dial(t, netip.Addr{}, addr)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	want := "10.55.1.1"
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := cli.Run(t, "ss", "-tnH", "state", "established", "dst", addr.Addr().String())
		if strings.Count(out, "\n") >= 2 && strings.Contains(out, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no second subflow from %s after 5s; ss shows:\n%s", want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNamespaceIsRemoved(t *testing.T) {
	pmtest.RequireLab(t)
	var name string
	t.Run("inner", func(t *testing.T) {
		h := pmtest.NewNamespace(t)
		name = h.Name
		h.SetPathManager(t, "userspace")
		if got := strings.TrimSpace(h.Run(t, "sysctl", "-n", "net.mptcp.pm_type")); got != "1" {
			t.Fatalf("pm_type = %q, want 1", got)
		}
	})
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if name == "" || strings.Contains(string(out), name) {
		t.Fatalf("namespace %q still listed after the test: %s", name, out)
	}
}
