package diag

import (
	"fmt"
	"net/netip"
	"time"
)

// sockHeader is the decoded struct inet_diag_msg.
type sockHeader struct {
	family        uint8
	state         State
	local, remote netip.AddrPort
	ifindex       uint32
	cookie        uint64
	rqueue        uint32
	wqueue        uint32
	uid           uint32
	inode         uint64
}

// decodeHeader decodes the struct inet_diag_msg at the start of b:
//
//	0  u8 family, u8 state, u8 timer, u8 retrans
//	4  be16 sport, be16 dport, be32 src[4], be32 dst[4]
//	40 u32 if, u32 cookie[2]
//	52 u32 expires, rqueue, wqueue, uid, inode
func decodeHeader(b []byte) (sockHeader, error) {
	var h sockHeader
	if len(b) < diagMsgLen {
		return h, fmt.Errorf("%w: inet_diag_msg of %d bytes", errMalformed, len(b))
	}
	h.family = b[0]
	h.state = State(b[1])
	sport := uint16(b[4])<<8 | uint16(b[5])
	dport := uint16(b[6])<<8 | uint16(b[7])
	var src, dst netip.Addr
	switch h.family {
	case afInet:
		src = netip.AddrFrom4([4]byte(b[8:12]))
		dst = netip.AddrFrom4([4]byte(b[24:28]))
	case afInet6:
		src = netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		dst = netip.AddrFrom16([16]byte(b[24:40])).Unmap()
	default:
		return h, fmt.Errorf("%w: address family %d", errMalformed, h.family)
	}
	h.local = netip.AddrPortFrom(src, sport)
	h.remote = netip.AddrPortFrom(dst, dport)
	h.ifindex = ne.Uint32(b[40:])
	h.cookie = uint64(ne.Uint32(b[44:])) | uint64(ne.Uint32(b[48:]))<<32
	h.rqueue = ne.Uint32(b[56:])
	h.wqueue = ne.Uint32(b[60:])
	h.uid = ne.Uint32(b[64:])
	h.inode = uint64(ne.Uint32(b[68:]))
	return h, nil
}

// decodeConn decodes the payload of one reply to an MPTCP dump: a struct
// inet_diag_msg and its attributes. On error the Conn is zero.
func decodeConn(b []byte) (Conn, error) {
	var c Conn
	h, err := decodeHeader(b)
	if err != nil {
		return Conn{}, err
	}
	c.Family = h.family
	c.State = h.state
	c.Local, c.Remote = h.local, h.remote
	c.Ifindex = h.ifindex
	c.Cookie = h.cookie
	c.RecvQ, c.SendQ = h.rqueue, h.wqueue
	c.UID = h.uid
	c.Inode = h.inode
	a := attrIter{b: b[diagMsgLen:]}
	for a.next() {
		switch a.typ {
		case inetDiagInfo:
			c.Info = decodeInfo(a.val)
			c.InfoSize = len(a.val)
		case inetDiagCgroupID:
			if len(a.val) >= 8 {
				c.CgroupID = ne.Uint64(a.val)
			}
		}
	}
	if a.err != nil {
		return Conn{}, a.err
	}
	c.Token = c.Info.Token
	c.Fallback = c.Info.Flags&InfoFlagFallback != 0
	return c, nil
}

// decodeInfo decodes a struct mptcp_info of any length: the fields that b
// does not hold entirely are zero. Offsets:
//
//	0  u8 subflows, add_addr_signal, add_addr_accepted, subflows_max,
//	   add_addr_signal_max, add_addr_accepted_max (2 bytes hole)
//	8  u32 flags, token
//	16 u64 write_seq, snd_una, rcv_nxt
//	40 u8 local_addr_used, local_addr_max, csum_enabled (1 byte hole)
//	44 u32 retransmits
//	48 u64 bytes_retrans, bytes_sent, bytes_received, bytes_acked
//	80 u8 subflows_total (3 bytes)
//	84 u32 last_data_sent, last_data_recv, last_ack_recv
func decodeInfo(b []byte) Info {
	f := fields(b)
	var i Info
	i.Subflows = f.u8(0)
	i.AddAddrSignal = f.u8(1)
	i.AddAddrAccepted = f.u8(2)
	i.SubflowsMax = f.u8(3)
	i.AddAddrSignalMax = f.u8(4)
	i.AddAddrAcceptedMax = f.u8(5)
	i.Flags = InfoFlags(f.u32(8))
	i.Token = f.u32(12)
	i.WriteSeq = f.u64(16)
	i.SndUna = f.u64(24)
	i.RcvNxt = f.u64(32)
	i.LocalAddrUsed = f.u8(40)
	i.LocalAddrMax = f.u8(41)
	i.CsumEnabled = f.u8(42) != 0
	i.Retransmits = f.u32(44)
	i.BytesRetrans = f.u64(48)
	i.BytesSent = f.u64(56)
	i.BytesReceived = f.u64(64)
	i.BytesAcked = f.u64(72)
	i.SubflowsTotal = f.u8(80)
	i.LastDataSent = f.u32(84)
	i.LastDataRecv = f.u32(88)
	i.LastAckRecv = f.u32(92)
	return i
}

