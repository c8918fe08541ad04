package pmtest

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Address families of pm.Event.Family (Linux values).
const (
	afInet  = 2
	afInet6 = 10
)

// The kernel's maxima (net/mptcp): endpoints per namespace, and the limits.
const (
	maxEndpoints = 8
	maxLimit     = 8
)

// FakeKernel is an in-memory path manager with the method set of *pmnl.Client,
// for unit tests. It answers like the Linux 6.18 kernel (docs/kernel-notes.md):
// the endpoint table with the kernel's id choice and refusals, the limits
// (2 subflows and 0 accepted ADD_ADDRs at first), and userspace-PM
// connections that tests add with AddConnection. Refusals are *pm.Error
// values with the kernel's errno and message, so they match pm's sentinels
// as the real client's do.
//
// Like the kernel, it emits events: on Events, which is buffered; an event
// that does not fit is dropped and counted (Dropped), as the kernel drops
// events a listener does not read in time. It records every call (Calls),
// and can be told to fail the next call of a method (FailNext). It is safe
// for concurrent use.
type FakeKernel struct {
	mu        sync.Mutex
	endpoints []pm.Address // sorted by id
	nextID    uint8        // the kernel's next_id: where the search for a free id starts
	limits    pm.Limits
	conns     map[uint32]*fakeConn
	port      uint16 // last ephemeral port handed out
	calls     []string
	fail      map[string]error
	events    chan pm.Event
	dropped   int
}

type fakeConn struct {
	userspace bool
	local     netip.AddrPort
	remote    netip.AddrPort
	addrs     []pm.Address // the connection's local addresses with their ids
	subflows  []fakeSubflow
	// initialClosed: DestroySubflow closed the initial subflow.
	initialClosed bool
}

type fakeSubflow struct {
	localID       uint8
	local, remote netip.AddrPort
	backup        bool
}

// EventBuffer is the capacity of FakeKernel.Events.
const EventBuffer = 1024

// NewFakeKernel returns a fake kernel with no endpoints, default limits and
// no connections.
func NewFakeKernel() *FakeKernel {
	return &FakeKernel{
		nextID: 1,
		limits: pm.Limits{Subflows: 2, AddAddrAccepted: 0},
		conns:  make(map[uint32]*fakeConn),
		port:   40000,
		fail:   make(map[string]error),
		events: make(chan pm.Event, EventBuffer),
	}
}

// Events returns the channel the fake's events are sent on.
func (k *FakeKernel) Events() <-chan pm.Event { return k.events }

// Dropped returns how many events did not fit into Events.
func (k *FakeKernel) Dropped() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dropped
}

// Calls returns the calls made so far, as the method and its arguments
// printed with %+v: "Announce 1234 {ID:1 Addr:10.0.0.1 ...}".
func (k *FakeKernel) Calls() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.calls)
}

// FailNext makes the next call of the named method (as "Announce") return
// err without doing anything.
func (k *FakeKernel) FailNext(method string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail[method] = err
}

// AddConnection makes an established client-side connection with this
// token from local to remote, under the userspace path manager or not, and
// returns the events it emitted (CREATED, ESTABLISHED), which are also sent
// on Events. A live connection with the token is replaced, as the kernel
// reuses tokens.
func (k *FakeKernel) AddConnection(token uint32, userspace bool, local, remote netip.AddrPort) []pm.Event {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.conns[token] = &fakeConn{userspace: userspace, local: local, remote: remote}
	ev := pm.Event{
		Token:      token,
		Family:     family(local.Addr()),
		LocalAddr:  local.Addr(),
		LocalPort:  local.Port(),
		RemoteAddr: remote.Addr(),
		RemotePort: remote.Port(),
	}
	created, established := ev, ev
	created.Type = pm.EventCreated
	established.Type = pm.EventEstablished
	return k.emit(created, established)
}

// CloseConnection closes the connection with this token and returns the
// CLOSED event it emitted (also sent on Events), or nothing if there is no
// such connection.
func (k *FakeKernel) CloseConnection(token uint32) []pm.Event {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conns[token] == nil {
		return nil
	}
	delete(k.conns, token)
	return k.emit(pm.Event{Type: pm.EventClosed, Token: token})
}

// emit sends events on the channel without blocking. k.mu is held.
func (k *FakeKernel) emit(evs ...pm.Event) []pm.Event {
	for _, ev := range evs {
		select {
		case k.events <- ev:
		default:
			k.dropped++
		}
	}
	return evs
}

