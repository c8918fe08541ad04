package pmnl

import (
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Commands of the mptcp_pm family (MPTCP_PM_CMD_*).
const (
	cmdAddAddr        = 1
	cmdDelAddr        = 2
	cmdGetAddr        = 3
	cmdFlushAddrs     = 4
	cmdSetLimits      = 5
	cmdGetLimits      = 6
	cmdSetFlags       = 7
	cmdAnnounce       = 8
	cmdRemove         = 9
	cmdSubflowCreate  = 10
	cmdSubflowDestroy = 11
)

// Command attributes (MPTCP_PM_ATTR_*).
const (
	pmAttrAddr        = 1 // nested address attributes
	pmAttrRcvAddAddrs = 2 // u32
	pmAttrSubflows    = 3 // u32
	pmAttrToken       = 4 // u32
	pmAttrLocID       = 5 // u8
	pmAttrAddrRemote  = 6 // nested address attributes
)

// Address attributes (MPTCP_PM_ADDR_ATTR_*), inside pmAttrAddr and
// pmAttrAddrRemote.
const (
	addrAttrFamily = 1 // u16
	addrAttrID     = 2 // u8
	addrAttrAddr4  = 3 // 4 bytes, network order
	addrAttrAddr6  = 4 // 16 bytes
	addrAttrPort   = 5 // u16, host order
	addrAttrFlags  = 6 // u32
	addrAttrIfIdx  = 7 // s32
)

// addrFields says which optional attributes encodeAddress writes besides
// those of the non-zero fields.
type addrFields uint8

const (
	withFlags addrFields = 1 << iota // write FLAGS even when zero
)

// encodeAddress appends the nested address attribute typ (with NLA_F_NESTED)
// describing a: FAMILY and ADDR4/ADDR6 when a.Addr is valid, ID, PORT and
// IF_IDX when non-zero, FLAGS when non-zero or asked for by fields. The
// caller has checked and unmapped a.Addr; its zone is not encoded.
func encodeAddress(ae *netlink.AttributeEncoder, typ uint16, a pm.Address, fields addrFields) {
	ae.Nested(typ, func(nae *netlink.AttributeEncoder) error {
		switch {
		case a.Addr.Is4():
			nae.Uint16(addrAttrFamily, unix.AF_INET)
			b := a.Addr.As4()
			nae.Bytes(addrAttrAddr4, b[:])
		case a.Addr.Is6():
			nae.Uint16(addrAttrFamily, unix.AF_INET6)
			b := a.Addr.As16()
			nae.Bytes(addrAttrAddr6, b[:])
		}
		if a.ID != 0 {
			nae.Uint8(addrAttrID, a.ID)
		}
		if a.Port != 0 {
			nae.Uint16(addrAttrPort, a.Port)
		}
		if a.Flags != 0 || fields&withFlags != 0 {
			nae.Uint32(addrAttrFlags, uint32(a.Flags))
		}
		if a.Ifindex != 0 {
			nae.Int32(addrAttrIfIdx, a.Ifindex)
		}
		return nil
	})
}

// decodeAddress decodes the attributes inside a pmAttrAddr. Unknown
// attributes are skipped. A malformed attribute, an address of the wrong
// size or one that disagrees with FAMILY is an error wrapping pm.ErrInvalid.
// It never panics.
func decodeAddress(b []byte) (pm.Address, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return pm.Address{}, fmt.Errorf("pm: decode address: %v: %w", err, pm.ErrInvalid)
	}
	var (
		a              pm.Address
		family         uint16
		addr4, addr6   []byte
		hasFam, hasBad bool
	)
	for ad.Next() {
		switch ad.Type() {
		case addrAttrFamily:
			family, hasFam = ad.Uint16(), true
		case addrAttrID:
			a.ID = ad.Uint8()
		case addrAttrAddr4:
			addr4 = ad.Bytes()
			hasBad = hasBad || len(addr4) != 4
		case addrAttrAddr6:
			addr6 = ad.Bytes()
			hasBad = hasBad || len(addr6) != 16
		case addrAttrPort:
			a.Port = ad.Uint16()
		case addrAttrFlags:
			a.Flags = pm.Flags(ad.Uint32())
		case addrAttrIfIdx:
			a.Ifindex = ad.Int32()
		}
	}
	if err := ad.Err(); err != nil {
		return pm.Address{}, fmt.Errorf("pm: decode address: %v: %w", err, pm.ErrInvalid)
	}
	if hasBad {
		return pm.Address{}, fmt.Errorf("pm: decode address: address of %d/%d bytes: %w", len(addr4), len(addr6), pm.ErrInvalid)
	}
	switch {
	case hasFam && family == unix.AF_INET && addr4 != nil,
		!hasFam && addr4 != nil && addr6 == nil:
		a.Addr = netip.AddrFrom4([4]byte(addr4))
	case hasFam && family == unix.AF_INET6 && addr6 != nil,
		!hasFam && addr6 != nil && addr4 == nil:
		a.Addr = netip.AddrFrom16([16]byte(addr6))
	case addr4 == nil && addr6 == nil:
		// No address: an id-only entry. FAMILY alone says nothing useful.
	default:
		return pm.Address{}, fmt.Errorf("pm: decode address: family %d does not match its address attributes: %w", family, pm.ErrInvalid)
	}
	return a, nil
}

// decodeAddressMessage finds the pmAttrAddr in the attributes of one reply
// message and decodes it. A reply without it is an error wrapping pm.ErrInvalid.
func decodeAddressMessage(b []byte) (pm.Address, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return pm.Address{}, fmt.Errorf("pm: decode reply: %v: %w", err, pm.ErrInvalid)
	}
	var (
		a     pm.Address
		found bool
		derr  error
	)
	for ad.Next() {
		if ad.Type() == pmAttrAddr && !found {
			found = true
			a, derr = decodeAddress(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return pm.Address{}, fmt.Errorf("pm: decode reply: %v: %w", err, pm.ErrInvalid)
	}
	if derr != nil {
		return pm.Address{}, derr
	}
	if !found {
		return pm.Address{}, fmt.Errorf("pm: decode reply: no address attribute: %w", pm.ErrInvalid)
	}
	return a, nil
}

// decodeLimits decodes a GET_LIMITS reply. Missing attributes stay zero.
func decodeLimits(b []byte) (pm.Limits, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return pm.Limits{}, fmt.Errorf("pm: decode limits: %v: %w", err, pm.ErrInvalid)
	}
	var l pm.Limits
	for ad.Next() {
		switch ad.Type() {
		case pmAttrRcvAddAddrs:
			l.AddAddrAccepted = ad.Uint32()
		case pmAttrSubflows:
			l.Subflows = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return pm.Limits{}, fmt.Errorf("pm: decode limits: %v: %w", err, pm.ErrInvalid)
	}
	return l, nil
}
