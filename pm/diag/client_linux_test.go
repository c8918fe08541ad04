package diag

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// Kernel tests: they need root, MPTCP and iproute2 (pmtest skips them
// otherwise, and fails them when CI is set).

const waitFor = 10 * time.Second

// poll calls cond until it returns "" or the deadline passes, then fails
// with its last complaint.
func poll(tb testing.TB, what string, cond func() string) {
	tb.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not after %v: %s", what, waitFor, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustConns(tb testing.TB, c *Client) []Conn {
	tb.Helper()
	cs, err := c.Connections()
	if err != nil {
		tb.Fatal(err)
	}
	return cs
}

func mustSubflows(tb testing.TB, c *Client) []Subflow {
	tb.Helper()
	s, err := c.Subflows()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func findConn(cs []Conn, local, remote netip.AddrPort) *Conn {
	for i := range cs {
		if cs[i].Local == local && cs[i].Remote == remote {
			return &cs[i]
		}
	}
	return nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ap := netip.MustParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// monitor is `ip mptcp monitor` running in a namespace: the kernel's
// path-manager events, an independent source of tokens and sides.
type monitor struct {
	mu    sync.Mutex
	lines []string
	cond  chan struct{}
}

// mptcpEvent is a CREATED event as iproute2 prints it.
type mptcpEvent struct {
	token       uint32
	local, peer netip.AddrPort
	serverSide  bool
	raw         string
}

func startMonitor(tb testing.TB, h *pmtest.Host) *monitor {
	tb.Helper()
	cmd := exec.Command("ip", "-n", h.Name, "mptcp", "monitor")
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		pmtest.Unavailable(tb, "ip mptcp monitor: %v", err)
	}
	m := &monitor{cond: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m.mu.Lock()
			m.lines = append(m.lines, sc.Text())
			m.mu.Unlock()
			select {
			case m.cond <- struct{}{}:
			default:
			}
		}
	}()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		cmd.Wait()
	})
	// The monitor subscribes some time after it starts: open listeners
	// (each one an event) until it prints something.
	for i := 0; ; i++ {
		h.Serve(tb, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		select {
		case <-m.cond:
			return m
		case <-time.After(100 * time.Millisecond):
		}
		if i == 50 {
			tb.Fatalf("ip mptcp monitor in %s printed nothing", h.Name)
		}
	}
}

// created waits for the CREATED event of the connection from local to peer.
func (m *monitor) created(tb testing.TB, local, peer netip.AddrPort) mptcpEvent {
	tb.Helper()
	var ev mptcpEvent
	poll(tb, fmt.Sprintf("CREATED event %s -> %s", local, peer), func() string {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, l := range m.lines {
			if e, ok := parseCreated(l); ok && e.local == local && e.peer == peer {
				ev = e
				return ""
			}
		}
		return fmt.Sprintf("%d lines", len(m.lines))
	})
	return ev
}

// parseCreated parses "[CREATED] token=1ceca634 remid=0 locid=0
// saddr4=127.0.0.1 daddr4=127.0.0.1 sport=49230 dport=9000 [flags=2]
// [server_side=1]".
func parseCreated(line string) (mptcpEvent, bool) {
	ev := mptcpEvent{raw: line}
	if !strings.Contains(line, "CREATED]") || strings.Contains(line, "LISTENER") {
		return ev, false
	}
	f := map[string]string{}
	for _, kv := range strings.Fields(line) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	tok, err := strconv.ParseUint(f["token"], 16, 32)
	if err != nil {
		return ev, false
	}
	ev.token = uint32(tok)
	sa, da := f["saddr4"]+f["saddr6"], f["daddr4"]+f["daddr6"]
	s, err1 := netip.ParseAddr(sa)
	d, err2 := netip.ParseAddr(da)
	sp, err3 := strconv.ParseUint(f["sport"], 10, 16)
	dp, err4 := strconv.ParseUint(f["dport"], 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return ev, false
	}
	ev.local = netip.AddrPortFrom(s.Unmap(), uint16(sp))
	ev.peer = netip.AddrPortFrom(d.Unmap(), uint16(dp))
	flags, _ := strconv.ParseUint(f["flags"], 0, 32)
	ev.serverSide = f["server_side"] == "1" || flags&2 != 0 // MPTCP_PM_EV_FLAG_SERVER_SIDE
	return ev, true
}

