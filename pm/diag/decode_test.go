package diag

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fullInfo is a struct mptcp_info of Linux 6.10+ (96 bytes) with a
// distinct value in every field, laid out as in include/uapi/linux/mptcp.h.
func fullInfo() []byte {
	b := make([]byte, 96)
	copy(b[0:6], []byte{1, 2, 3, 4, 5, 6})
	ne.PutUint32(b[8:], 3) // fallback | remote_key_received
	ne.PutUint32(b[12:], 0xdeadbeef)
	ne.PutUint64(b[16:], 0x1111111111111111)
	ne.PutUint64(b[24:], 0x2222222222222222)
	ne.PutUint64(b[32:], 0x3333333333333333)
	b[40], b[41], b[42] = 7, 8, 1
	ne.PutUint32(b[44:], 9)
	ne.PutUint64(b[48:], 10)
	ne.PutUint64(b[56:], 11)
	ne.PutUint64(b[64:], 12)
	ne.PutUint64(b[72:], 13)
	b[80] = 14
	ne.PutUint32(b[84:], 15)
	ne.PutUint32(b[88:], 16)
	ne.PutUint32(b[92:], 17)
	return b
}

var fullInfoWant = Info{
	Subflows: 1, AddAddrSignal: 2, AddAddrAccepted: 3, SubflowsMax: 4, AddAddrSignalMax: 5, AddAddrAcceptedMax: 6,
	Flags: InfoFlagFallback | InfoFlagRemoteKeyReceived, Token: 0xdeadbeef,
	WriteSeq: 0x1111111111111111, SndUna: 0x2222222222222222, RcvNxt: 0x3333333333333333,
	LocalAddrUsed: 7, LocalAddrMax: 8, CsumEnabled: true, Retransmits: 9,
	BytesRetrans: 10, BytesSent: 11, BytesReceived: 12, BytesAcked: 13, SubflowsTotal: 14,
	LastDataSent: 15, LastDataRecv: 16, LastAckRecv: 17,
}

