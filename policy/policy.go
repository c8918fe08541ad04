package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Path-manager names a policy needs (Policy.PathManager).
const (
	PathManagerKernel    = "kernel"
	PathManagerUserspace = "userspace"
)

// MaxEndpoints is the number of in-kernel endpoints the kernel keeps per
// network namespace (MPTCP_PM_ADDR_MAX); it refuses more with ERANGE.
const MaxEndpoints = 8

// Address is a usable local address: it passed the filters and its link is
// up with carrier.
type Address struct {
	Interface string
	Ifindex   int
	Addr      netip.Addr
	// Flags are the endpoint flags the configuration gives this address,
	// such as subflow or subflow,backup. The userspace policies read
	// pm.FlagBackup from them.
	Flags pm.Flags
	// External: another program writes the in-kernel endpoints of this
	// interface (NetworkManager, for the devices whose profile enables
	// MPTCP). The endpoints policy adds, changes and removes none there;
	// the userspace policies use the address as any other.
	External bool
	// Preference is the interface's: cheap, expensive or backup (an "off"
	// interface's addresses are not usable). The handover policy carries
	// traffic on cheap paths and keeps the others standing by; the others
	// read the backup flag from Flags, which the service sets for
	// expensive and backup interfaces.
	Preference Preference
}

// Origin says who made an in-kernel endpoint.
type Origin string

// Endpoint origins.
const (
	OriginPolicy     Origin = "policy"     // made by the built-in policy
	OriginAdmin      Origin = "admin"      // made by a privileged caller over the API
	OriginController Origin = "controller" // made by the registered controller
	OriginExternal   Origin = "external"   // found in the kernel, made by someone else
	// OriginNetworkManager: found in the kernel on an interface whose
	// endpoints NetworkManager writes (its device's profile enables MPTCP).
	OriginNetworkManager Origin = "networkmanager"
)

// Foreign reports whether someone other than the daemon made the endpoint
// (external or NetworkManager).
func (o Origin) Foreign() bool { return o == OriginExternal || o == OriginNetworkManager }

// Endpoint is an in-kernel path-manager endpoint as the daemon knows it:
// the kernel's address (id, address, port, flags and the ifindex it is
// bound to, 0 for none), the name of that interface, and who made it. The
// service, the policies and the front ends all use this one type.
type Endpoint struct {
	pm.Address
	Interface string // the name of Address.Ifindex; "" = none or unknown (the policies compare Ifindex)
	Origin    Origin
}

// Owned reports whether the built-in policy made the endpoint. A policy
// never removes or changes an endpoint that is not owned.
func (e Endpoint) Owned() bool { return e.Origin == OriginPolicy }

// Subflow is a subflow of a connection.
type Subflow struct {
	Local, Remote netip.AddrPort
	Interface     string
	Backup        bool // this end asked for the subflow to be a backup
	Pending       bool // requested, not yet established (its local port may be 0)
	// Stalled: data is outstanding on the subflow and nothing was
	// acknowledged for longer than the stall timeout (the service probes
	// the subflows' TCP state for the handover policy only).
	Stalled bool
	// HealthySince is when the subflow was last seen established and not
	// stalled without a break since; zero while it is stalled or unknown.
	HealthySince time.Time
}

// PeerAddress is an address announced on a connection (ADD_ADDR).
type PeerAddress struct {
	ID   uint8
	Addr netip.Addr
	Port uint16 // 0 = the port of the connection
}

// Connection is one MPTCP connection as the service knows it.
type Connection struct {
	Token       uint32
	ServerSide  bool
	Established bool
	// Local and Remote are the initial subflow's addresses. IPv4-mapped IPv6
	// addresses (from dual-stack listeners) are treated as IPv4.
	Local, Remote netip.AddrPort
	// Subflows are the known subflows, the initial one included until it
	// closes (the service always knows it), and the pending ones the
	// service requested.
	Subflows      []Subflow
	PeerAddresses []PeerAddress // announced by the peer
	Announced     []PeerAddress // announced by us
	// Failed are local addresses (port 0) whose last subflow or
	// announcement attempt on this connection failed recently: the
	// policies do not retry them. The service decides when to forget them.
	Failed []netip.AddrPort
}

// View is the read-only state a policy decides on.
type View struct {
	// Addresses are the usable local addresses, best sorted by Interface
	// then Addr (the policies sort a copy otherwise). The same address may
	// appear on two interfaces; the first one counts.
	Addresses []Address
	// Endpoints are all the kernel's endpoints, Owned set on those the
	// built-in policy made.
	Endpoints []Endpoint
	// Now is the time of the decision (the handover policy's hysteresis).
	Now time.Time
	// Handover holds the handover policy's settings.
	Handover HandoverSettings
	// SubflowLimit is the number of extra subflows (beyond the initial one)
	// a connection may have, as the kernel's limit (0..8). 0 means none.
	SubflowLimit uint32
}