func dialNS(tb testing.TB, h *pmtest.Host) *Client {
	tb.Helper()
	c, err := Dial(&Config{NetNS: h.NSFD()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func TestListEmptyNamespace(t *testing.T) {
	h := pmtest.NewNamespace(t)
	c := dialNS(t, h)
	if cs, err := c.ListConnections(nil, AllStates); err != nil || len(cs) != 0 {
		t.Errorf("connections: %v, %v", cs, err)
	}
	if sfs, err := c.ListSubflows(nil, AllStates); err != nil || len(sfs) != 0 {
		t.Errorf("subflows: %v, %v", sfs, err)
	}
	s, err := c.Snapshot()
	if err != nil || len(s.Conns)+len(s.Listeners)+len(s.Unmatched) != 0 {
		t.Errorf("snapshot: %+v, %v", s, err)
	}
}

// TestDialCurrentNamespace: with no Config the socket lists the namespace
// of the thread that dialled, even when used from elsewhere afterwards.
func TestDialCurrentNamespace(t *testing.T) {
	h := pmtest.NewNamespace(t)
	addr := h.Serve(t, netip.MustParseAddrPort("127.0.0.1:0"))
	conn := h.Dial(t, netip.Addr{}, addr)
	var c *Client
	if err := h.Do(func() (err error) { c, err = Dial(nil); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var cs []Conn
	poll(t, "connection listed", func() string {
		cs = mustConns(t, c)
		if findConn(cs, addrPortOf(conn.LocalAddr()), addr) == nil || findConn(cs, addr, addrPortOf(conn.LocalAddr())) == nil {
			return fmt.Sprintf("%+v", cs)
		}
		return ""
	})
	// Both ends live in this namespace: two connections, two local tokens.
	if len(cs) != 2 || cs[0].Token == cs[1].Token {
		t.Errorf("connections: %+v", cs)
	}
	ls, err := c.Listeners()
	if err != nil || len(ls) != 1 || ls[0].Local != addr || ls[0].State != StateListen {
		t.Errorf("listeners: %+v, %v", ls, err)
	}
}

// TestConnectionBothSides lists one connection from both of its ends, for
// each address family, and checks the tokens and sides against the
// kernel's path-manager events.
func TestConnectionBothSides(t *testing.T) {
	// "ipv4-dualstack": an IPv4 connection accepted by an IPv6 socket
	// listening on [::], whose addresses the kernel reports IPv4-mapped.
	for _, fam := range []string{"ipv4", "ipv6", "ipv4-dualstack"} {
		t.Run(fam, func(t *testing.T) {
			lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 1})
			cli, srv := lab.Client, lab.Server
			listenAddr := srv.Addrs4[0]
			switch fam {
			case "ipv6":
				listenAddr = srv.Addrs6[0]
			case "ipv4-dualstack":
				listenAddr = netip.IPv6Unspecified()
			}
			cmon, smon := startMonitor(t, cli), startMonitor(t, srv)
			addr := srv.Serve(t, netip.AddrPortFrom(listenAddr, 0))
			if fam == "ipv4-dualstack" {
				addr = netip.AddrPortFrom(srv.Addrs4[0], addr.Port())
			}
			conn := cli.Dial(t, netip.Addr{}, addr)
			if _, err := conn.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			local := addrPortOf(conn.LocalAddr())
			cd, sd := dialNS(t, cli), dialNS(t, srv)

			cev, sev := cmon.created(t, local, addr), smon.created(t, addr, local)
			if cev.serverSide || !sev.serverSide {
				t.Fatalf("events: client %q, server %q", cev.raw, sev.raw)
			}

			var cc, sc *Conn
			poll(t, "both ends listed", func() string {
				cc = findConn(mustConns(t, cd), local, addr)
				sc = findConn(mustConns(t, sd), addr, local)
				if cc == nil || sc == nil || sc.Info.BytesReceived != 5 {
					return fmt.Sprintf("client %+v, server %+v", cc, sc)
				}
				return ""
			})
			// Each end looked up alone by its token.
			for _, x := range []struct {
				d *Client
				c *Conn
			}{{cd, cc}, {sd, sc}} {
				one, err := x.d.ConnByToken(x.c.Token)
				if err != nil || one.Token != x.c.Token || one.Local != x.c.Local || one.Remote != x.c.Remote || one.Inode != x.c.Inode {
					t.Errorf("ConnByToken(%08x) = %+v, %v; the dump says %+v", x.c.Token, one, err, *x.c)
				}
			}
			if _, err := cd.ConnByToken(cc.Token ^ 0x5a5a5a5a); !errors.Is(err, ErrNoSuchConn) {
				t.Errorf("ConnByToken of an unknown token: %v, want ErrNoSuchConn", err)
			}
			cfam, sfam := uint8(afInet), uint8(afInet)
			switch fam {
			case "ipv6":
				cfam, sfam = afInet6, afInet6
			case "ipv4-dualstack":
				sfam = afInet6
			}
			t.Logf("client %s token %08x (event %08x), server %s token %08x (event %08x)",
				cc.Local, cc.Token, cev.token, sc.Local, sc.Token, sev.token)
			for _, x := range []struct {
				name       string
				c          *Conn
				token      uint32
				wantFamily uint8
			}{{"client", cc, cev.token, cfam}, {"server", sc, sev.token, sfam}} {
				c, wantFamily := x.c, x.wantFamily
				if c.Token != x.token || c.Token == 0 {
					t.Errorf("%s: token %08x, the kernel's event says %08x", x.name, c.Token, x.token)
				}
				if c.State != StateEstablished || c.Family != wantFamily || c.Fallback || c.InfoSize < 48 ||
					c.Info.Flags&InfoFlagRemoteKeyReceived == 0 || c.Inode == 0 || c.Cookie == 0 {
					t.Errorf("%s: %+v", x.name, *c)
				}
			}
			if cc.Token == sc.Token {
				t.Errorf("both ends have token %08x", cc.Token)
			}
			if cc.Info.BytesSent != 5 && cc.InfoSize >= 80 {
				t.Errorf("client bytes sent %d", cc.Info.BytesSent)
			}

			// The listener is not a connection, but a Listener.
			ls, err := sd.Listeners()
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, l := range ls {
				found = found || l.Local.Port() == addr.Port() && l.Local.Addr() == listenAddr
			}
			if !found {
				t.Errorf("listener %s not in %+v", addr, ls)
			}
			for _, c := range mustConns(t, sd) {
				if c.State == StateListen {
					t.Errorf("Connections lists a listener: %+v", c)
				}
			}

			// Subflows and the snapshot's sides.
			for _, x := range []struct {
				name          string
				d             *Client
				token         uint32
				local, remote netip.AddrPort
				side          Side
				flags         SubflowFlags
			}{
				{"client", cd, cc.Token, local, addr, SideClient, SubflowMPCapableLocal | SubflowMPCapableRemote},
				{"server", sd, sc.Token, addr, local, SideServer, SubflowMPCapableRemote},
			} {
				var sf *Subflow
				for _, s := range mustSubflows(t, x.d) {
					if s.Token == x.token {
						if sf != nil {
							t.Errorf("%s: two subflows for %08x", x.name, x.token)
						}
						sf = &s
					}
				}
				if sf == nil || sf.Local != x.local || sf.Remote != x.remote || sf.LocalID != 0 || sf.RemoteID != 0 ||
					sf.Flags&(SubflowMPCapableLocal|SubflowMPCapableRemote) != x.flags || sf.State != StateEstablished {
					t.Errorf("%s subflow: %+v", x.name, sf)
				}
				snap, err := x.d.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				c := snap.Conn(x.token)
				if c == nil || c.Side != x.side || len(c.Subflows) != 1 || c.Subflows[0].Local != x.local {
					t.Errorf("%s snapshot: %+v", x.name, c)
				}
			}
		})
	}
}

// TestEndpointSubflows: the client's in-kernel path manager opens a subflow
// from each endpoint; each shows up on both ends with the connection's
// token, the endpoint's id, and the backup flag of a backup endpoint.
func TestEndpointSubflows(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 3})
	cli, srv := lab.Client, lab.Server
	type ep struct {
		id     uint8
		addr   netip.Addr
		backup bool
	}
	eps := map[string][]ep{
		"ipv4": {{5, cli.Addrs4[1], false}, {6, cli.Addrs4[2], true}},
		"ipv6": {{7, cli.Addrs6[1], false}, {8, cli.Addrs6[2], true}},
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		for i, e := range eps[fam] {
			args := []string{"ip", "mptcp", "endpoint", "add", e.addr.String(), "dev", cli.Ifaces[i+1], "id", fmt.Sprint(e.id), "subflow"}
			if e.backup {
				args = append(args, "backup")
			}
			cli.Run(t, args...)
		}
	}
	cd, sd := dialNS(t, cli), dialNS(t, srv)
	for _, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) {
			srvAddr := srv.Addrs4[0]
			if fam == "ipv6" {
				srvAddr = srv.Addrs6[0]
			}
			srvr := srv.Listen(t, netip.AddrPortFrom(srvAddr, 0))
			conn := cli.Dial(t, netip.Addr{}, srvr.Addr)
			if _, err := conn.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			local := addrPortOf(conn.LocalAddr())
			var cs, ss *ConnWithSubflows
			poll(t, "the endpoints' subflows", func() string {
				csnap, err := cd.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				ssnap, err := sd.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				cs, ss = nil, nil
				for i := range csnap.Conns {
					if c := &csnap.Conns[i]; c.Local == local && c.Remote == srvr.Addr {
						cs = c
					}
				}
				for i := range ssnap.Conns {
					if c := &ssnap.Conns[i]; c.Local == srvr.Addr && c.Remote == local {
						ss = c
					}
				}
				if cs == nil || ss == nil || len(cs.Subflows) != 3 || len(ss.Subflows) != 3 {
					return fmt.Sprintf("client %+v\nserver %+v", cs, ss)
				}
				// The connections are dumped before their subflows, so a
				// subflow may be listed before its connection counts it.
				if cs.InfoSize > 80 && cs.Info.SubflowsTotal != 3 {
					return fmt.Sprintf("client counts %d subflows", cs.Info.SubflowsTotal)
				}
				for _, s := range append(cs.Subflows, ss.Subflows...) {
					if s.Flags&SubflowFullyEstablished == 0 {
						return fmt.Sprintf("not fully established: %+v", s)
					}
				}
				return ""
			})
			if cs.Side != SideClient || ss.Side != SideServer {
				t.Errorf("sides %v/%v, subflows total %d", cs.Side, ss.Side, cs.Info.SubflowsTotal)
			}
			// Each subflow looked up alone is the dump's, at both ends; so
			// are all of them looked up at once, with one that is not there.
			gone := SubflowKey{Local: netip.AddrPortFrom(local.Addr(), local.Port()^0x5a5a), Remote: srvr.Addr}
			for _, x := range []struct {
				d   *Client
				sfs []Subflow
			}{{cd, cs.Subflows}, {sd, ss.Subflows}} {
				same := func(got, want Subflow) bool {
					return got.Token == want.Token && got.Local == want.Local && got.Remote == want.Remote &&
						got.LocalID == want.LocalID && got.Backup == want.Backup && got.State == want.State && got.Inode == want.Inode
				}
				var keys []SubflowKey
				for _, s := range x.sfs {
					k := SubflowKey{Local: s.Local, Remote: s.Remote, Ifindex: int32(s.Ifindex)}
					keys = append(keys, k)
					if one, err := x.d.Subflow(k); err != nil || !same(one, s) {
						t.Errorf("Subflow(%+v) = %+v, %v; the dump says %+v", k, one, err, s)
					}
				}
				all, missing, err := x.d.LookupSubflows(nil, append(keys, gone))
				if err != nil || missing != 1 || len(all) != len(x.sfs) {
					t.Fatalf("LookupSubflows: %d found, %d missing, %v; want %d and 1", len(all), missing, err, len(x.sfs))
				}
				for i := range all {
					if !same(all[i], x.sfs[i]) {
						t.Errorf("LookupSubflows[%d] = %+v; the dump says %+v", i, all[i], x.sfs[i])
					}
				}
			}
			if _, err := cd.Subflow(gone); !errors.Is(err, ErrNoSuchSubflow) {
				t.Errorf("Subflow of no socket: %v, want ErrNoSuchSubflow", err)
			}
			byID := map[uint8]Subflow{}
			for _, s := range cs.Subflows {
				if s.Token != cs.Token || s.Remote != srvr.Addr {
					t.Errorf("client subflow %+v of connection %08x", s, cs.Token)
				}
				byID[s.LocalID] = s
			}
			if s, ok := byID[0]; !ok || s.Local != local || s.Backup || s.Flags&SubflowMPCapableLocal == 0 {
				t.Errorf("initial subflow: %+v", s)
			}
			for i, e := range eps[fam] {
				s, ok := byID[e.id]
				if !ok || s.Local.Addr() != e.addr || s.Backup != e.backup || s.BackupRemote ||
					s.Flags&SubflowJoinLocal == 0 || s.RemoteToken != ss.Token || s.Ifindex == 0 {
					t.Errorf("endpoint %d (%s) subflow: %+v", e.id, e.addr, s)
				}
				// The same subflow from the server: the peer's id and backup flag.
				var peer *Subflow
				for j := range ss.Subflows {
					if ss.Subflows[j].Remote == s.Local {
						peer = &ss.Subflows[j]
					}
				}
				if peer == nil || peer.Token != ss.Token || peer.RemoteID != e.id || peer.LocalID != 0 ||
					peer.BackupRemote != e.backup || peer.Backup || peer.Flags&SubflowJoinRemote == 0 || peer.Flags&SubflowJoinLocal != 0 {
					t.Errorf("server's view of endpoint %d (path %d): %+v", e.id, i+1, peer)
				}
			}
		})
	}
}

