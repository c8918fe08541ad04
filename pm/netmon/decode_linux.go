package netmon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// errMalformed is returned for a message too short or with a bad attribute.
var errMalformed = errors.New("netmon: malformed rtnetlink message")

// Values the unix package does not name.
const (
	nlaTypeMask = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute type
	rtaNHID     = 30     // RTA_NH_ID: the route uses a nexthop object
)

var native = binary.NativeEndian

// attrIter walks the netlink attributes of b without allocating.
type attrIter struct {
	b   []byte
	typ uint16
	val []byte
	err error
}

// next advances to the next attribute, reporting false at the end or on a
// malformed attribute (then err is set).
func (it *attrIter) next() bool {
	if len(it.b) < unix.SizeofRtAttr {
		return false
	}
	n := int(native.Uint16(it.b[0:2]))
	if n < unix.SizeofRtAttr || n > len(it.b) {
		it.err = errMalformed
		it.b = nil
		return false
	}
	it.typ = native.Uint16(it.b[2:4]) & nlaTypeMask
	it.val = it.b[unix.SizeofRtAttr:n]
	n = (n + 3) &^ 3
	if n > len(it.b) {
		n = len(it.b)
	}
	it.b = it.b[n:]
	return true
}

// decode appends to evs the events of one rtnetlink message of type typ
// with header flags flags and payload data (the message after its netlink
// header). Messages the monitor does not track add nothing. It never
// panics; a malformed message adds nothing and returns an error.
func decode(evs []event, typ, flags uint16, data []byte) ([]event, error) {
	switch typ {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		l, ok, err := decodeLink(data)
		if err != nil || !ok {
			return evs, err
		}
		o := opNewLink
		if typ == unix.RTM_DELLINK {
			o = opDelLink
		}
		return append(evs, event{op: o, link: l}), nil
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		a, ok, err := decodeAddr(data)
		if err != nil || !ok {
			return evs, err
		}
		o := opNewAddr
		if typ == unix.RTM_DELADDR {
			o = opDelAddr
		}
		return append(evs, event{op: o, addr: a}), nil
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		return decodeRoute(evs, typ, flags, data)
	}
	return evs, nil
}

// decodeLink decodes an RTM_NEWLINK or RTM_DELLINK payload. ok is false for
// the bridge-port messages that share these types but are not about a link
// appearing or going.
func decodeLink(data []byte) (l Link, ok bool, err error) {
	if len(data) < unix.SizeofIfInfomsg {
		return Link{}, false, errMalformed
	}
	if data[0] != unix.AF_UNSPEC {
		return Link{}, false, nil
	}
	l.Index = int(int32(native.Uint32(data[4:8])))
	if l.Index <= 0 {
		return Link{}, false, fmt.Errorf("%w: interface index %d", errMalformed, l.Index)
	}
	fl := native.Uint32(data[8:12])
	l.Up = fl&unix.IFF_UP != 0
	l.Loopback = fl&unix.IFF_LOOPBACK != 0
	// IFF_LOWER_UP, not the operational state: that one follows later,
	// when the kernel's linkwatch work runs, and until then a listing would
	// contradict the notification that follows.
	l.Carrier = fl&unix.IFF_LOWER_UP != 0 && l.Up
	it := attrIter{b: data[unix.SizeofIfInfomsg:]}
	for it.next() {
		if it.typ == unix.IFLA_IFNAME {
			l.Name = cString(it.val)
		}
	}
	if it.err != nil {
		return Link{}, false, it.err
	}
	return l, true, nil
}

// decodeAddr decodes an RTM_NEWADDR or RTM_DELADDR payload. ok is false for
// families other than IPv4 and IPv6.
func decodeAddr(data []byte) (a Address, ok bool, err error) {
	if len(data) < unix.SizeofIfAddrmsg {
		return Address{}, false, errMalformed
	}
	family, plen := data[0], int(data[1])
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return Address{}, false, nil
	}
	a.Flags = AddrFlags(data[2])
	a.Scope = data[3]
	a.Index = int(int32(native.Uint32(data[4:8])))
	var addr, local netip.Addr
	it := attrIter{b: data[unix.SizeofIfAddrmsg:]}
	for it.next() {
		switch it.typ {
		case unix.IFA_ADDRESS:
			addr, _ = ipOf(family, it.val)
		case unix.IFA_LOCAL:
			local, _ = ipOf(family, it.val)
		case unix.IFA_FLAGS:
			if len(it.val) >= 4 {
				a.Flags = AddrFlags(native.Uint32(it.val))
			}
		}
	}
	if it.err != nil {
		return Address{}, false, it.err
	}
	if local.IsValid() {
		addr = local // IFA_ADDRESS is the peer on a point-to-point link
	}
	if !addr.IsValid() || a.Index <= 0 || plen > addr.BitLen() {
		return Address{}, false, fmt.Errorf("%w: address %v/%d on interface %d", errMalformed, addr, plen, a.Index)
	}
	a.Prefix = netip.PrefixFrom(addr, plen)
	return a, true, nil
}