// Kind is what an Action does.
type Kind uint8

// Kinds of Action.
const (
	AddEndpoint      Kind = iota + 1 // add Action.Endpoint (ID 0: the kernel picks)
	RemoveEndpoint                   // remove the endpoint Action.Endpoint.ID
	SetEndpointFlags                 // set the flags of Action.Endpoint.ID to Action.Endpoint.Flags
	CreateSubflow                    // SUBFLOW_CREATE Local -> Remote on Token
	DestroySubflow                   // SUBFLOW_DESTROY Local:LocalPort -> Remote on Token
	Announce                         // ANNOUNCE Local:LocalPort on Token (ID 0: the service picks)
	Withdraw                         // REMOVE the announcement ID (of Local) on Token
	SetSubflowBackup                 // set the backup flag of subflow Local:LocalPort -> Remote on Token to Backup (MP_PRIO)
)

var kindNames = [...]string{
	AddEndpoint:      "add-endpoint",
	RemoveEndpoint:   "remove-endpoint",
	SetEndpointFlags: "set-endpoint-flags",
	CreateSubflow:    "create-subflow",
	DestroySubflow:   "destroy-subflow",
	Announce:         "announce",
	Withdraw:         "withdraw",
	SetSubflowBackup: "set-subflow-backup",
}

// String returns the kind's name, as "create-subflow", or "Kind(n)".
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Action is one step a policy asks the service to carry out. Which fields
// are set depends on Kind.
type Action struct {
	Kind  Kind
	Token uint32 // the connection (subflow and announce kinds)
	// Endpoint is the endpoint to add, remove or change (endpoint kinds).
	Endpoint Endpoint
	// Local side of a subflow or announcement: its address, port (0 = any,
	// or an ephemeral port for Announce), interface and backup flag.
	Local     netip.Addr
	LocalPort uint16
	Interface string
	Ifindex   int
	Backup    bool
	Remote    netip.AddrPort // the remote side of a subflow
	ID        uint8          // Withdraw: the announcement's id; Announce: 0 = the service picks
	// Reason says why the policy wants the action, in a few words for the
	// log ("interface wlan0 has no subflow").
	Reason string
}

// String describes the action for logs.
func (a Action) String() string {
	switch a.Kind {
	case AddEndpoint, RemoveEndpoint, SetEndpointFlags:
		e := a.Endpoint
		return fmt.Sprintf("%v id %d %v [%s] dev %q", a.Kind, e.ID, e.Addr, e.Flags, e.Interface)
	case CreateSubflow, DestroySubflow, SetSubflowBackup:
		return fmt.Sprintf("%v token %08x %v -> %v dev %q backup %t", a.Kind, a.Token,
			netip.AddrPortFrom(a.Local, a.LocalPort), a.Remote, a.Interface, a.Backup)
	case Announce, Withdraw:
		return fmt.Sprintf("%v token %08x id %d %v dev %q", a.Kind, a.Token, a.ID,
			netip.AddrPortFrom(a.Local, a.LocalPort), a.Interface)
	}
	return a.Kind.String()
}

// Policy decides which paths exist. Implementations are pure: they keep no
// state between calls and do not change the view.
type Policy interface {
	// Name is the policy's name in the configuration.
	Name() string
	// PathManager is the kernel path manager the policy works with:
	// PathManagerKernel, PathManagerUserspace, or "" for either.
	PathManager() string
	// Endpoints returns the actions on the in-kernel endpoints that bring
	// them to the policy's wish.
	Endpoints(v View) []Action
	// Connection returns the actions on connection c.
	Connection(v View, c Connection) []Action
}

// ErrUnknown is returned by New for a name no policy is registered under.
var ErrUnknown = errors.New("unknown policy")

var registry = struct {
	sync.RWMutex
	m map[string]func() Policy
}{m: make(map[string]func() Policy)}

// Register makes the policy that f returns available under name. It panics
// if name is empty, f is nil, or name is taken: registering happens in init
// functions, where a clash is a programming error.
func Register(name string, f func() Policy) {
	if name == "" || f == nil {
		panic("policy: Register with an empty name or nil function")
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.m[name]; dup {
		panic("policy: Register called twice for " + name)
	}
	registry.m[name] = f
}

// New returns the policy registered under name. An unknown name is an error
// that wraps ErrUnknown and lists the known names.
func New(name string) (Policy, error) {
	registry.RLock()
	f := registry.m[name]
	registry.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("policy: %q: %w (known: %s)", name, ErrUnknown, strings.Join(Names(), ", "))
	}
	return f(), nil
}