// begin records a call and returns the error FailNext set for it, if any.
// k.mu is held.
func (k *FakeKernel) begin(method string, args ...any) error {
	call := method
	for _, a := range args {
		call += fmt.Sprintf(" %+v", a)
	}
	k.calls = append(k.calls, call)
	if err, ok := k.fail[method]; ok {
		delete(k.fail, method)
		return err
	}
	return nil
}

func refusal(op string, errno syscall.Errno, msg string) error {
	return &pm.Error{Op: op, Errno: errno, Message: msg}
}

// AddEndpoint adds an endpoint like the kernel: at most 8, no duplicate
// address (EEXIST) or id (EBUSY); id 0 takes the first free id from the
// highest one given so far. The port is kept for signal endpoints only.
func (k *FakeKernel) AddEndpoint(e pm.Address) (uint8, error) {
	const op = "add endpoint"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("AddEndpoint", e); err != nil {
		return 0, err
	}
	if !e.Addr.IsValid() {
		return 0, refusal(op, syscall.EINVAL, "missing address")
	}
	e.Addr = pm.CanonicalAddr(e.Addr)
	if e.Flags&pm.FlagSignal == 0 {
		e.Port = 0
	}
	if len(k.endpoints) >= maxEndpoints {
		return 0, refusal(op, syscall.ERANGE, "too many addresses or duplicate one")
	}
	for _, cur := range k.endpoints {
		if cur.Addr == e.Addr && cur.Port == e.Port {
			return 0, refusal(op, syscall.EEXIST, "too many addresses or duplicate one")
		}
		if e.ID != 0 && cur.ID == e.ID {
			return 0, refusal(op, syscall.EBUSY, "too many addresses or duplicate one")
		}
	}
	if e.ID == 0 {
		e.ID = k.freeID()
	}
	k.nextID = max(k.nextID, e.ID)
	k.endpoints = append(k.endpoints, e)
	slices.SortFunc(k.endpoints, func(a, b pm.Address) int { return int(a.ID) - int(b.ID) })
	return e.ID, nil
}

// freeID returns the first free endpoint id from nextID on, wrapping to 1
// once. There always is one: at most 8 endpoints exist.
func (k *FakeKernel) freeID() uint8 {
	for id := int(k.nextID); id <= 255; id++ {
		if k.endpointIndex(uint8(id)) < 0 {
			return uint8(id)
		}
	}
	k.nextID = 1
	for id := 1; ; id++ {
		if k.endpointIndex(uint8(id)) < 0 {
			return uint8(id)
		}
	}
}

func (k *FakeKernel) endpointIndex(id uint8) int {
	return slices.IndexFunc(k.endpoints, func(a pm.Address) bool { return a.ID == id })
}

// DeleteEndpoint deletes the endpoint with the id. Id 0, which the kernel
// takes as "the initial subflows' address", succeeds.
func (k *FakeKernel) DeleteEndpoint(id uint8) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("DeleteEndpoint", id); err != nil {
		return err
	}
	if id == 0 {
		return nil
	}
	i := k.endpointIndex(id)
	if i < 0 {
		return refusal("delete endpoint", syscall.EINVAL, "address not found")
	}
	k.endpoints = slices.Delete(k.endpoints, i, i+1)
	return nil
}

// Endpoints returns the endpoints by id.
func (k *FakeKernel) Endpoints() ([]pm.Address, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("Endpoints"); err != nil {
		return nil, err
	}
	return slices.Clone(k.endpoints), nil
}

// FlushEndpoints deletes every endpoint and restarts the id choice at 1.
func (k *FakeKernel) FlushEndpoints() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("FlushEndpoints"); err != nil {
		return err
	}
	k.endpoints = nil
	k.nextID = 1
	return nil
}

// SetLimits sets the limits; above 8 is refused (EINVAL).
func (k *FakeKernel) SetLimits(l pm.Limits) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("SetLimits", l); err != nil {
		return err
	}
	if l.Subflows > maxLimit || l.AddAddrAccepted > maxLimit {
		return refusal("set limits", syscall.EINVAL, fmt.Sprintf("limit greater than maximum (%d)", maxLimit))
	}
	k.limits = l
	return nil
}

// Limits returns the limits.
func (k *FakeKernel) Limits() (pm.Limits, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("Limits"); err != nil {
		return pm.Limits{}, err
	}
	return k.limits, nil
}