func TestDecodeConnHandMade(t *testing.T) {
	m := sockMsg{
		family: afInet, state: StateEstablished,
		local:   netip.MustParseAddrPort("10.0.0.1:40000"),
		remote:  netip.MustParseAddrPort("10.0.0.2:443"),
		ifindex: 7, cookie: 0x0102030405060708, rqueue: 11, wqueue: 12, uid: 1000, inode: 123456,
		attrs: [][]byte{
			attr(inetDiagShutdown, u8b(0)),
			attr(inetDiagPad, nil), // as nla_put_u64_64bit adds before an unaligned u64
			attr(inetDiagCgroupID, u64b(0xabcdef)),
			attr(inetDiagInfo, fullInfo()),
			attr(99, []byte("unknown attributes are skipped")),
		},
	}
	got, err := decodeConn(m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := Conn{
		Token: 0xdeadbeef, Family: afInet, State: StateEstablished,
		Local: m.local, Remote: m.remote, Ifindex: 7, Inode: 123456, UID: 1000,
		Cookie: 0x0102030405060708, CgroupID: 0xabcdef, RecvQ: 11, SendQ: 12,
		Info: fullInfoWant, InfoSize: 96, Fallback: true,
	}
	if got != want {
		t.Fatalf("decodeConn:\n got %+v\nwant %+v", got, want)
	}
}

func TestDecodeConnIPv6(t *testing.T) {
	for _, tc := range []struct{ local, remote, wantLocal, wantRemote string }{
		{"[fd00::1]:1", "[fd00::2]:2", "[fd00::1]:1", "[fd00::2]:2"},
		// An IPv6 socket carrying IPv4 reports mapped addresses.
		{"[::ffff:10.0.0.1]:1", "[::ffff:10.0.0.2]:2", "10.0.0.1:1", "10.0.0.2:2"},
		{"[::]:80", "[::]:0", "[::]:80", "[::]:0"},
	} {
		m := sockMsg{family: afInet6, state: StateListen,
			local: netip.MustParseAddrPort(tc.local), remote: netip.MustParseAddrPort(tc.remote)}
		got, err := decodeConn(m.bytes())
		if err != nil {
			t.Fatal(err)
		}
		if got.Local.String() != tc.wantLocal || got.Remote.String() != tc.wantRemote || got.Family != afInet6 {
			t.Errorf("%s -> %s: got %s -> %s family %d", tc.local, tc.remote, got.Local, got.Remote, got.Family)
		}
		if got.Local.Addr().Zone() != "" || got.InfoSize != 0 || got.Token != 0 || got.Info != (Info{}) {
			t.Errorf("unexpected %+v", got)
		}
	}
}

// TestDecodeInfoLengths checks that a short struct mptcp_info, as older
// kernels send (43..48 bytes before 6.5, 80 in 6.5, 84 in 6.6), decodes the
// fields it holds whole and leaves the others zero, and that a longer one
// (a future kernel) decodes as the known prefix.
func TestDecodeInfoLengths(t *testing.T) {
	full := fullInfo()
	fields := []struct {
		name string
		end  int
		get  func(Info) uint64
	}{
		{"Subflows", 1, func(i Info) uint64 { return uint64(i.Subflows) }},
		{"AddAddrAcceptedMax", 6, func(i Info) uint64 { return uint64(i.AddAddrAcceptedMax) }},
		{"Flags", 12, func(i Info) uint64 { return uint64(i.Flags) }},
		{"Token", 16, func(i Info) uint64 { return uint64(i.Token) }},
		{"WriteSeq", 24, func(i Info) uint64 { return i.WriteSeq }},
		{"RcvNxt", 40, func(i Info) uint64 { return i.RcvNxt }},
		{"LocalAddrUsed", 41, func(i Info) uint64 { return uint64(i.LocalAddrUsed) }},
		{"CsumEnabled", 43, func(i Info) uint64 {
			if i.CsumEnabled {
				return 1
			}
			return 0
		}},
		{"Retransmits", 48, func(i Info) uint64 { return uint64(i.Retransmits) }},
		{"BytesRetrans", 56, func(i Info) uint64 { return i.BytesRetrans }},
		{"BytesAcked", 80, func(i Info) uint64 { return i.BytesAcked }},
		{"SubflowsTotal", 81, func(i Info) uint64 { return uint64(i.SubflowsTotal) }},
		{"LastDataSent", 88, func(i Info) uint64 { return uint64(i.LastDataSent) }},
		{"LastAckRecv", 96, func(i Info) uint64 { return uint64(i.LastAckRecv) }},
	}
	long := append(append([]byte(nil), full...), bytes.Repeat([]byte{0xff}, 24)...)
	if got := decodeInfo(long); got != fullInfoWant {
		t.Errorf("120-byte info: got %+v", got)
	}
	for n := 0; n <= len(full); n++ {
		got := decodeInfo(full[:n])
		wantAll := fullInfoWant
		for _, f := range fields {
			v := f.get(got)
			if n >= f.end && v != f.get(wantAll) {
				t.Errorf("len %d: %s = %d, want %d", n, f.name, v, f.get(wantAll))
			}
			if n < f.end && v != 0 {
				t.Errorf("len %d: %s = %d, want 0 (not sent)", n, f.name, v)
			}
		}
	}
}

func TestDecodeConnMalformed(t *testing.T) {
	good := sockMsg{family: afInet, state: StateEstablished,
		local: netip.MustParseAddrPort("1.2.3.4:5"), remote: netip.MustParseAddrPort("5.6.7.8:9"),
		attrs: [][]byte{attr(inetDiagInfo, fullInfo())}}.bytes()
	for name, b := range map[string][]byte{
		"empty":              nil,
		"short header":       good[:diagMsgLen-1],
		"unknown family":     append([]byte{1}, good[1:]...),
		"attr past the end":  good[:len(good)-4],
		"attr length 2":      append(good[:diagMsgLen:diagMsgLen], 2, 0, 2, 0),
		"3 trailing bytes":   append(good[:diagMsgLen:diagMsgLen], 4, 0, 2),
		"attr length > rest": append(good[:diagMsgLen:diagMsgLen], 200, 0, 2, 0, 0, 0, 0, 0),
	} {
		if _, err := decodeConn(b); !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want errMalformed", name, err)
		}
		if _, _, err := decodeSubflow(b); !errors.Is(err, errMalformed) {
			t.Errorf("%s: subflow err = %v, want errMalformed", name, err)
		}
	}
	// A header alone (a time-wait socket's reply) is fine.
	if c, err := decodeConn(good[:diagMsgLen]); err != nil || c.InfoSize != 0 {
		t.Errorf("header only: %+v, %v", c, err)
	}
}

