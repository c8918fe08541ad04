package diag

import (
	"net/netip"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to every decoder: as a message payload
// (decodeConn, decodeSubflow, decodeInfo, decodeTCPInfo) and as a datagram
// (parseDump, decoding each payload it yields). None may panic, and the
// results must be consistent.
func FuzzDecode(f *testing.F) {
	for _, b := range loadCaptured(f) {
		f.Add(b)
	}
	ap := netip.MustParseAddrPort
	seeds := [][]byte{
		sockMsg{family: afInet, state: StateEstablished, local: ap("1.2.3.4:5"), remote: ap("6.7.8.9:10"),
			attrs: [][]byte{attr(inetDiagInfo, fullInfo()), attr(inetDiagCgroupID, u64b(1))}}.bytes(),
		sockMsg{family: afInet6, state: StateEstablished, local: ap("[fd00::1]:5"), remote: ap("[::ffff:1.2.3.4]:10"),
			attrs: [][]byte{attr(inetDiagInfo, make([]byte, 232)), subflowAttrs(SubflowBackupLocal)}}.bytes(),
	}
	for _, s := range seeds {
		f.Add(s)
		f.Add(nlmsg(sockDiagByFamily, 2, 1, s))
	}
	f.Add(nlmsg(nlmsgDone, 2, 1, u32b(0)))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkPayload(t, b)
		_ = decodeInfo(b)
		_ = decodeTCPInfo(b)
		var seq uint32
		if len(b) >= nlmsgHdrLen {
			seq = ne.Uint32(b[8:])
		}
		_, _ = parseDump(b, seq, func(p []byte) error {
			checkPayload(t, p)
			return nil
		})
	})
}

func checkPayload(t *testing.T, b []byte) {
	c, err := decodeConn(b)
	if err != nil && c != (Conn{}) {
		t.Fatalf("error %v but %+v", err, c)
	}
	if err == nil {
		if c.Token != c.Info.Token || c.Fallback != (c.Info.Flags&InfoFlagFallback != 0) {
			t.Fatalf("inconsistent Conn %+v", c)
		}
		if !c.Local.IsValid() || !c.Remote.IsValid() || c.Local.Addr().Is4In6() || c.Local.Addr().Zone() != "" {
			t.Fatalf("bad addresses %s %s", c.Local, c.Remote)
		}
		if c.Family == afInet && !c.Local.Addr().Is4() {
			t.Fatalf("AF_INET with %s", c.Local)
		}
	}
	s, ok, err := decodeSubflow(b)
	if (err != nil || !ok) && s != (Subflow{}) {
		t.Fatalf("not a subflow (ok %v, %v) but %+v", ok, err, s)
	}
	if ok {
		if s.Backup != (s.Flags&SubflowBackupLocal != 0) || s.BackupRemote != (s.Flags&SubflowBackupRemote != 0) {
			t.Fatalf("inconsistent Subflow %+v", s)
		}
		if !s.Local.IsValid() || s.Local.Addr().Is4In6() {
			t.Fatalf("bad address %s", s.Local)
		}
	}
}