// SetEndpointFlags changes the backup and fullmesh flags of the endpoint
// with the id, as the kernel does, ignoring the other flags.
func (k *FakeKernel) SetEndpointFlags(id uint8, f pm.Flags) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("SetEndpointFlags", id, f); err != nil {
		return err
	}
	i := k.endpointIndex(id)
	if i < 0 {
		return refusal("set endpoint flags", syscall.EINVAL, "address not found")
	}
	const mutable = pm.FlagBackup | pm.FlagFullmesh
	k.endpoints[i].Flags = k.endpoints[i].Flags&^mutable | f&mutable
	return nil
}

// userspaceConn returns the userspace-PM connection with the token, or the
// kernel's refusal.
func (k *FakeKernel) userspaceConn(op string, token uint32) (*fakeConn, error) {
	c := k.conns[token]
	if c == nil {
		return nil, refusal(op, syscall.EINVAL, "invalid token")
	}
	if !c.userspace {
		return nil, refusal(op, syscall.EINVAL, "userspace PM not selected")
	}
	return c, nil
}

// useLocal binds the local address a, with its port, to its id on the
// connection, as the kernel's userspace PM does: an address and port keep
// one id, an id one address and port ("did not match address and id").
func (c *fakeConn) useLocal(op string, a pm.Address) error {
	for _, e := range c.addrs {
		addrMatch := e.Addr == a.Addr && e.Port == a.Port
		idMatch := e.ID == a.ID
		switch {
		case addrMatch && idMatch:
			return nil
		case addrMatch || idMatch:
			return refusal(op, syscall.EINVAL, "did not match address and id")
		}
	}
	c.addrs = append(c.addrs, pm.Address{ID: a.ID, Addr: a.Addr, Port: a.Port, Flags: a.Flags})
	return nil
}

// Addresses lists the local addresses of a userspace-PM connection, as the
// kernel's GET_ADDR with a token: those it announced (with FlagSignal) and
// those its subflows use.
func (k *FakeKernel) Addresses(token uint32) ([]pm.Address, error) {
	const op = "list addresses"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("Addresses", token); err != nil {
		return nil, err
	}
	c, err := k.userspaceConn(op, token)
	if err != nil {
		return nil, err
	}
	return slices.Clone(c.addrs), nil
}

// Connections lists the live connections with their subflows, as sock_diag
// does (it is a service.Lister). Connections are established and on the
// client side.
func (k *FakeKernel) Connections() ([]pm.Connection, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("Connections"); err != nil {
		return nil, err
	}
	out := make([]pm.Connection, 0, len(k.conns))
	for token, c := range k.conns {
		pc := pm.Connection{Token: token, Local: c.local, Remote: c.remote, Established: true}
		for _, sf := range c.subflows {
			pc.Subflows = append(pc.Subflows, pm.Subflow{
				LocalID: sf.localID, Local: sf.local, Remote: sf.remote, Backup: sf.backup,
			})
		}
		out = append(out, pc)
	}
	slices.SortFunc(out, func(a, b pm.Connection) int { return cmp.Compare(a.Token, b.Token) })
	return out, nil
}

// DropConnection closes the connection with this token without an event,
// as when the daemon's event socket overflowed.
func (k *FakeKernel) DropConnection(token uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.conns, token)
}

// Announce records the announcement of a on the connection; id 0 and an id
// bound to another address are refused (EINVAL). The kernel sends no event
// for it.
func (k *FakeKernel) Announce(token uint32, a pm.Address) error {
	const op = "announce"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("Announce", token, a); err != nil {
		return err
	}
	c, err := k.userspaceConn(op, token)
	if err != nil {
		return err
	}
	if a.ID == 0 {
		return refusal(op, syscall.EINVAL, "invalid addr id")
	}
	if !a.Addr.IsValid() {
		return refusal(op, syscall.EINVAL, "missing address")
	}
	return c.useLocal(op, a)
}

// Remove withdraws the local address with the id from the connection and
// closes its subflows that use it, emitting SUB_CLOSED for each.
func (k *FakeKernel) Remove(token uint32, id uint8) error {
	const op = "remove"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("Remove", token, id); err != nil {
		return err
	}
	c, err := k.userspaceConn(op, token)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(c.addrs, func(a pm.Address) bool { return a.ID == id })
	if i < 0 && id != 0 {
		return refusal(op, syscall.EINVAL, fmt.Sprintf("address with id %d not found", id))
	}
	if i >= 0 {
		c.addrs = slices.Delete(c.addrs, i, i+1)
	}
	c.subflows = slices.DeleteFunc(c.subflows, func(sf fakeSubflow) bool {
		if sf.localID != id {
			return false
		}
		k.emit(subflowEvent(pm.EventSubClosed, token, sf))
		return true
	})
	return nil
}