// Names returns the registered policy names, sorted.
func Names() []string {
	registry.RLock()
	defer registry.RUnlock()
	names := make([]string, 0, len(registry.m))
	for n := range registry.m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func compareAddresses(a, b Address) int {
	return cmp.Or(cmp.Compare(a.Interface, b.Interface), pm.CanonicalAddr(a.Addr).Compare(pm.CanonicalAddr(b.Addr)))
}

// sortedAddresses returns addrs sorted by interface and address, without
// copying when they already are.
func sortedAddresses(addrs []Address) []Address {
	if slices.IsSortedFunc(addrs, compareAddresses) {
		return addrs
	}
	addrs = slices.Clone(addrs)
	slices.SortStableFunc(addrs, compareAddresses)
	return addrs
}

// firstOf reports whether addrs[i] is the first entry of its address (an
// address on two interfaces counts once).
func firstOf(addrs []Address, i int) bool {
	k := pm.CanonicalAddr(addrs[i].Addr)
	for _, a := range addrs[:i] {
		if pm.CanonicalAddr(a.Addr) == k {
			return false
		}
	}
	return true
}

// lookup returns the first usable address equal to a.
func lookup(addrs []Address, a netip.Addr) (Address, bool) {
	k := pm.CanonicalAddr(a)
	for _, x := range addrs {
		if pm.CanonicalAddr(x.Addr) == k {
			return x, true
		}
	}
	return Address{}, false
}

// failed reports whether local address a is in c.Failed.
func (c *Connection) failed(a netip.Addr) bool {
	k := pm.CanonicalAddr(a)
	for _, f := range c.Failed {
		if pm.CanonicalAddr(f.Addr()) == k {
			return true
		}
	}
	return false
}

// isInitial reports whether s is the connection's initial subflow.
func (c *Connection) isInitial(s Subflow) bool {
	return pm.CanonicalAddrPort(s.Local) == pm.CanonicalAddrPort(c.Local) && pm.CanonicalAddrPort(s.Remote) == pm.CanonicalAddrPort(c.Remote)
}

// sameFamily reports whether a has the family of the connection (IPv4 or
// IPv6 after unmapping).
func (c *Connection) sameFamily(a netip.Addr) bool {
	return pm.CanonicalAddr(a).Is4() == pm.CanonicalAddr(c.Remote.Addr()).Is4()
}

// staleSubflows appends a DestroySubflow for every established subflow but
// the initial one whose local address is no longer usable, and returns the
// actions and the number of the other extra (non-initial) subflows, pending
// ones included.
func staleSubflows(out []Action, addrs []Address, c *Connection) ([]Action, int) {
	extra := 0
	for _, s := range c.Subflows {
		if c.isInitial(s) {
			continue
		}
		if _, ok := lookup(addrs, s.Local.Addr()); ok || s.Pending {
			extra++
			continue
		}
		out = append(out, Action{
			Kind: DestroySubflow, Token: c.Token,
			Local: s.Local.Addr(), LocalPort: s.Local.Port(), Interface: s.Interface,
			Backup: s.Backup, Remote: s.Remote,
			Reason: "address " + s.Local.Addr().String() + " is not usable any more",
		})
	}
	return out, extra
}

// followBackup appends a SetSubflowBackup for every established subflow,
// the initial one included, whose local address is usable with a backup
// flag other than the subflow's: a subflow's backup flag follows its
// address's flags (an interface NetworkManager says is metered, or one
// configured backup), so that traffic moves off an expensive path when it
// becomes one.
func followBackup(out []Action, addrs []Address, c *Connection) []Action {
	for _, s := range c.Subflows {
		if s.Pending {
			continue
		}
		a, ok := lookup(addrs, s.Local.Addr())
		if want := a.Flags&pm.FlagBackup != 0; !ok || want == s.Backup {
			continue
		}
		why := "address " + a.Addr.String() + " on " + a.Interface + " is not backup"
		if a.Flags&pm.FlagBackup != 0 {
			why = "address " + a.Addr.String() + " on " + a.Interface + " is backup"
		}
		out = append(out, Action{
			Kind: SetSubflowBackup, Token: c.Token,
			Local: s.Local.Addr(), LocalPort: s.Local.Port(), Interface: s.Interface,
			Backup: !s.Backup, Remote: s.Remote, Reason: why,
		})
	}
	return out
}

// room returns how many subflows may still be created next to extra ones.
func room(limit uint32, extra int) int {
	return max(int(limit)-extra, 0)
}

// subflowTo returns the CreateSubflow action from a to remote, for reason.
func subflowTo(c *Connection, a Address, remote netip.AddrPort, reason string) Action {
	return Action{
		Kind: CreateSubflow, Token: c.Token,
		Local: pm.CanonicalAddr(a.Addr), Interface: a.Interface, Ifindex: a.Ifindex,
		Backup: a.Flags&pm.FlagBackup != 0, Remote: remote, Reason: reason,
	}
}