// subflowAttrs is a complete INET_DIAG_ULP_INFO nest of a subflow.
func subflowAttrs(flags SubflowFlags) []byte {
	return nest(inetDiagULPInfo,
		attr(ulpInfoName, []byte("mptcp\x00")),
		nest(ulpInfoMPTCP|0x8000, // NLA_F_NESTED, which the kernel omits but may add
			attr(sfAttrTokenRem, u32b(0x11111111)),
			attr(sfAttrTokenLoc, u32b(0x22222222)),
			attr(sfAttrRelWriteSeq, u32b(3)),
			attr(11, nil), // MPTCP_SUBFLOW_ATTR_PAD
			attr(sfAttrMapSeq, u64b(0x4444444444444444)),
			attr(sfAttrMapSfSeq, u32b(5)),
			attr(sfAttrSSNOffset, u32b(6)),
			attr(sfAttrMapDataLen, u16b(7)),
			attr(sfAttrFlags, u32b(uint32(flags))),
			attr(sfAttrIDRem, u8b(9)),
			attr(sfAttrIDLoc, u8b(10)),
		))
}

func TestDecodeSubflowHandMade(t *testing.T) {
	tcpInfo := make([]byte, 232)
	ne.PutUint32(tcpInfo[tcpiSndMSS:], 1448)
	ne.PutUint32(tcpInfo[tcpiRTT:], 1500)
	ne.PutUint32(tcpInfo[tcpiRTTVar:], 250)
	ne.PutUint32(tcpInfo[tcpiSndCwnd:], 10)
	ne.PutUint32(tcpInfo[tcpiTotalRetrans:], 2)
	ne.PutUint64(tcpInfo[tcpiBytesAcked:], 1000)
	ne.PutUint64(tcpInfo[tcpiBytesReceived:], 2000)
	ne.PutUint32(tcpInfo[tcpiMinRTT:], 900)
	ne.PutUint64(tcpInfo[tcpiBytesSent:], 3000)
	ne.PutUint64(tcpInfo[tcpiBytesRetrans:], 40)
	flags := SubflowJoinLocal | SubflowJoinRemote | SubflowBackupLocal | SubflowConnected
	m := sockMsg{
		family: afInet6, state: StateEstablished,
		local:   netip.MustParseAddrPort("[fd00::1]:1234"),
		remote:  netip.MustParseAddrPort("[fd00::2]:80"),
		ifindex: 3, cookie: 99, uid: 5, inode: 77,
		attrs: [][]byte{attr(inetDiagInfo, tcpInfo), subflowAttrs(flags)},
	}
	got, ok, err := decodeSubflow(m.bytes())
	if err != nil || !ok {
		t.Fatalf("decodeSubflow: ok %v, %v", ok, err)
	}
	want := Subflow{
		Token: 0x22222222, RemoteToken: 0x11111111, LocalID: 10, RemoteID: 9, Flags: flags,
		Backup: true, BackupRemote: false, Family: afInet6, State: StateEstablished,
		Local: m.local, Remote: m.remote, Ifindex: 3, Inode: 77, UID: 5, Cookie: 99,
		RelWriteSeq: 3, MapSeq: 0x4444444444444444, MapSubflowSeq: 5, SSNOffset: 6, MapDataLen: 7,
		TCP: TCPInfo{RTT: 1500 * time.Microsecond, RTTVar: 250 * time.Microsecond, MinRTT: 900 * time.Microsecond,
			SndMSS: 1448, SndCwnd: 10, TotalRetrans: 2, BytesAcked: 1000, BytesReceived: 2000, BytesSent: 3000, BytesRetrans: 40},
	}
	if got != want {
		t.Fatalf("decodeSubflow:\n got %+v\nwant %+v", got, want)
	}
	// BKUP_REM alone: the peer's backup flag.
	m.attrs = [][]byte{subflowAttrs(SubflowBackupRemote)}
	got, _, _ = decodeSubflow(m.bytes())
	if got.Backup || !got.BackupRemote || got.TCP != (TCPInfo{}) {
		t.Errorf("BKUP_REM: %+v", got)
	}
}