// CreateSubflow opens a subflow at once and emits SUB_ESTABLISHED. A local
// port of 0 gets an ephemeral port. The addresses must be of one family,
// and the local address and id must agree with the connection's others.
func (k *FakeKernel) CreateSubflow(token uint32, local pm.Address, remote netip.AddrPort) error {
	const op = "create subflow"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("CreateSubflow", token, local, remote); err != nil {
		return err
	}
	c, err := k.userspaceConn(op, token)
	if err != nil {
		return err
	}
	if !local.Addr.IsValid() || !remote.Addr().IsValid() || local.Addr.Unmap().Is4() != remote.Addr().Unmap().Is4() {
		return refusal(op, syscall.EINVAL, "families mismatch")
	}
	if err := c.useLocal(op, pm.Address{ID: local.ID, Addr: local.Addr, Port: local.Port}); err != nil {
		return err
	}
	port := local.Port
	if port == 0 {
		k.port++
		port = k.port
	}
	sf := fakeSubflow{
		localID: local.ID,
		local:   netip.AddrPortFrom(local.Addr, port),
		remote:  remote,
		backup:  local.Flags&pm.FlagBackup != 0,
	}
	c.subflows = append(c.subflows, sf)
	ev := subflowEvent(pm.EventSubEstablished, token, sf)
	ev.Ifindex = local.Ifindex
	k.emit(ev)
	return nil
}

// DestroySubflow closes the subflow with the 4-tuple and emits SUB_CLOSED;
// an unknown one is refused (ESRCH).
func (k *FakeKernel) DestroySubflow(token uint32, local, remote netip.AddrPort) error {
	const op = "destroy subflow"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("DestroySubflow", token, local, remote); err != nil {
		return err
	}
	c, err := k.userspaceConn(op, token)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(c.subflows, func(sf fakeSubflow) bool { return sf.local == local && sf.remote == remote })
	if i < 0 && local == c.local && remote == c.remote && !c.initialClosed {
		// The initial subflow: the kernel closes it too.
		c.initialClosed = true
		k.emit(subflowEvent(pm.EventSubClosed, token, fakeSubflow{local: local, remote: remote}))
		return nil
	}
	if i < 0 {
		return refusal(op, syscall.ESRCH, "subflow not found")
	}
	k.emit(subflowEvent(pm.EventSubClosed, token, c.subflows[i]))
	c.subflows = slices.Delete(c.subflows, i, i+1)
	return nil
}

// SetSubflowFlags sets the backup flag of the subflows from local (port 0:
// any port) to remote, the initial one included; none is refused (EINVAL).
// Like the kernel, it sends no event for a change made here.
func (k *FakeKernel) SetSubflowFlags(token uint32, local, remote netip.AddrPort, f pm.Flags) error {
	const op = "set subflow flags"
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.begin("SetSubflowFlags", token, local, remote, f); err != nil {
		return err
	}
	c, err := k.userspaceConn(op, token)
	if err != nil {
		return err
	}
	found := !c.initialClosed && c.local.Addr() == local.Addr() && (local.Port() == 0 || c.local.Port() == local.Port()) && c.remote == remote
	for i := range c.subflows {
		sf := &c.subflows[i]
		if sf.local.Addr() == local.Addr() && (local.Port() == 0 || sf.local.Port() == local.Port()) && sf.remote == remote {
			sf.backup = f&pm.FlagBackup != 0
			found = true
		}
	}
	if !found {
		return refusal(op, syscall.EINVAL, "subflow not found")
	}
	return nil
}

func subflowEvent(t pm.EventType, token uint32, sf fakeSubflow) pm.Event {
	return pm.Event{
		Type:       t,
		Token:      token,
		Family:     family(sf.local.Addr()),
		LocalID:    sf.localID,
		LocalAddr:  sf.local.Addr(),
		LocalPort:  sf.local.Port(),
		RemoteAddr: sf.remote.Addr(),
		RemotePort: sf.remote.Port(),
		Backup:     sf.backup,
	}
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return afInet
	}
	return afInet6
}