// decodeSubflow decodes the payload of one reply to a TCP dump that asked
// for INET_DIAG_INFO. ok is false for a TCP socket whose ULP is not
// "mptcp" (a plain TCP socket, a request or time-wait socket). Unless ok,
// the Subflow is zero.
func decodeSubflow(b []byte) (s Subflow, ok bool, err error) {
	h, err := decodeHeader(b)
	if err != nil {
		return Subflow{}, false, err
	}
	a := attrIter{b: b[diagMsgLen:]}
	for a.next() {
		switch a.typ {
		case inetDiagInfo:
			s.TCP = decodeTCPInfo(a.val)
		case inetDiagULPInfo:
			ok, err = decodeULP(a.val, &s)
			if err != nil {
				return Subflow{}, false, err
			}
		}
	}
	if a.err != nil {
		return Subflow{}, false, a.err
	}
	if !ok {
		return Subflow{}, false, nil
	}
	s.Family = h.family
	s.State = h.state
	s.Local, s.Remote = h.local, h.remote
	s.Ifindex = h.ifindex
	s.Cookie = h.cookie
	s.UID = h.uid
	s.Inode = h.inode
	s.Backup = s.Flags&SubflowBackupLocal != 0
	s.BackupRemote = s.Flags&SubflowBackupRemote != 0
	return s, true, nil
}

// decodeULP decodes an INET_DIAG_ULP_INFO nest into s and reports whether
// the ULP is "mptcp". A listening subflow has the name but no
// INET_ULP_INFO_MPTCP nest.
func decodeULP(b []byte, s *Subflow) (bool, error) {
	var isMPTCP bool
	var mp []byte
	a := attrIter{b: b}
	for a.next() {
		switch a.typ {
		case ulpInfoName:
			v := a.val
			for len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			isMPTCP = string(v) == "mptcp"
		case ulpInfoMPTCP:
			mp = a.val
		}
	}
	if a.err != nil {
		return false, a.err
	}
	if !isMPTCP {
		return false, nil
	}
	a = attrIter{b: mp}
	for a.next() {
		v := a.val
		switch a.typ {
		case sfAttrTokenRem:
			s.RemoteToken = attrU32(v)
		case sfAttrTokenLoc:
			s.Token = attrU32(v)
		case sfAttrRelWriteSeq:
			s.RelWriteSeq = attrU32(v)
		case sfAttrMapSeq:
			if len(v) >= 8 {
				s.MapSeq = ne.Uint64(v)
			}
		case sfAttrMapSfSeq:
			s.MapSubflowSeq = attrU32(v)
		case sfAttrSSNOffset:
			s.SSNOffset = attrU32(v)
		case sfAttrMapDataLen:
			if len(v) >= 2 {
				s.MapDataLen = ne.Uint16(v)
			}
		case sfAttrFlags:
			s.Flags = SubflowFlags(attrU32(v))
		case sfAttrIDRem:
			if len(v) >= 1 {
				s.RemoteID = v[0]
			}
		case sfAttrIDLoc:
			if len(v) >= 1 {
				s.LocalID = v[0]
			}
		}
	}
	return true, a.err
}

func attrU32(v []byte) uint32 {
	if len(v) >= 4 {
		return ne.Uint32(v)
	}
	return 0
}

// Offsets in struct tcp_info (include/uapi/linux/tcp.h).
const (
	tcpiRetransmits   = 2
	tcpiUnacked       = 24
	tcpiLastDataSent  = 44
	tcpiLastAckRecv   = 56
	tcpiSndMSS        = 16
	tcpiRTT           = 68
	tcpiRTTVar        = 72
	tcpiSndCwnd       = 80
	tcpiTotalRetrans  = 100
	tcpiBytesAcked    = 120
	tcpiBytesReceived = 128
	tcpiMinRTT        = 148
	tcpiBytesSent     = 200
	tcpiBytesRetrans  = 208
)

// decodeTCPInfo decodes a few fields of a struct tcp_info of any length.
func decodeTCPInfo(b []byte) TCPInfo {
	f := fields(b)
	us := func(off int) time.Duration {
		v := f.u32(off)
		if v == ^uint32(0) { // tcpi_min_rtt before the first sample
			return 0
		}
		return time.Duration(v) * time.Microsecond
	}
	ms := func(off int) time.Duration { return time.Duration(f.u32(off)) * time.Millisecond }
	return TCPInfo{
		Retransmits:   f.u8(tcpiRetransmits),
		Unacked:       f.u32(tcpiUnacked),
		LastDataSent:  ms(tcpiLastDataSent),
		LastAckRecv:   ms(tcpiLastAckRecv),
		RTT:           us(tcpiRTT),
		RTTVar:        us(tcpiRTTVar),
		MinRTT:        us(tcpiMinRTT),
		SndMSS:        f.u32(tcpiSndMSS),
		SndCwnd:       f.u32(tcpiSndCwnd),
		TotalRetrans:  f.u32(tcpiTotalRetrans),
		BytesAcked:    f.u64(tcpiBytesAcked),
		BytesReceived: f.u64(tcpiBytesReceived),
		BytesSent:     f.u64(tcpiBytesSent),
		BytesRetrans:  f.u64(tcpiBytesRetrans),
	}
}

// fields reads the native-endian fields of a struct that the kernel may
// send shorter than this package knows it: a field past the end reads 0.
type fields []byte

func (b fields) u8(off int) uint8 {
	if off < len(b) {
		return b[off]
	}
	return 0
}

func (b fields) u32(off int) uint32 {
	if off+4 <= len(b) {
		return ne.Uint32(b[off:])
	}
	return 0
}

func (b fields) u64(off int) uint64 {
	if off+8 <= len(b) {
		return ne.Uint64(b[off:])
	}
	return 0
}