func TestDecodeSubflowSkipsOthers(t *testing.T) {
	base := sockMsg{family: afInet, state: StateEstablished,
		local: netip.MustParseAddrPort("1.1.1.1:1"), remote: netip.MustParseAddrPort("2.2.2.2:2")}
	for name, attrs := range map[string][][]byte{
		"no attributes (time-wait, request socket)": nil,
		"tcp_info only (plain TCP)":                 {attr(inetDiagInfo, make([]byte, 232))},
		"another ULP":                               {nest(inetDiagULPInfo, attr(ulpInfoName, []byte("tls\x00")), nest(2, attr(1, u16b(0x0303))))},
		"ULP without name":                          {nest(inetDiagULPInfo, nest(ulpInfoMPTCP, attr(sfAttrTokenLoc, u32b(1))))},
		"mptcp as a prefix only":                    {nest(inetDiagULPInfo, attr(ulpInfoName, []byte("mptcpx\x00")))},
	} {
		m := base
		m.attrs = attrs
		if sf, ok, err := decodeSubflow(m.bytes()); ok || err != nil || sf != (Subflow{}) {
			t.Errorf("%s: ok %v, %v, %+v", name, ok, err, sf)
		}
	}
	// A listening subflow: the name, no MPTCP nest.
	m := base
	m.state = StateListen
	m.attrs = [][]byte{nest(inetDiagULPInfo, attr(ulpInfoName, []byte("mptcp\x00")))}
	sf, ok, err := decodeSubflow(m.bytes())
	if !ok || err != nil || sf.Token != 0 || sf.State != StateListen || sf.Local != base.local {
		t.Errorf("listener: ok %v, %v, %+v", ok, err, sf)
	}
	// A broken nest inside the ULP info is an error.
	m.attrs = [][]byte{nest(inetDiagULPInfo, attr(ulpInfoName, []byte("mptcp\x00")), []byte{9, 0, 3, 0, 1, 2, 3, 4})}
	if _, _, err := decodeSubflow(m.bytes()); !errors.Is(err, errMalformed) {
		t.Errorf("broken nest: %v", err)
	}
}

func TestDecodeTCPInfoMinRTTUnknown(t *testing.T) {
	b := make([]byte, 232)
	ne.PutUint32(b[tcpiMinRTT:], ^uint32(0))
	if got := decodeTCPInfo(b).MinRTT; got != 0 {
		t.Errorf("MinRTT = %v, want 0 for ~0U", got)
	}
	if got := decodeTCPInfo(b[:100]); got != (TCPInfo{RTT: 0, SndMSS: 0}) {
		t.Errorf("short tcp_info: %+v", got)
	}
}

func TestAppendRequest(t *testing.T) {
	// What ss -M sends (strace of iproute2 6.1): IPPROTO_MPTCP does not fit
	// the u8 sdiag_protocol, which gets its low byte (6, IPPROTO_TCP); the
	// INET_DIAG_REQ_PROTOCOL attribute carries 262.
	got := appendRequest([]byte("prefix"), 0x01020304, afInet, ipprotoMPTCP, extInfo, NotListening)
	want := "50000000" + "1400" + "0103" + "04030201" + "00000000" + // nlmsghdr: 80 bytes, type 20, REQUEST|DUMP, seq
		"02" + "06" + "02" + "00" + "fffbffff" + // family, protocol, ext INFO, pad, states
		strings.Repeat("00", 48) + // socket id
		"0800" + "0300" + "06010000" // INET_DIAG_REQ_PROTOCOL 262
	if string(got[:6]) != "prefix" || hex.EncodeToString(got[6:]) != want {
		t.Fatalf("MPTCP request:\n got %x\nwant %s", got[6:], want)
	}
	got = appendRequest(nil, 7, afInet6, ipprotoTCP, 0, States(StateEstablished, StateListen))
	want = "48000000" + "1400" + "0103" + "07000000" + "00000000" +
		"0a" + "06" + "00" + "00" + "02040000" + strings.Repeat("00", 48)
	if hex.EncodeToString(got) != want {
		t.Fatalf("TCP request:\n got %x\nwant %s", got, want)
	}
}

