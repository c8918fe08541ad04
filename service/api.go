package service

import (
	"errors"
	"net/netip"

	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// This file is the boundary between the service loop and its front ends
// (dbusapi, tests): the read-only state snapshots the service hands out, the
// notifications it publishes, and the errors its requests return. It uses
// the core's own types (pm's vocabulary and policy.Endpoint), so a front end
// needs no kernel.

// Errors returned by the service's request methods. Every error a request
// returns matches exactly one of these with errors.Is; a kernel refusal keeps
// the kernel's message in its text.
var (
	ErrInvalidArguments  = errors.New("invalid arguments")
	ErrPermissionDenied  = errors.New("permission denied")
	ErrAlreadyControlled = errors.New("already controlled")
	ErrNotController     = errors.New("not the controller")
	ErrNotFound          = errors.New("not found")
	ErrNotSupported      = errors.New("not supported")
	ErrExists            = errors.New("already exists")
	ErrBusy              = errors.New("busy")
	ErrFailed            = errors.New("failed")
)

// Control modes (Manager.ControlMode).
const (
	ModeBuiltin    = "builtin"
	ModeController = "controller"
)

// Connection states (Connection.State).
const (
	StateCreated     = "created"
	StateEstablished = "established"
)

// Manager is a snapshot of the manager object's properties.
type Manager struct {
	Version           string
	ControlMode       string // ModeBuiltin or ModeController
	Controller        string // unique bus name of the controller, "" if none
	Policy            string
	KernelPathManager string            // "kernel" or "userspace"
	Endpoints         []policy.Endpoint // sorted by id
	Limits            Limits
	LocalAddresses    []LocalAddress
	ConnectionCount   int // the live connections (Service.Connections lists them)
	// Warnings are the standing warnings, such as strict reverse-path
	// filtering on a usable interface or another program fighting over
	// the endpoints; each ends when its cause does.
	Warnings []string
	// Preferences are the interface preferences in force (cheap,
	// expensive, backup, off), by interface name, for every interface
	// but loopbacks (InterfacePreferences).
	Preferences map[string]string
}

// Limits are the in-kernel path manager's limits.
type Limits struct {
	Subflows        uint32
	AddAddrAccepted uint32
}

// LocalAddress is a usable local address after the configured filters.
type LocalAddress struct {
	Interface string
	Address   netip.Addr
}

// AddressInfo is a local address with the configured filter's verdict
// (Manager.ListAddresses).
type AddressInfo struct {
	Interface string
	Address   netip.Addr
	Usable    bool
	// Reason says why the address is not usable, as
	// policy.FilterConfig.Check says, or "MPTCP disabled by the
	// NetworkManager profile"; for a usable one "managed by
	// NetworkManager" when NetworkManager writes its endpoints, else "".
	Reason string
}

// Connection is a snapshot of one MPTCP connection's properties.
type Connection struct {
	ID                 uint64 // object number n in /org/mptcp/PathManager1/connection/n, from 1, never reused
	Token              uint32
	ServerSide         bool
	State              string // StateCreated or StateEstablished
	LocalAddress       netip.Addr
	LocalPort          uint16
	RemoteAddress      netip.Addr
	RemotePort         uint16
	DenyJoinID0        bool
	Userspace          bool // the connection is under the userspace path manager
	Subflows           []Subflow
	RemoteAddresses    []AnnouncedAddress // what the peer announced
	AnnouncedAddresses []AnnouncedAddress // what we announced
}

// Subflow is one established subflow of a connection.
//
// The fields are ordered for size (72 bytes, not 88): a connection's
// subflows are held twice, by the service and by the D-Bus mirror.
type Subflow struct {
	LocalAddress  netip.Addr
	RemoteAddress netip.Addr
	Interface     string // "" when the kernel did not name one
	LocalPort     uint16
	RemotePort    uint16
	LocalID       uint8
	RemoteID      uint8
	Backup        bool
}

// AnnouncedAddress is an address announced on a connection (ADD_ADDR).
type AnnouncedAddress struct {
	ID      uint8
	Address netip.Addr
	Port    uint16
}

// Caller identifies who makes a request. Authorization (is this caller
// privileged at all) is decided by the front end before the request is made;
// the service only checks controller ownership.
type Caller struct {
	Name string // unique bus name, e.g. ":1.42"; "" for the daemon itself
	UID  uint32
}

// SubflowRequest is the argument of CreateSubflow.
type SubflowRequest struct {
	LocalAddress  netip.Addr
	RemoteAddress netip.Addr
	RemotePort    uint16
	LocalID       uint8  // 0 = the daemon picks (the same address gets the same id)
	LocalPort     uint16 // 0 = any
	Backup        bool
	Interface     string // "" = none
}

// Notification is a change the service publishes, in the order it happened.
// It is one of the *Changed, *Added, *Removed and Subflow* types below.
type Notification interface{ notification() }

// Publisher receives the service's notifications. Publish is called from the
// service loop, one notification at a time, in the order of the kernel events
// and requests that caused them; it must not block for long and must not call
// back into the service.
type Publisher interface {
	Publish(Notification)
}

// ManagerChanged says that the named manager properties changed; Manager holds
// all their new values.
type ManagerChanged struct {
	Manager Manager
	Changed []string // property names as in the D-Bus contract, e.g. "Endpoints"
}

// ConnectionAdded says that a connection appeared (the kernel's CREATED).
type ConnectionAdded struct{ Connection Connection }

// ConnectionChanged says that the named properties of a connection changed.
type ConnectionChanged struct {
	Connection Connection
	Changed    []string // property names as in the D-Bus contract, e.g. "Subflows"
}

// ConnectionRemoved says that a connection closed (the kernel's CLOSED).
type ConnectionRemoved struct{ Connection Connection }

// SubflowKind says what happened to a subflow.
type SubflowKind uint8

// Subflow event kinds.
const (
	SubflowEstablished SubflowKind = iota + 1
	SubflowClosed
	SubflowPriorityChanged
)

// SubflowEvent is a subflow's establishment, closing or priority change on
// connection ConnectionID. Error and ResetReason are set for SubflowClosed.
type SubflowEvent struct {
	ConnectionID uint64
	Kind         SubflowKind
	Subflow      Subflow
	Error        uint32
	ResetReason  uint32
}

// AddressAnnounced says that the peer of connection ConnectionID announced an
// address (the kernel's ANNOUNCED).
type AddressAnnounced struct {
	ConnectionID uint64
	Address      AnnouncedAddress
}

// AddressRemoved says that the peer of connection ConnectionID withdrew the
// address with RemoteID (the kernel's REMOVED).
type AddressRemoved struct {
	ConnectionID uint64
	RemoteID     uint8
}

// ControllerReleased asks the front end to tell a controller, without waiting
// for a reply, that the daemon ended its claim (Controller.Release).
type ControllerReleased struct {
	Name   string // the controller's unique bus name
	Path   string // the controller object path it registered
	Reason string // "shutdown" or "revoked"
}

func (ManagerChanged) notification()     {}
func (ConnectionAdded) notification()    {}
func (ConnectionChanged) notification()  {}
func (ConnectionRemoved) notification()  {}
func (SubflowEvent) notification()       {}
func (AddressAnnounced) notification()   {}
func (AddressRemoved) notification()     {}
func (ControllerReleased) notification() {}
