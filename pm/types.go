package pm

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// Flags are the flags of an endpoint or announced address
// (MPTCP_PM_ADDR_FLAG_*).
type Flags uint32

// The address flags the kernel knows.
const (
	FlagSignal   Flags = 1 << 0
	FlagSubflow  Flags = 1 << 1
	FlagBackup   Flags = 1 << 2
	FlagFullmesh Flags = 1 << 3
	FlagImplicit Flags = 1 << 4
	FlagLaminar  Flags = 1 << 5
)

var flagNames = [...]struct {
	f    Flags
	name string
}{
	{FlagSignal, "signal"},
	{FlagSubflow, "subflow"},
	{FlagBackup, "backup"},
	{FlagFullmesh, "fullmesh"},
	{FlagImplicit, "implicit"},
	{FlagLaminar, "laminar"},
}

// Names returns the names of the flags that are set, in bit order. Unknown
// bits are named "0x..".
func (f Flags) Names() []string {
	names := []string{}
	for _, fn := range flagNames {
		if f&fn.f != 0 {
			names = append(names, fn.name)
			f &^= fn.f
		}
	}
	if f != 0 {
		names = append(names, fmt.Sprintf("%#x", uint32(f)))
	}
	return names
}

// String returns the flag names joined by commas, as "signal,backup", or ""
// when no flag is set.
func (f Flags) String() string { return strings.Join(f.Names(), ",") }

// ParseFlags parses flag names as Flags.Names returns them. An unknown word
// is an error that wraps ErrInvalid and names the word.
func ParseFlags(words []string) (Flags, error) {
	var f Flags
next:
	for _, w := range words {
		for _, fn := range flagNames {
			if w == fn.name {
				f |= fn.f
				continue next
			}
		}
		return 0, fmt.Errorf("pm: unknown address flag %q: %w", w, ErrInvalid)
	}
	return f, nil
}

// CheckEndpointFlags refuses endpoint flags that the kernel refuses
// together, or that only the kernel sets.
func CheckEndpointFlags(f Flags) error {
	switch {
	case f&FlagSignal != 0 && f&FlagFullmesh != 0:
		return errors.New("signal and fullmesh together are refused by the kernel")
	case f&FlagImplicit != 0:
		return errors.New("implicit is set by the kernel only")
	}
	return nil
}

// Address is the kernel's address attribute set (MPTCP_PM_ATTR_ADDR): an
// in-kernel endpoint, an address announced on or read from a userspace-PM
// connection, or the local side of a subflow command.
type Address struct {
	ID      uint8      // address id; 0 = none/let the kernel choose
	Addr    netip.Addr // IPv4 or IPv6 (no zone)
	Port    uint16     // host byte order; 0 = none
	Flags   Flags
	Ifindex int32 // 0 = no interface
}

// Limits are the in-kernel path manager's per-namespace limits.
type Limits struct {
	Subflows        uint32 // MPTCP_PM_ATTR_SUBFLOWS
	AddAddrAccepted uint32 // MPTCP_PM_ATTR_RCV_ADD_ADDRS
}

// EventType is the kind of a path-manager event (the generic-netlink command
// of the multicast message).
type EventType uint8

// The event types the kernel sends.
const (
	EventCreated         EventType = 1
	EventEstablished     EventType = 2
	EventClosed          EventType = 3
	EventAnnounced       EventType = 6
	EventRemoved         EventType = 7
	EventSubEstablished  EventType = 10
	EventSubClosed       EventType = 11
	EventSubPriority     EventType = 13
	EventListenerCreated EventType = 15
	EventListenerClosed  EventType = 16
)