func TestParseDump(t *testing.T) {
	p1 := sockMsg{family: afInet, state: StateEstablished}.bytes()
	p2 := append(sockMsg{family: afInet, state: StateListen}.bytes(), 0xaa) // unaligned length
	done := nlmsg(nlmsgDone, 2, 5, u32b(0))
	dgram := bytes.Join([][]byte{
		nlmsg(sockDiagByFamily, 2, 5, p1),
		nlmsg(sockDiagByFamily, 2, 4, p1), // a previous dump's leftover
		nlmsg(nlmsgNoop, 0, 5, nil),
		nlmsg(sockDiagByFamily, 2, 5, p2),
	}, nil)
	var got [][]byte
	collect := func(p []byte) error { got = append(got, p); return nil }
	fin, err := parseDump(dgram, 5, collect)
	if err != nil || fin || len(got) != 2 || !bytes.Equal(got[0], p1) || !bytes.Equal(got[1], p2) {
		t.Fatalf("parseDump: done %v err %v payloads %d", fin, err, len(got))
	}
	if fin, err := parseDump(append(append([]byte(nil), dgram...), done...), 5, collect); !fin || err != nil {
		t.Errorf("with NLMSG_DONE: done %v err %v", fin, err)
	}
	if fin, err := parseDump(nlmsg(nlmsgDone, 2, 4, u32b(0)), 5, collect); fin || err != nil {
		t.Errorf("another dump's NLMSG_DONE: done %v err %v", fin, err)
	}
	// The kernel's errors: in an NLMSG_ERROR, or a negative NLMSG_DONE.
	for _, b := range [][]byte{
		nlmsg(nlmsgError, 0, 5, append(u32b(negErrno(syscall.ENOENT)), make([]byte, 16)...)),
		nlmsg(nlmsgDone, 2, 5, u32b(negErrno(syscall.ENOENT))),
	} {
		if fin, err := parseDump(b, 5, collect); !fin || !errors.Is(err, syscall.ENOENT) {
			t.Errorf("error message: done %v err %v", fin, err)
		}
	}
	// An acknowledgement is not an error.
	if fin, err := parseDump(nlmsg(nlmsgError, 0, 5, make([]byte, 20)), 5, collect); fin || err != nil {
		t.Errorf("ack: done %v err %v", fin, err)
	}
	// fn's error ends the walk.
	boom := errors.New("boom")
	if _, err := parseDump(dgram, 5, func([]byte) error { return boom }); err != boom {
		t.Errorf("fn error: %v", err)
	}
	for name, b := range map[string][]byte{
		"short header":    dgram[:10],
		"length too big":  append(u32b(1000), dgram[4:]...),
		"length below 16": append(u32b(8), dgram[4:]...),
		"short error":     nlmsg(nlmsgError, 0, 5, []byte{1}),
	} {
		if _, err := parseDump(b, 5, collect); !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want errMalformed", name, err)
		}
	}
}

func TestStrings(t *testing.T) {
	for s, want := range map[State]string{
		StateEstablished: "ESTABLISHED", StateSynSent: "SYN_SENT", StateListen: "LISTEN",
		StateCloseWait: "CLOSE_WAIT", StateTimeWait: "TIME_WAIT", StateNewSynRecv: "NEW_SYN_RECV",
		0: "STATE(0)", 200: "STATE(200)",
	} {
		if got := s.String(); got != want {
			t.Errorf("State(%d) = %q, want %q", s, got, want)
		}
	}
	if got := (SubflowMPCapableRemote | SubflowMPCapableLocal | SubflowConnected | 1<<12).String(); got != "mcap_rem,mcap_loc,connected,0x1000" {
		t.Errorf("SubflowFlags: %q", got)
	}
	if got := (InfoFlagFallback | InfoFlagRemoteKeyReceived).String(); got != "fallback,remote_key_received" {
		t.Errorf("InfoFlags: %q", got)
	}
	if got := SideServer.String() + SideClient.String() + SideUnknown.String(); got != "serverclientunknown" {
		t.Errorf("Side: %q", got)
	}
	m := States(StateEstablished, StateSynSent, 40)
	if !m.Has(StateEstablished) || m.Has(StateListen) || m.Has(40) || NotListening.Has(StateListen) ||
		!NotListening.Has(StateCloseWait) || !Listening.Has(StateListen) || !AllStates.Has(StateListen) {
		t.Errorf("StateMask: %#x", m)
	}
}

func negErrno(e syscall.Errno) uint32 { return uint32(-int32(e)) }
