package diag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// Wire constants of netlink (linux/netlink.h), sock_diag (linux/sock_diag.h)
// and inet_diag (linux/inet_diag.h). Integers are in host byte order except
// ports and addresses, which are in network byte order.
const (
	netlinkSockDiag = 4 // NETLINK_SOCK_DIAG

	nlmsgHdrLen = 16 // struct nlmsghdr
	nlmsgNoop   = 1  // NLMSG_NOOP
	nlmsgError  = 2  // NLMSG_ERROR
	nlmsgDone   = 3  // NLMSG_DONE

	nlmFRequest  = 0x1   // NLM_F_REQUEST
	nlmFDumpIntr = 0x10  // NLM_F_DUMP_INTR
	nlmFDump     = 0x300 // NLM_F_ROOT|NLM_F_MATCH

	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY

	afInet  = 2  // AF_INET
	afInet6 = 10 // AF_INET6

	ipprotoTCP   = 6
	ipprotoMPTCP = 262

	reqV2Len   = 56 // struct inet_diag_req_v2
	diagMsgLen = 72 // struct inet_diag_msg

	inetDiagReqProtocol = 3 // INET_DIAG_REQ_PROTOCOL, u32

	// Attributes of a reply (INET_DIAG_*).
	inetDiagInfo     = 2
	inetDiagShutdown = 8
	inetDiagProtocol = 10
	inetDiagPad      = 14
	inetDiagULPInfo  = 19
	inetDiagCgroupID = 21

	// Attributes of the INET_DIAG_ULP_INFO nest (INET_ULP_INFO_*).
	ulpInfoName  = 1
	ulpInfoMPTCP = 3

	// Attributes of the INET_ULP_INFO_MPTCP nest (MPTCP_SUBFLOW_ATTR_*).
	sfAttrTokenRem    = 1
	sfAttrTokenLoc    = 2
	sfAttrRelWriteSeq = 3
	sfAttrMapSeq      = 4
	sfAttrMapSfSeq    = 5
	sfAttrSSNOffset   = 6
	sfAttrMapDataLen  = 7
	sfAttrFlags       = 8
	sfAttrIDRem       = 9
	sfAttrIDLoc       = 10

	nlaTypeMask = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER

	// extInfo is the idiag_ext bit that asks for INET_DIAG_INFO: the
	// protocol's info struct and, for TCP, the ULP's info (the latter only
	// for a requester with CAP_NET_ADMIN in the namespace's user namespace).
	extInfo = 1 << (inetDiagInfo - 1)
)

var ne = binary.NativeEndian

// errMalformed is wrapped by the errors for messages that do not parse.
var errMalformed = errors.New("malformed message")

func align4(n int) int { return (n + 3) &^ 3 }

// appendRequest appends a dump request for sockets of one family and
// protocol in the given states, asking for the extensions in ext. A
// protocol above 255 (IPPROTO_MPTCP) does not fit the request's u8
// sdiag_protocol: like ss, it puts the low byte there and the whole number
// in an INET_DIAG_REQ_PROTOCOL attribute, which the kernel prefers.
func appendRequest(b []byte, seq uint32, family uint8, protocol uint16, ext uint8, states StateMask) []byte {
	n := nlmsgHdrLen + reqV2Len
	if protocol > 0xff {
		n += 8
	}
	start := len(b)
	b = append(b, make([]byte, n)...)
	m := b[start:]
	ne.PutUint32(m[0:], uint32(n))
	ne.PutUint16(m[4:], sockDiagByFamily)
	ne.PutUint16(m[6:], nlmFRequest|nlmFDump)
	ne.PutUint32(m[8:], seq)
	// m[12:16] nlmsg_pid 0: the kernel fills in the socket's port id.
	r := m[nlmsgHdrLen:]
	r[0] = family
	r[1] = uint8(protocol)
	r[2] = ext
	ne.PutUint32(r[4:], uint32(states))
	// The socket id (r[8:56]) stays zero: no filter. Its cookie would have
	// to be INET_DIAG_NOCOOKIE only for exact lookups, not for dumps.
	if protocol > 0xff {
		a := r[reqV2Len:]
		ne.PutUint16(a[0:], 8)
		ne.PutUint16(a[2:], inetDiagReqProtocol)
		ne.PutUint32(a[4:], uint32(protocol))
	}
	return b
}

// parseDump walks one datagram of a dump's replies. It calls fn with the
// payload (the struct inet_diag_msg and its attributes) of each
// SOCK_DIAG_BY_FAMILY message whose sequence number is seq and ignores
// messages of other sequence numbers (leftovers of an abandoned dump). It
// reports done when the datagram holds the dump's NLMSG_DONE, and returns
// the kernel's error from an NLMSG_ERROR or a negative NLMSG_DONE as a
// syscall.Errno. An error returned by fn ends the walk and is returned.
func parseDump(b []byte, seq uint32, fn func(payload []byte) error) (done bool, err error) {
	err = walkMessages(b, func(typ uint16, s uint32, p []byte) error {
		if s != seq {
			return nil
		}
		switch typ {
		case sockDiagByFamily:
			return fn(p)
		case nlmsgDone:
			done = true
			if len(p) >= 4 {
				if e := int32(ne.Uint32(p)); e < 0 {
					return syscall.Errno(-e)
				}
			}
			return errDone
		case nlmsgError:
			done = true
			if len(p) < 4 {
				return fmt.Errorf("%w: short NLMSG_ERROR", errMalformed)
			}
			if e := int32(ne.Uint32(p)); e < 0 {
				return syscall.Errno(-e)
			}
			done = false // an acknowledgement: a dump does not send one, ignore it
		}
		return nil
	})
	if err == errDone {
		err = nil
	}
	return done, err
}

// errDone ends parseDump's walk at the dump's end.
var errDone = errors.New("diag: end of dump")

// walkMessages calls fn with the type, sequence number and payload of each
// netlink message of datagram b, until fn returns an error, which it
// returns.
func walkMessages(b []byte, fn func(typ uint16, seq uint32, payload []byte) error) error {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return fmt.Errorf("%w: %d trailing bytes", errMalformed, len(b))
		}
		l := int(ne.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			return fmt.Errorf("%w: netlink message length %d of %d bytes", errMalformed, l, len(b))
		}
		typ := ne.Uint16(b[4:])
		s := ne.Uint32(b[8:])
		p := b[nlmsgHdrLen:l]
		if adv := align4(l); adv < len(b) {
			b = b[adv:]
		} else {
			b = nil
		}
		if err := fn(typ, s, p); err != nil {
			return err
		}
	}
	return nil
}

// attrIter walks netlink attributes without allocating.
type attrIter struct {
	b   []byte
	typ uint16
	val []byte
	err error
}

func (a *attrIter) next() bool {
	if len(a.b) == 0 || a.err != nil {
		return false
	}
	if len(a.b) < 4 {
		a.err = fmt.Errorf("%w: %d trailing attribute bytes", errMalformed, len(a.b))
		return false
	}
	l := int(ne.Uint16(a.b[0:]))
	if l < 4 || l > len(a.b) {
		a.err = fmt.Errorf("%w: attribute length %d of %d bytes", errMalformed, l, len(a.b))
		return false
	}
	a.typ = ne.Uint16(a.b[2:]) & nlaTypeMask
	a.val = a.b[4:l]
	if adv := align4(l); adv < len(a.b) {
		a.b = a.b[adv:]
	} else {
		a.b = nil
	}
	return true
}