// String returns the event's name as `ip mptcp monitor` prints it, or
// "event(N)" for a type this package does not know.
func (t EventType) String() string {
	switch t {
	case EventCreated:
		return "CREATED"
	case EventEstablished:
		return "ESTABLISHED"
	case EventClosed:
		return "CLOSED"
	case EventAnnounced:
		return "ANNOUNCED"
	case EventRemoved:
		return "REMOVED"
	case EventSubEstablished:
		return "SF_ESTABLISHED"
	case EventSubClosed:
		return "SF_CLOSED"
	case EventSubPriority:
		return "SF_PRIORITY"
	case EventListenerCreated:
		return "LISTENER_CREATED"
	case EventListenerClosed:
		return "LISTENER_CLOSED"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Known reports whether t is one of the event types this package names.
func (t EventType) Known() bool {
	switch t {
	case EventCreated, EventEstablished, EventClosed, EventAnnounced, EventRemoved,
		EventSubEstablished, EventSubClosed, EventSubPriority,
		EventListenerCreated, EventListenerClosed:
		return true
	}
	return false
}

// EventFlags are the connection flags carried by MPTCP_ATTR_FLAGS.
type EventFlags uint16

// The connection flags the kernel sends.
const (
	EventFlagDenyJoinID0 EventFlags = 1 << 0
	EventFlagServerSide  EventFlags = 1 << 1
)

// Event is one decoded path-manager event. Which fields are set depends on
// Type; a field the kernel did not send is its zero value. Ports are in host
// byte order (the kernel sends them in network order).
type Event struct {
	Type        EventType
	Token       uint32
	Family      uint16 // AF_INET or AF_INET6
	LocalID     uint8
	RemoteID    uint8
	LocalAddr   netip.Addr // MPTCP_ATTR_SADDR4/6
	LocalPort   uint16     // MPTCP_ATTR_SPORT
	RemoteAddr  netip.Addr // MPTCP_ATTR_DADDR4/6
	RemotePort  uint16     // MPTCP_ATTR_DPORT
	Backup      bool
	Error       uint8
	Flags       EventFlags
	ServerSide  bool // from MPTCP_ATTR_SERVER_SIDE or EventFlagServerSide
	Timeout     uint32
	Ifindex     int32 // 0 when the subflow is not bound to a device
	ResetReason uint32
	ResetFlags  uint32
}

// CanonicalAddr returns the form of an address that the daemon compares,
// keys ids by and hands to the kernel: an IPv4-mapped IPv6 address (as a
// dual-stack socket reports an IPv4 peer) as IPv4, and no zone.
func CanonicalAddr(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// CanonicalAddrPort is CanonicalAddr for an address and port.
func CanonicalAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(CanonicalAddr(ap.Addr()), ap.Port())
}

// Connection is an MPTCP connection as the kernel lists it (sock_diag):
// what its events would have told.
type Connection struct {
	Token uint32 // the local token, as in events and commands
	// Local and Remote are the initial subflow's addresses, in
	// CanonicalAddr form.
	Local, Remote netip.AddrPort
	ServerSide    bool
	// Established says the MPTCP handshake is done: the kernel has sent, or
	// would have sent, ESTABLISHED.
	Established bool
	// Subflows are the established additional subflows (joins), those that
	// SUB_ESTABLISHED reports; the initial subflow is not among them.
	Subflows []Subflow
	// InitialClosed: the initial subflow is closed (a path manager closed
	// it; the connection goes on with its joins). Its local backup
	// request is InitialBackup.
	InitialClosed bool
	InitialBackup bool
}

// Subflow is an additional subflow of a listed connection, with the fields
// of its SUB_ESTABLISHED event.
type Subflow struct {
	LocalID, RemoteID uint8
	Local, Remote     netip.AddrPort
	Backup            bool  // the flag SUB_ESTABLISHED carries: the peer's backup request
	BackupLocal       bool  // this end's own backup request (no event carries it)
	Ifindex           int32 // the interface the subflow is bound to, 0 for none
}

// ResetReason is the reason an MPTCP reset (MP_TCPRST) gives for closing a
// subflow, as SUB_CLOSED reports it (RFC 8684, section 3.6).
type ResetReason uint32

var resetReasonNames = [...]string{
	"unspecified", "mptcp-error", "lack-of-resources", "administratively-prohibited",
	"too-much-outstanding-data", "unacceptable-performance", "middlebox-interference",
}

// String returns the reason's name as RFC 8684 words it, in lower case
// with dashes ("administratively-prohibited"), or "reset-N" for a code the
// RFC does not define.
func (r ResetReason) String() string {
	if int(r) < len(resetReasonNames) {
		return resetReasonNames[r]
	}
	return fmt.Sprintf("reset-%d", uint32(r))
}

// Transient reports whether a subflow reset with the reason may succeed if
// made again later: not when the peer prohibits it or a middlebox
// interferes.
func (r ResetReason) Transient() bool {
	return r != 3 && r != 6
}

// errnoNames are the socket errors a subflow closes with.
var errnoNames = map[syscall.Errno]string{
	syscall.ETIMEDOUT: "ETIMEDOUT", syscall.ECONNRESET: "ECONNRESET", syscall.ECONNREFUSED: "ECONNREFUSED",
	syscall.ECONNABORTED: "ECONNABORTED", syscall.EHOSTUNREACH: "EHOSTUNREACH", syscall.ENETUNREACH: "ENETUNREACH",
	syscall.EHOSTDOWN: "EHOSTDOWN", syscall.ENETDOWN: "ENETDOWN", syscall.EPIPE: "EPIPE", syscall.EPROTO: "EPROTO",
	syscall.EADDRNOTAVAIL: "EADDRNOTAVAIL", syscall.EACCES: "EACCES", syscall.EPERM: "EPERM", syscall.ENOMEM: "ENOMEM",
	syscall.ENOBUFS: "ENOBUFS", syscall.EINVAL: "EINVAL", syscall.ENOENT: "ENOENT", syscall.EEXIST: "EEXIST",
}

// ErrnoName returns the symbolic name of a socket error as SUB_CLOSED
// reports it ("ETIMEDOUT"), or "errno-N" for one it does not know; "" for
// 0.
func ErrnoName(e uint32) string {
	if e == 0 {
		return ""
	}
	if name, ok := errnoNames[syscall.Errno(e)]; ok {
		return name
	}
	return fmt.Sprintf("errno-%d", e)
}
