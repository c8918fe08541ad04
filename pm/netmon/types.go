package netmon

import (
	"fmt"
	"net/netip"
	"strings"
)

// Options configure a Monitor.
type Options struct {
	// NetNS is a file descriptor of the network namespace to watch; 0 means
	// the namespace of the calling thread. Start opens its sockets inside
	// that namespace and does not use the descriptor after it returns.
	NetNS int
}

// Address families of Route.Family (AF_INET and AF_INET6 on Linux).
const (
	FamilyIPv4 = 2
	FamilyIPv6 = 10
)

// TableMain is the main routing table (RT_TABLE_MAIN).
const TableMain = 254

// Link is a network interface.
type Link struct {
	Index    int
	Name     string
	Up       bool // administratively up (IFF_UP)
	Carrier  bool // the link layer has carrier (IFF_LOWER_UP); reported only while Up
	Loopback bool // IFF_LOOPBACK
}

// String describes the link as "eth0(2) up carrier".
func (l Link) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s(%d)", l.Name, l.Index)
	if l.Up {
		b.WriteString(" up")
	} else {
		b.WriteString(" down")
	}
	if l.Carrier {
		b.WriteString(" carrier")
	} else {
		b.WriteString(" no-carrier")
	}
	if l.Loopback {
		b.WriteString(" loopback")
	}
	return b.String()
}

// AddrFlags are the kernel's flags of an interface address (IFA_F_*).
type AddrFlags uint32

// Address flags, with the kernel's values.
const (
	// Secondary is IFA_F_SECONDARY: on IPv4 a secondary address of its
	// subnet; on IPv6 the same bit means Temporary.
	Secondary AddrFlags = 0x01
	// Temporary is IFA_F_TEMPORARY: an IPv6 privacy address (RFC 8981).
	Temporary      AddrFlags = 0x01
	NoDAD          AddrFlags = 0x02  // IFA_F_NODAD: duplicate address detection is off
	Optimistic     AddrFlags = 0x04  // IFA_F_OPTIMISTIC: usable while DAD runs (RFC 4429)
	DADFailed      AddrFlags = 0x08  // IFA_F_DADFAILED: a duplicate was found; unusable
	HomeAddress    AddrFlags = 0x10  // IFA_F_HOMEADDRESS: mobile IPv6 home address
	Deprecated     AddrFlags = 0x20  // IFA_F_DEPRECATED: preferred lifetime over; avoid for new connections
	Tentative      AddrFlags = 0x40  // IFA_F_TENTATIVE: DAD still running; unusable
	Permanent      AddrFlags = 0x80  // IFA_F_PERMANENT: configured, not autoconfigured
	ManageTempAddr AddrFlags = 0x100 // IFA_F_MANAGETEMPADDR: temporary addresses are made from it
	NoPrefixRoute  AddrFlags = 0x200 // IFA_F_NOPREFIXROUTE: no prefix route was added
	MCAutoJoin     AddrFlags = 0x400 // IFA_F_MCAUTOJOIN
	StablePrivacy  AddrFlags = 0x800 // IFA_F_STABLE_PRIVACY: RFC 7217 interface identifier
)

var addrFlagNames = [...]struct {
	f    AddrFlags
	name string
}{
	{Secondary, "secondary"},
	{NoDAD, "nodad"},
	{Optimistic, "optimistic"},
	{DADFailed, "dadfailed"},
	{HomeAddress, "homeaddress"},
	{Deprecated, "deprecated"},
	{Tentative, "tentative"},
	{Permanent, "permanent"},
	{ManageTempAddr, "mngtmpaddr"},
	{NoPrefixRoute, "noprefixroute"},
	{MCAutoJoin, "autojoin"},
	{StablePrivacy, "stable-privacy"},
}

// String returns the names of the flags that are set, as iproute2 spells
// them, joined by commas ("" when none is set). Bit 0 is named "secondary"
// (it means temporary on IPv6); unknown bits are shown in hex.
func (f AddrFlags) String() string { return f.format(false) }

