package diag

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// rawDump runs one dump and returns copies of its payloads and datagrams.
func rawDump(tb testing.TB, c *Client, family uint8, protocol uint16, states StateMask) (payloads, datagrams [][]byte) {
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rawHook = func(d []byte) { datagrams = append(datagrams, append([]byte(nil), d...)) }
	defer func() { c.rawHook = nil }()
	err := c.dump(family, protocol, extInfo, states, func(p []byte) error {
		payloads = append(payloads, append([]byte(nil), p...))
		return nil
	})
	if err != nil {
		tb.Fatalf("dump family %d protocol %d: %v", family, protocol, err)
	}
	return payloads, datagrams
}

// TestCaptureLab captures messages of every kind from a live lab and checks
// them as TestDecodeCaptured checks the stored ones. With DIAG_CAPTURE=1
// it also rewrites testdata/captured.txt; the exact values that
// TestDecodeCaptured expects (tokens) must then be updated.
func TestCaptureLab(t *testing.T) {
	lines := captureLab(t)
	raw := map[string][]byte{}
	names := make([]string, 0, len(lines))
	for n, h := range lines {
		names = append(names, n)
		raw[n], _ = hex.DecodeString(h)
	}
	sort.Strings(names)
	stored := loadCaptured(t)
	for n := range stored {
		if _, ok := raw[n]; !ok {
			t.Errorf("the live lab gave no %s message", n)
		}
	}
	checkCaptured(t, raw, false)
	if os.Getenv("DIAG_CAPTURE") != "1" || t.Failed() {
		return
	}
	var out strings.Builder
	fmt.Fprintf(&out, "# Real sock_diag messages from a pmtest lab (Linux %s), written by TestCaptureLab.\n", kernelRelease())
	fmt.Fprintf(&out, "# Client 10.55.0.1 (+ backup subflow endpoint 10.55.1.1 dev c1), server 10.55.0.2 / fd00:55:0::2;\n")
	fmt.Fprintf(&out, "# MPTCP listeners 10.55.0.2:5004 [fd00:55::2]:5006 [::]:5046, plain TCP listener 10.55.0.2:7000.\n")
	for _, n := range names {
		fmt.Fprintf(&out, "%s %s\n", n, lines[n])
	}
	if err := os.MkdirAll(filepath.Dir(captureFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(captureFile, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d messages to %s: %v", len(names), captureFile, names)
}

// captureLab builds a lab with connections of every kind and returns one
// message of each kind, hex-encoded, by name.
func captureLab(t *testing.T) map[string]string {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	cli, srv := lab.Client, lab.Server
	cli.Run(t, "ip", "mptcp", "endpoint", "add", "10.55.1.1", "dev", "c1", "subflow", "backup")
	srv4 := srv.Serve(t, netip.MustParseAddrPort("10.55.0.2:5004"))
	srv6 := srv.Serve(t, netip.MustParseAddrPort("[fd00:55:0::2]:5006"))
	dual := srv.Serve(t, netip.MustParseAddrPort("[::]:5046"))
	var plain net.Listener
	if err := srv.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		plain, err = lc.Listen(context.Background(), "tcp4", "10.55.0.2:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	go func() {
		for {
			c, err := plain.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	// Data makes the connections fully established, so the client's path
	// manager opens its joins.
	for _, to := range []netip.AddrPort{srv4, srv6, netip.AddrPortFrom(srv.Addrs4[0], dual.Port())} {
		if _, err := cli.Dial(t, netip.Addr{}, to).Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
	}
	for _, mptcp := range []bool{true, false} { // a fallback, then plain TCP
		if err := cli.Do(func() error {
			var d net.Dialer
			d.SetMultipathTCP(mptcp)
			c, err := d.Dial("tcp", "10.55.0.2:7000")
			if err == nil {
				t.Cleanup(func() { c.Close() })
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}

	lines := map[string]string{}
	put := func(name string, b []byte) {
		if _, dup := lines[name]; !dup {
			lines[name] = hex.EncodeToString(b)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Wait for the join subflows of both IPv4 MPTCP connections.
		d := dialIn(t, srv)
		sfs, err := d.Subflows()
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		joins := 0
		for _, sf := range sfs {
			if sf.Flags&SubflowJoinRemote != 0 && sf.State == StateEstablished {
				joins++
			}
		}
		if joins >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("joins did not appear: %+v", sfs)
		}
		time.Sleep(20 * time.Millisecond)
	}

	for _, side := range []struct {
		name string
		h    *pmtest.Host
	}{{"client", cli}, {"server", srv}} {
		d := dialIn(t, side.h)
		for _, fam := range []uint8{afInet, afInet6} {
			v := map[uint8]string{afInet: "v4", afInet6: "v6"}[fam]
			ps, dgs := rawDump(t, d, fam, ipprotoMPTCP, AllStates)
			if side.name == "server" && fam == afInet {
				for i, dg := range dgs {
					put(fmt.Sprintf("dgram-mptcp-server-v4-%d", i), dg)
				}
			}
			for _, p := range ps {
				c, err := decodeConn(p)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case c.State == StateListen && (c.Local.Port() == 5004 || c.Local.Port() == 5006):
					put("conn-listener-"+v, p)
				case c.State == StateListen:
				case c.Fallback:
					put("conn-fallback", p)
				case fam == afInet6 && c.Local.Addr().Is4():
					put("conn-"+side.name+"-v4mapped", p)
				case c.Remote.Port() == dual.Port() || c.Local.Port() == dual.Port():
				default:
					put("conn-"+side.name+"-"+v, p)
				}
			}
			ps, _ = rawDump(t, d, fam, ipprotoTCP, AllStates)
			for _, p := range ps {
				sf, ok, err := decodeSubflow(p)
				if err != nil {
					t.Fatal(err)
				}
				h, _ := decodeHeader(p)
				switch {
				case !ok && h.state == StateEstablished && (h.local.Port() == 7000 || h.remote.Port() == 7000):
					put("tcp-plain-"+side.name, p)
				case !ok:
				case sf.State == StateListen && (sf.Local.Port() == 5004 || sf.Local.Port() == 5006):
					put("sf-listener-"+v, p)
				case sf.State == StateListen:
				case sf.Remote.Port() == dual.Port() || sf.Local.Port() == dual.Port():
				case sf.Flags&SubflowJoinRemote != 0:
					put("sf-"+side.name+"-join-"+v, p)
				case sf.Flags&(SubflowMPCapableLocal|SubflowMPCapableRemote) == SubflowMPCapableLocal:
					put("sf-client-fallback", p)
				case sf.Flags&SubflowMPCapableRemote != 0:
					put("sf-"+side.name+"-initial-"+v, p)
				}
			}
		}
		d.Close()
	}
	return lines
}

func dialIn(tb testing.TB, h *pmtest.Host) *Client {
	tb.Helper()
	d, err := Dial(&Config{NetNS: h.NSFD()})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
