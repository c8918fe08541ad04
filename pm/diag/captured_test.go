package diag

import (
	"net/netip"
	"testing"
)

// TestDecodeCaptured decodes the real kernel messages of
// testdata/captured.txt (Linux 6.18) and checks them against the lab they
// came from and against each other.
func TestDecodeCaptured(t *testing.T) {
	checkCaptured(t, loadCaptured(t), true)
}

// checkCaptured checks a capture made by captureLab; exact adds the values
// of the stored capture (tokens), which a fresh one does not share.
func checkCaptured(t *testing.T, raw map[string][]byte, exact bool) {
	t.Helper()
	conn := func(name string) Conn {
		t.Helper()
		c, err := decodeConn(raw[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return c
	}
	sub := func(name string) Subflow {
		t.Helper()
		s, ok, err := decodeSubflow(raw[name])
		if err != nil || !ok {
			t.Fatalf("%s: ok %v, %v", name, ok, err)
		}
		return s
	}
	ap := netip.MustParseAddrPort
	addr := netip.MustParseAddr

	cc, sc := conn("conn-client-v4"), conn("conn-server-v4")
	if cc.Family != afInet || cc.State != StateEstablished || cc.Local.Addr() != addr("10.55.0.1") ||
		cc.Remote != ap("10.55.0.2:5004") || exact && cc.Token != 1589239148 || cc.Token == 0 || cc.Info.Token != cc.Token ||
		cc.Info.Flags != InfoFlagRemoteKeyReceived || cc.Fallback || cc.InfoSize != 96 ||
		cc.Info.SubflowsTotal != 2 || cc.Info.Subflows != 1 || cc.Info.BytesSent != 5 || cc.Info.SubflowsMax != 8 ||
		cc.Inode == 0 || cc.Cookie == 0 || cc.CgroupID == 0 {
		t.Errorf("client connection: %+v", cc)
	}
	if sc.Local != cc.Remote || sc.Remote != cc.Local || sc.Token == cc.Token || exact && sc.Token != 2740865043 ||
		sc.Info.BytesReceived != 5 || sc.Info.SubflowsTotal != 2 {
		t.Errorf("server connection: %+v (client %+v)", sc, cc)
	}

	// Subflows name their connection's local token in TOKEN_LOC; the
	// client's joins also carry the peer's token in TOKEN_REM.
	ci, cj := sub("sf-client-initial-v4"), sub("sf-client-join-v4")
	si, sj := sub("sf-server-initial-v4"), sub("sf-server-join-v4")
	for _, s := range []Subflow{ci, cj} {
		if s.Token != cc.Token || s.Inode != cc.Inode {
			t.Errorf("client subflow %s: token %d inode %d, connection's %d %d", s.Local, s.Token, s.Inode, cc.Token, cc.Inode)
		}
	}
	for _, s := range []Subflow{si, sj} {
		if s.Token != sc.Token || s.Inode != sc.Inode || s.RemoteToken != 0 {
			t.Errorf("server subflow %s: %+v", s.Local, s)
		}
	}
	if ci.Local != cc.Local || ci.Remote != cc.Remote || ci.LocalID != 0 || ci.RemoteID != 0 || ci.RemoteToken != 0 ||
		ci.Flags != SubflowMPCapableRemote|SubflowMPCapableLocal|SubflowFullyEstablished|SubflowConnected ||
		ci.TCP.BytesSent != 5 || ci.TCP.SndMSS != 1448 || ci.TCP.RTT <= 0 {
		t.Errorf("client initial subflow: %+v", ci)
	}
	if cj.Local.Addr() != addr("10.55.1.1") || cj.Remote != cc.Remote || cj.LocalID != 1 || cj.RemoteID != 0 ||
		cj.RemoteToken != sc.Token || !cj.Backup || cj.BackupRemote || cj.Ifindex == 0 ||
		cj.Flags != SubflowJoinRemote|SubflowJoinLocal|SubflowBackupLocal|SubflowFullyEstablished|SubflowConnected {
		t.Errorf("client join: %+v", cj)
	}
	if si.Local != sc.Local || si.Remote != sc.Remote || si.LocalID != 0 ||
		si.Flags != SubflowMPCapableRemote|SubflowFullyEstablished|SubflowConnected || si.TCP.BytesReceived != 5 {
		t.Errorf("server initial subflow: %+v", si)
	}
	if sj.Local != sc.Local || sj.Remote != cj.Local || sj.LocalID != 0 || sj.RemoteID != 1 || sj.Backup || !sj.BackupRemote ||
		sj.Flags != SubflowJoinRemote|SubflowBackupRemote|SubflowFullyEstablished|SubflowConnected {
		t.Errorf("server join: %+v", sj)
	}

	c6, s6 := conn("conn-client-v6"), conn("conn-server-v6")
	if c6.Family != afInet6 || c6.Local.Addr() != addr("fd00:55::1") || c6.Remote != ap("[fd00:55::2]:5006") ||
		s6.Local != c6.Remote || s6.Remote != c6.Local || c6.Token == 0 || s6.Token == 0 || c6.Token == s6.Token {
		t.Errorf("IPv6 connection: %+v / %+v", c6, s6)
	}
	if s := sub("sf-client-initial-v6"); s.Token != c6.Token || s.Local != c6.Local || s.Family != afInet6 {
		t.Errorf("IPv6 client subflow: %+v", s)
	}
	if s := sub("sf-server-initial-v6"); s.Token != s6.Token || s.Local != s6.Local {
		t.Errorf("IPv6 server subflow: %+v", s)
	}
	if m := conn("conn-server-v4mapped"); m.Family != afInet6 || m.Local != ap("10.55.0.2:5046") || !m.Remote.Addr().Is4() {
		t.Errorf("IPv4 on an IPv6 socket: %+v", m)
	}

	for name, want := range map[string]netip.AddrPort{"conn-listener-v4": ap("10.55.0.2:5004"), "conn-listener-v6": ap("[fd00:55::2]:5006")} {
		l := conn(name)
		if l.State != StateListen || l.Local != want || l.Remote.Port() != 0 || !l.Remote.Addr().IsUnspecified() ||
			l.Token != 0 || l.SendQ != 4096 || l.Inode == 0 {
			t.Errorf("%s: %+v", name, l)
		}
	}
	for name, want := range map[string]netip.AddrPort{"sf-listener-v4": ap("10.55.0.2:5004"), "sf-listener-v6": ap("[fd00:55::2]:5006")} {
		if s := sub(name); s.State != StateListen || s.Local != want || s.Token != 0 || s.Flags != 0 {
			t.Errorf("%s: %+v", name, s)
		}
	}

	// A connection that fell back to TCP keeps its token and its subflow,
	// which records the MP_CAPABLE SYN it sent but no MP_CAPABLE answer.
	fb, fs := conn("conn-fallback"), sub("sf-client-fallback")
	if !fb.Fallback || fb.Info.Flags != InfoFlagFallback || fb.Remote != ap("10.55.0.2:7000") || fb.Token == 0 ||
		fs.Token != fb.Token || fs.Flags != SubflowMPCapableLocal|SubflowConnected {
		t.Errorf("fallback: %+v / %+v", fb, fs)
	}

	for _, name := range []string{"tcp-plain-client", "tcp-plain-server"} {
		if _, ok, err := decodeSubflow(raw[name]); ok || err != nil {
			t.Errorf("%s: ok %v, %v", name, ok, err)
		}
		if c, err := decodeConn(raw[name]); err != nil || c.InfoSize == 0 {
			t.Errorf("%s as a Conn: %+v, %v", name, c, err)
		}
	}

	// A whole dump: the server's IPv4 MPTCP sockets, then NLMSG_DONE.
	d0, d1 := raw["dgram-mptcp-server-v4-0"], raw["dgram-mptcp-server-v4-1"]
	seq := ne.Uint32(d0[8:])
	var got []Conn
	collect := func(p []byte) error {
		c, err := decodeConn(p)
		got = append(got, c)
		return err
	}
	if done, err := parseDump(d0, seq, collect); done || err != nil {
		t.Fatalf("datagram 0: done %v, %v", done, err)
	}
	if done, err := parseDump(d1, seq, collect); !done || err != nil {
		t.Fatalf("datagram 1: done %v, %v", done, err)
	}
	if len(got) != 2 || got[0] != sc || got[1].State != StateListen {
		t.Errorf("dump: %+v", got)
	}

	// The joined snapshot of the client's side.
	snap := join([]Conn{cc, fb}, []Subflow{ci, cj, fs, si})
	if c := snap.Conn(cc.Token); c == nil || len(c.Subflows) != 2 || c.Side != SideClient {
		t.Errorf("client snapshot: %+v", snap.Conns)
	}
	if c := snap.Conn(fb.Token); c == nil || len(c.Subflows) != 1 || c.Side != SideClient {
		t.Errorf("fallback snapshot: %+v", snap.Conns)
	}
	if len(snap.Unmatched) != 1 || snap.Unmatched[0] != si {
		t.Errorf("unmatched: %+v", snap.Unmatched)
	}
	srvSnap := join([]Conn{sc, conn("conn-listener-v4")}, []Subflow{sj, si})
	if c := srvSnap.Conn(sc.Token); c == nil || len(c.Subflows) != 2 || c.Side != SideServer || len(srvSnap.Listeners) != 1 {
		t.Errorf("server snapshot: %+v", srvSnap)
	}
}