// format is String, naming bit 0 "temporary" when v6 is set.
func (f AddrFlags) format(v6 bool) string {
	var names []string
	for _, fn := range addrFlagNames {
		if f&fn.f != 0 {
			name := fn.name
			if fn.f == Temporary && v6 {
				name = "temporary"
			}
			names = append(names, name)
			f &^= fn.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(names, ",")
}

// Scopes of an address (RT_SCOPE_*).
const (
	ScopeUniverse uint8 = 0
	ScopeSite     uint8 = 200
	ScopeLink     uint8 = 253
	ScopeHost     uint8 = 254
)

// Address is an address configured on a local interface.
type Address struct {
	Index  int          // interface index (see Update.Link and Monitor.Link)
	Prefix netip.Prefix // the local address and its prefix length; never has a zone
	Flags  AddrFlags
	Scope  uint8 // ScopeUniverse, ScopeLink, ScopeHost, ...
}

// Addr returns the address itself.
func (a Address) Addr() netip.Addr { return a.Prefix.Addr() }

// LinkLocal reports whether the address is only usable on its link: a
// link-local unicast address (fe80::/10, 169.254.0.0/16) or one with link
// scope.
func (a Address) LinkLocal() bool {
	return a.Prefix.Addr().IsLinkLocalUnicast() || a.Scope == ScopeLink
}

// String describes the address as "fd00::1/64 if3 scope 0 nodad,permanent";
// on IPv6, flag bit 0 is named "temporary".
func (a Address) String() string {
	s := fmt.Sprintf("%s if%d scope %d", a.Prefix, a.Index, a.Scope)
	if a.Flags != 0 {
		s += " " + a.Flags.format(a.Prefix.Addr().Is6())
	}
	return s
}

// Route is a default route (destination 0.0.0.0/0 or ::/0) through one
// interface, in any routing table. A multipath default route is one Route
// per next hop.
type Route struct {
	Index    int        // outgoing interface
	Family   int        // FamilyIPv4 or FamilyIPv6
	Gateway  netip.Addr // next hop; invalid for a route straight out of the device
	Src      netip.Addr // preferred source address (RTA_PREFSRC); invalid when not set
	Table    int        // routing table, TableMain for the main table
	Priority int        // metric
}

// String describes the route as "default via 10.0.0.254 if2 table 254 metric 0".
func (r Route) String() string {
	s := "default"
	if r.Family == FamilyIPv6 {
		s = "default6"
	}
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	s += fmt.Sprintf(" if%d table %d metric %d", r.Index, r.Table, r.Priority)
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	return s
}

// Kind says what an Update reports.
type Kind uint8

// Kinds of updates.
const (
	// LinkChanged: a link appeared, or its name, Up or Carrier changed.
	LinkChanged Kind = iota + 1
	// LinkRemoved: a link went away. The removal of its addresses and
	// routes is reported first.
	LinkRemoved
	// AddressAdded: an address appeared.
	AddressAdded
	// AddressChanged: the flags or scope of a known address changed, e.g.
	// it stopped being tentative.
	AddressChanged
	// AddressRemoved: an address went away.
	AddressRemoved
	// RouteAdded: a default route appeared.
	RouteAdded
	// RouteRemoved: a default route went away.
	RouteRemoved
	// Synced: the monitor's view matches the kernel's. Sent once after the
	// initial snapshot, and again after each resynchronisation that follows
	// lost notifications.
	Synced
)

var kindNames = [...]string{
	LinkChanged:    "LinkChanged",
	LinkRemoved:    "LinkRemoved",
	AddressAdded:   "AddressAdded",
	AddressChanged: "AddressChanged",
	AddressRemoved: "AddressRemoved",
	RouteAdded:     "RouteAdded",
	RouteRemoved:   "RouteRemoved",
	Synced:         "Synced",
}

// String returns the kind's name, as "AddressAdded", or "Kind(N)".
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Update is one change. Link is set for every kind but Synced: the link
// itself, or the link the address or route belongs to as it is at the time
// of the update (for removals, as it was last known). Address is set for
// the Address kinds, Route for the Route kinds.
type Update struct {
	Kind    Kind
	Link    Link
	Address Address
	Route   Route
}

// String describes the update for logs and test failures.
func (u Update) String() string {
	switch u.Kind {
	case LinkChanged, LinkRemoved:
		return u.Kind.String() + " " + u.Link.String()
	case AddressAdded, AddressChanged, AddressRemoved:
		return u.Kind.String() + " " + u.Address.String() + " on " + u.Link.Name
	case RouteAdded, RouteRemoved:
		return u.Kind.String() + " " + u.Route.String() + " on " + u.Link.Name
	}
	return u.Kind.String()
}