// decodeRoute appends the events of an RTM_NEWROUTE or RTM_DELROUTE
// payload: one per next hop of a unicast default route with an outgoing
// interface. A replacing RTM_NEWROUTE of another kind of default route
// appends one event that only removes what it replaced.
func decodeRoute(evs []event, typ, flags uint16, data []byte) ([]event, error) {
	if len(data) < unix.SizeofRtMsg {
		return evs, errMalformed
	}
	family, dstLen, srcLen := data[0], data[1], data[2]
	table, rtype := int(data[4]), data[7]
	rflags := native.Uint32(data[8:12])
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return evs, nil
	}
	if dstLen != 0 || srcLen != 0 || rflags&unix.RTM_F_CLONED != 0 {
		return evs, nil
	}
	r := Route{Family: int(family)}
	var multipath []byte
	nhObject := false
	it := attrIter{b: data[unix.SizeofRtMsg:]}
	for it.next() {
		switch it.typ {
		case unix.RTA_OIF:
			if len(it.val) >= 4 {
				r.Index = int(int32(native.Uint32(it.val)))
			}
		case unix.RTA_GATEWAY:
			r.Gateway, _ = ipOf(family, it.val)
		case unix.RTA_VIA:
			r.Gateway, _ = viaOf(it.val)
		case unix.RTA_PRIORITY:
			if len(it.val) >= 4 {
				r.Priority = int(native.Uint32(it.val))
			}
		case unix.RTA_PREFSRC:
			r.Src, _ = ipOf(family, it.val)
		case unix.RTA_TABLE:
			if len(it.val) >= 4 {
				table = int(native.Uint32(it.val))
			}
		case unix.RTA_MULTIPATH:
			multipath = it.val
		case rtaNHID:
			nhObject = true
		}
	}
	if it.err != nil {
		return evs, it.err
	}
	r.Table = table

	o := opNewRoute
	if typ == unix.RTM_DELROUTE {
		o = opDelRoute
	}
	replace := o == opNewRoute && flags&unix.NLM_F_REPLACE != 0
	start := len(evs)
	if rtype == unix.RTN_UNICAST && !nhObject {
		if multipath == nil {
			if r.Index > 0 {
				evs = append(evs, event{op: o, route: r})
			}
		} else {
			var err error
			if evs, err = appendNexthops(evs, o, r, multipath); err != nil {
				return evs[:start], err
			}
		}
	}
	if replace {
		if len(evs) == start {
			evs = append(evs, event{op: o, route: r, noRoute: true})
		}
		evs[start].replace = true
	}
	return evs, nil
}

// appendNexthops appends one event per next hop of RTA_MULTIPATH b, each a
// copy of r with the next hop's interface and gateway.
func appendNexthops(evs []event, o op, r Route, b []byte) ([]event, error) {
	for len(b) >= unix.SizeofRtNexthop {
		n := int(native.Uint16(b[0:2]))
		if n < unix.SizeofRtNexthop || n > len(b) {
			return evs, errMalformed
		}
		nh := r
		nh.Index = int(int32(native.Uint32(b[4:8])))
		nh.Gateway = netip.Addr{}
		it := attrIter{b: b[unix.SizeofRtNexthop:n]}
		for it.next() {
			switch it.typ {
			case unix.RTA_GATEWAY:
				nh.Gateway, _ = ipOf(uint8(r.Family), it.val)
			case unix.RTA_VIA:
				nh.Gateway, _ = viaOf(it.val)
			}
		}
		if it.err != nil {
			return evs, it.err
		}
		if nh.Index > 0 {
			evs = append(evs, event{op: o, route: nh})
		}
		n = (n + 3) &^ 3
		if n > len(b) {
			n = len(b)
		}
		b = b[n:]
	}
	return evs, nil
}

// ipOf returns the address of family in b (4 or 16 bytes).
func ipOf(family uint8, b []byte) (netip.Addr, bool) {
	switch {
	case family == unix.AF_INET && len(b) == 4:
		return netip.AddrFrom4([4]byte(b)), true
	case family == unix.AF_INET6 && len(b) == 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}

// viaOf decodes RTA_VIA: a u16 family and an address of that family.
func viaOf(b []byte) (netip.Addr, bool) {
	if len(b) < 2 {
		return netip.Addr{}, false
	}
	f := native.Uint16(b[0:2])
	if f > 0xff {
		return netip.Addr{}, false
	}
	return ipOf(uint8(f), b[2:])
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
