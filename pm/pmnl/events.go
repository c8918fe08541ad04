package pmnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Event attributes (MPTCP_ATTR_*).
const (
	attrToken       = 1  // u32
	attrFamily      = 2  // u16
	attrLocID       = 3  // u8
	attrRemID       = 4  // u8
	attrSaddr4      = 5  // 4 bytes, network order
	attrSaddr6      = 6  // 16 bytes
	attrDaddr4      = 7  // 4 bytes, network order
	attrDaddr6      = 8  // 16 bytes
	attrSport       = 9  // be16
	attrDport       = 10 // be16
	attrBackup      = 11 // u8
	attrError       = 12 // u8
	attrFlags       = 13 // u16
	attrTimeout     = 14 // u32
	attrIfIdx       = 15 // s32
	attrResetReason = 16 // u32
	attrResetFlags  = 17 // u32
	attrServerSide  = 18 // u8
)

// attrSize is the payload size each known event attribute must have; 0
// marks an attribute this package does not know (skipped whatever its size).
var attrSize = [...]uint8{
	attrToken:       4,
	attrFamily:      2,
	attrLocID:       1,
	attrRemID:       1,
	attrSaddr4:      4,
	attrSaddr6:      16,
	attrDaddr4:      4,
	attrDaddr6:      16,
	attrSport:       2,
	attrDport:       2,
	attrBackup:      1,
	attrError:       1,
	attrFlags:       2,
	attrTimeout:     4,
	attrIfIdx:       4,
	attrResetReason: 4,
	attrResetFlags:  4,
	attrServerSide:  1,
}

const (
	nlaHeaderLen = 4      // struct nlattr: u16 length, u16 type
	nlaTypeMask  = 0x3fff // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// DecodeEvent decodes one event: cmd is the generic-netlink command of the
// multicast message (the event type), data the attributes after the 4-byte
// genetlink header. Unknown attributes are skipped; a malformed attribute
// (short length, wrong size for its type) is an error wrapping pm.ErrInvalid.
// Never panics. Zero allocations.
//
// An unknown cmd is not an error: its attributes are decoded as for any
// event and the Event carries that Type. Ports are converted to host byte
// order. An IPv4-mapped IPv6 address, which a dual-stack socket reports for
// an IPv4 peer, is unmapped, so callers see 10.55.0.1 and not
// ::ffff:10.55.0.1; Family stays what the kernel sent (the socket's family,
// AF_INET6 in that case). ServerSide is set when either the SERVER_SIDE
// attribute or the server-side bit of FLAGS says so. When an attribute comes
// twice, the last one wins.
func DecodeEvent(cmd uint8, data []byte) (pm.Event, error) {
	ev := pm.Event{Type: pm.EventType(cmd)}
	var serverSide bool
	for len(data) > 0 {
		if len(data) < nlaHeaderLen {
			return pm.Event{}, fmt.Errorf("pm: decode %v: %d trailing bytes, too short for an attribute: %w",
				ev.Type, len(data), pm.ErrInvalid)
		}
		n := int(binary.NativeEndian.Uint16(data[0:2]))
		typ := binary.NativeEndian.Uint16(data[2:4]) & nlaTypeMask
		if n < nlaHeaderLen || n > len(data) {
			return pm.Event{}, fmt.Errorf("pm: decode %v: attribute %d: length %d with %d bytes left: %w",
				ev.Type, typ, n, len(data), pm.ErrInvalid)
		}
		v := data[nlaHeaderLen:n]
		if next := (n + 3) &^ 3; next < len(data) {
			data = data[next:]
		} else {
			data = data[len(data):] // the last attribute may lack its padding
		}

		if int(typ) >= len(attrSize) || attrSize[typ] == 0 {
			continue // unknown attribute
		}
		if len(v) != int(attrSize[typ]) {
			return pm.Event{}, fmt.Errorf("pm: decode %v: attribute %d: %d bytes, want %d: %w",
				ev.Type, typ, len(v), attrSize[typ], pm.ErrInvalid)
		}
		switch typ {
		case attrToken:
			ev.Token = binary.NativeEndian.Uint32(v)
		case attrFamily:
			ev.Family = binary.NativeEndian.Uint16(v)
		case attrLocID:
			ev.LocalID = v[0]
		case attrRemID:
			ev.RemoteID = v[0]
		case attrSaddr4:
			ev.LocalAddr = netip.AddrFrom4([4]byte(v))
		case attrSaddr6:
			ev.LocalAddr = netip.AddrFrom16([16]byte(v)).Unmap()
		case attrDaddr4:
			ev.RemoteAddr = netip.AddrFrom4([4]byte(v))
		case attrDaddr6:
			ev.RemoteAddr = netip.AddrFrom16([16]byte(v)).Unmap()
		case attrSport:
			ev.LocalPort = binary.BigEndian.Uint16(v)
		case attrDport:
			ev.RemotePort = binary.BigEndian.Uint16(v)
		case attrBackup:
			ev.Backup = v[0] != 0
		case attrError:
			ev.Error = v[0]
		case attrFlags:
			ev.Flags = pm.EventFlags(binary.NativeEndian.Uint16(v))
		case attrTimeout:
			ev.Timeout = binary.NativeEndian.Uint32(v)
		case attrIfIdx:
			ev.Ifindex = int32(binary.NativeEndian.Uint32(v))
		case attrResetReason:
			ev.ResetReason = binary.NativeEndian.Uint32(v)
		case attrResetFlags:
			ev.ResetFlags = binary.NativeEndian.Uint32(v)
		case attrServerSide:
			serverSide = v[0] != 0
		}
	}
	ev.ServerSide = serverSide || ev.Flags&pm.EventFlagServerSide != 0
	return ev, nil
}