// TestCloseRemovesConnection: a closed connection leaves the listings of
// both ends, subflows included.
func TestCloseRemovesConnection(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	cli, srv := lab.Client, lab.Server
	cli.Run(t, "ip", "mptcp", "endpoint", "add", cli.Addrs4[1].String(), "dev", cli.Ifaces[1], "subflow")
	addr := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	keep := cli.Dial(t, netip.Addr{}, addr)
	conn := cli.Dial(t, netip.Addr{}, addr)
	for _, c := range []net.Conn{keep, conn} {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	local, kept := addrPortOf(conn.LocalAddr()), addrPortOf(keep.LocalAddr())
	cd, sd := dialNS(t, cli), dialNS(t, srv)
	var ctoken, stoken uint32
	poll(t, "connection and its two subflows listed", func() string {
		cs, err := cd.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		ss, err := sd.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs.Conns {
			if c.Local == local && len(c.Subflows) == 2 {
				ctoken = c.Token
			}
		}
		for _, c := range ss.Conns {
			if c.Remote == local && len(c.Subflows) == 2 {
				stoken = c.Token
			}
		}
		if ctoken == 0 || stoken == 0 {
			return fmt.Sprintf("client %+v\nserver %+v", cs.Conns, ss.Conns)
		}
		return ""
	})
	conn.Close()
	gone := func(d *Client, token uint32) string {
		cs, err := d.ListConnections(nil, AllStates)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.Token == token {
				return fmt.Sprintf("still listed: %+v", c)
			}
		}
		sfs, err := d.ListSubflows(nil, AllStates)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range sfs {
			if s.Token == token {
				return fmt.Sprintf("subflow still listed: %+v", s)
			}
		}
		return ""
	}
	poll(t, "client's connection gone", func() string { return gone(cd, ctoken) })
	poll(t, "server's connection gone", func() string { return gone(sd, stoken) })
	// The other connection is still there.
	if findConn(mustConns(t, cd), kept, addr) == nil {
		t.Errorf("the other connection %s vanished", kept)
	}
}

// TestManyConnections: 200 connections are all listed, on both ends.
func TestManyConnections(t *testing.T) {
	const n = 200
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 1})
	cli, srv := lab.Client, lab.Server
	addr := srv.Serve(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	conns := dialMany(t, cli, addr, n)
	cd, sd := dialNS(t, cli), dialNS(t, srv)
	want := map[netip.AddrPort]bool{}
	for _, c := range conns {
		want[addrPortOf(c.LocalAddr())] = true
	}
	poll(t, "all connections listed", func() string {
		for _, side := range []struct {
			name string
			d    *Client
		}{{"client", cd}, {"server", sd}} {
			snap, err := side.d.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			seen, tokens := map[netip.AddrPort]bool{}, map[uint32]bool{}
			for _, c := range snap.Conns {
				peer := c.Remote
				if side.name == "client" {
					peer = c.Local
				}
				if want[peer] && c.State == StateEstablished && len(c.Subflows) == 1 {
					seen[peer] = true
					tokens[c.Token] = true
				}
			}
			if len(seen) != n || len(tokens) != n {
				return fmt.Sprintf("%s: %d of %d connections with a subflow, %d tokens", side.name, len(seen), n, len(tokens))
			}
		}
		return ""
	})
}

// dialMany opens n MPTCP connections to remote from h, on one locked
// thread in the namespace; they are closed when the test ends.
func dialMany(tb testing.TB, h *pmtest.Host, remote netip.AddrPort, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, 0, n)
	tb.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	err := h.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp", remote.String())
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return conns
}

// TestConcurrentListings shares one Client between goroutines (run it with
// -race), then checks that a closed Client fails cleanly.
func TestConcurrentListings(t *testing.T) {
	h := pmtest.NewNamespace(t)
	addr := h.Serve(t, netip.MustParseAddrPort("127.0.0.1:0"))
	for i := 0; i < 5; i++ {
		h.Dial(t, netip.Addr{}, addr)
	}
	c, err := Dial(&Config{NetNS: h.NSFD()})
	if err != nil {
		t.Fatal(err)
	}
	poll(t, "10 connections", func() string {
		if n := len(mustConns(t, c)); n != 10 {
			return fmt.Sprint(n)
		}
		return ""
	})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				var n int
				switch i % 3 {
				case 0:
					cs, err := c.Connections()
					if err != nil {
						errs <- err
						return
					}
					n = len(cs)
				case 1:
					sfs, err := c.Subflows()
					if err != nil {
						errs <- err
						return
					}
					n = len(sfs)
				case 2:
					s, err := c.Snapshot()
					if err != nil {
						errs <- err
						return
					}
					n = len(s.Conns)
					if len(s.Listeners) != 1 || len(s.Unmatched) != 0 {
						errs <- fmt.Errorf("snapshot %+v", s)
					}
				}
				if n != 10 {
					errs <- fmt.Errorf("listing %d gave %d", i%3, n)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connections(); err == nil || !strings.HasPrefix(err.Error(), "diag: list connections: ") {
		t.Errorf("listing on a closed client: %v", err)
	}
}
