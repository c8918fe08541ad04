package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// errStopped is the cause of a request made when the loop no longer runs.
var errStopped = errors.New("the service has stopped")

// call hands fn to the service loop and returns its result. It waits while
// ctx allows: a request abandoned after the loop took it may still take
// effect. A request made before Run waits for it; one made after Run
// returned fails.
func call[T any](ctx context.Context, s *Service, op string, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	var zero T
	done := make(chan result, 1)
	req := func() {
		if err := ctx.Err(); err != nil {
			done <- result{err: wrapErr(op, err)}
			return
		}
		v, err := fn()
		s.flush() // the caller may look at the published state next
		done <- result{v, err}
	}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return zero, wrapErr(op, ctx.Err())
	case <-s.stopped:
		return zero, wrapErr(op, errStopped)
	}
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, wrapErr(op, ctx.Err())
	}
}

// do is call for requests without a result.
func do(ctx context.Context, s *Service, op string, fn func() error) error {
	_, err := call(ctx, s, op, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// Manager returns the manager's properties. It re-reads the namespace's path
// manager first.
func (s *Service) Manager(ctx context.Context) (Manager, error) {
	return call(ctx, s, "manager", func() (Manager, error) {
		s.refreshPathManager()
		return s.manager(), nil
	})
}

// Connections returns every live connection, by object number.
func (s *Service) Connections(ctx context.Context) ([]Connection, error) {
	return call(ctx, s, "connections", func() ([]Connection, error) {
		conns := s.conns.sorted()
		out := make([]Connection, len(conns))
		for i, c := range conns {
			out[i] = c.snapshot()
		}
		return out, nil
	})
}

// Connection returns the connection with object number id.
func (s *Service) Connection(ctx context.Context, id uint64) (Connection, error) {
	const op = "connection"
	return call(ctx, s, op, func() (Connection, error) {
		c := s.conns.byID[id]
		if c == nil {
			return Connection{}, reqErrorf(ErrNotFound, "%s: no connection %d", op, id)
		}
		return c.snapshot(), nil
	})
}

// ConnectionByToken returns the object number of the live connection with
// the MPTCP token.
func (s *Service) ConnectionByToken(ctx context.Context, token uint32) (uint64, error) {
	const op = "connection by token"
	return call(ctx, s, op, func() (uint64, error) {
		c := s.conns.byToken[token]
		if c == nil {
			return 0, reqErrorf(ErrNotFound, "%s: no connection with token %08x", op, token)
		}
		return c.id, nil
	})
}

// AddEndpoint adds an in-kernel path-manager endpoint and returns its id.
// e.ID 0 lets the kernel choose; e.Ifindex and e.Origin are ignored (the
// interface is e.Interface, and the endpoint's origin is controller when
// the controller asks, else admin). An address with a zone and no
// e.Interface uses the zone as the interface.
func (s *Service) AddEndpoint(ctx context.Context, c Caller, e policy.Endpoint) (uint8, error) {
	const op = "add endpoint"
	return call(ctx, s, op, func() (uint8, error) {
		origin, err := s.authorize(op, c)
		if err != nil {
			return 0, err
		}
		addr, ifindex, err := s.addrAndLink(op, e.Addr, e.Interface)
		if err != nil {
			return 0, err
		}
		e.Addr, e.Ifindex, e.Origin = addr, ifindex, origin
		id, err := s.k.AddEndpoint(e.Address)
		if err != nil {
			return 0, wrapErr(op, err)
		}
		e.ID = id
		s.origins[keyOf(e.Address)] = origin
		s.refreshEndpoints(func(eps []policy.Endpoint) []policy.Endpoint {
			eps = slices.DeleteFunc(eps, func(x policy.Endpoint) bool { return x.ID == id })
			return append(eps, e)
		})
		s.reconcileEndpoints()
		return id, nil
	})
}

// RemoveEndpoint removes the in-kernel endpoint with the id.
func (s *Service) RemoveEndpoint(ctx context.Context, c Caller, id uint8) error {
	const op = "remove endpoint"
	return do(ctx, s, op, func() error {
		if _, err := s.authorize(op, c); err != nil {
			return err
		}
		if id == 0 {
			return invalidf("%s: id 0 is no endpoint", op)
		}
		if err := s.k.DeleteEndpoint(id); err != nil {
			return wrapErr(op, err)
		}
		s.refreshEndpoints(func(eps []policy.Endpoint) []policy.Endpoint {
			return slices.DeleteFunc(eps, func(e policy.Endpoint) bool { return e.ID == id })
		})
		s.reconcileEndpoints()
		return nil
	})
}

// SetEndpointFlags sets the flags of the in-kernel endpoint with the id (the
// kernel changes backup and fullmesh only).
func (s *Service) SetEndpointFlags(ctx context.Context, c Caller, id uint8, f pm.Flags) error {
	const op = "set endpoint flags"
	return do(ctx, s, op, func() error {
		if _, err := s.authorize(op, c); err != nil {
			return err
		}
		if err := s.k.SetEndpointFlags(id, f); err != nil {
			return wrapErr(op, err)
		}
		s.refreshEndpoints(func(eps []policy.Endpoint) []policy.Endpoint {
			for i := range eps {
				if eps[i].ID == id {
					eps[i].Flags = f
				}
			}
			return eps
		})
		s.reconcileEndpoints()
		return nil
	})
}

// FlushEndpoints removes every in-kernel endpoint.
func (s *Service) FlushEndpoints(ctx context.Context, c Caller) error {
	const op = "flush endpoints"
	return do(ctx, s, op, func() error {
		if _, err := s.authorize(op, c); err != nil {
			return err
		}
		if err := s.k.FlushEndpoints(); err != nil {
			return wrapErr(op, err)
		}
		s.refreshEndpoints(func([]policy.Endpoint) []policy.Endpoint { return nil })
		s.reconcileEndpoints()
		return nil
	})
}

// SetLimits sets the in-kernel path manager's limits.
func (s *Service) SetLimits(ctx context.Context, c Caller, l Limits) error {
	const op = "set limits"
	return do(ctx, s, op, func() error {
		if _, err := s.authorize(op, c); err != nil {
			return err
		}
		if err := s.k.SetLimits(pm.Limits(l)); err != nil {
			return wrapErr(op, err)
		}
		if got, err := s.k.Limits(); err == nil {
			l = Limits(got)
		}
		s.setLimits(l)
		s.reconcile()
		return nil
	})
}

// AnnounceAddress announces addr and port to the peer of connection conn
// (ADD_ADDR) and returns the address id used: id, or if id is 0 the one the
// daemon keeps for addr and the announced port. A listening MPTCP socket stands behind the
// announcement until it is removed or the connection closes; port 0 means
// the port of a listener the daemon already holds on addr, or a new one the
// kernel chooses, and that port is announced.
func (s *Service) AnnounceAddress(ctx context.Context, c Caller, conn uint64, addr netip.Addr, port uint16, id uint8) (uint8, error) {
	const op = "announce"
	return call(ctx, s, op, func() (uint8, error) {
		cn, err := s.userspaceConn(op, c, conn)
		if err != nil {
			return 0, err
		}
		return s.announce(cn, addr, port, id, false)
	})
}

// announce announces addr and port on connection cn with a listener behind
// (AnnounceAddress, and the policy's Announce) and returns the id used.
//
// With connPort, port is ignored: the listener goes on addr and the
// connection's own local port, and the ADD_ADDR carries no port, which
// tells the peer to join that port. This is what the policy does: an IPv6
// ADD_ADDR with a port (30 bytes) does not fit in the TCP options next to
// the timestamps, and the kernel drops it (MPTcpExtAddAddrTxDrop).
func (s *Service) announce(cn *conn, addr netip.Addr, port uint16, id uint8, connPort bool) (uint8, error) {
	const op = "announce"
	if !addr.IsValid() {
		return 0, invalidf("%s: no address", op)
	}
	if connPort {
		port = cn.local.Port()
	}
	bound, ours, err := s.lis.acquire(netip.AddrPortFrom(addr, port))
	if err != nil {
		kind := ErrFailed
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			kind = ErrInvalidArguments
		}
		return 0, &requestError{kind: kind, msg: op + ": listen: " + err.Error(), cause: err}
	}
	// The kernel binds an id to the address and the port it is given.
	kernelPort := bound.Port()
	if connPort {
		kernelPort = 0
	}
	explicit := id != 0
	if !explicit {
		id = s.ids.id(addr, kernelPort)
	}
	a := AnnouncedAddress{ID: id, Address: addr.WithZone(""), Port: bound.Port()}
	if err := s.gone(cn, s.k.Announce(cn.token, pm.Address{ID: id, Addr: a.Address, Port: kernelPort, Flags: pm.FlagSignal})); err != nil {
		if ours {
			s.lis.release(bound)
		}
		return 0, wrapErr(op, err)
	}
	if explicit {
		s.ids.claim(addr, kernelPort, id)
	}
	ann := announcement{addr: a, listener: bound, ours: ours}
	i := slices.IndexFunc(cn.announced, func(x announcement) bool { return x.addr.ID == id })
	if i < 0 {
		cn.announced = append(cn.announced, ann)
		s.publish(ConnectionChanged{Connection: cn.snapshot(), Changed: []string{"AnnouncedAddresses"}})
		return id, nil
	}
	old := cn.announced[i]
	if old.ours {
		s.lis.release(old.listener)
	}
	cn.announced[i] = ann
	if old.addr != a {
		s.publish(ConnectionChanged{Connection: cn.snapshot(), Changed: []string{"AnnouncedAddresses"}})
	}
	return id, nil
}

// RemoveAddress withdraws the address with the local id from connection
// conn (REMOVE_ADDR); the listener behind it goes with the last
// announcement that uses it.
func (s *Service) RemoveAddress(ctx context.Context, c Caller, conn uint64, id uint8) error {
	const op = "remove address"
	return do(ctx, s, op, func() error {
		cn, err := s.userspaceConn(op, c, conn)
		if err != nil {
			return err
		}
		return s.withdraw(cn, id)
	})
}

// withdraw removes the announcement with the id from connection cn
// (RemoveAddress, and the policy's Withdraw) and releases its listener.
func (s *Service) withdraw(cn *conn, id uint8) error {
	const op = "remove address"
	if err := s.gone(cn, s.k.Remove(cn.token, id)); err != nil {
		return wrapErr(op, err)
	}
	i := slices.IndexFunc(cn.announced, func(x announcement) bool { return x.addr.ID == id })
	if i < 0 {
		return nil
	}
	if a := cn.announced[i]; a.ours {
		s.lis.release(a.listener)
	}
	cn.announced = slices.Delete(cn.announced, i, i+1)
	s.publish(ConnectionChanged{Connection: cn.snapshot(), Changed: []string{"AnnouncedAddresses"}})
	return nil
}

// CreateSubflow asks the kernel for a new subflow of connection conn. It
// returns when the kernel accepted the command; the subflow's
// establishment comes as a SubflowEvent. A local id of 0 means the id the
// daemon keeps for the local address and port.
func (s *Service) CreateSubflow(ctx context.Context, c Caller, conn uint64, r SubflowRequest) error {
	const op = "create subflow"
	return do(ctx, s, op, func() error {
		cn, err := s.userspaceConn(op, c, conn)
		if err != nil {
			return err
		}
		if !r.LocalAddress.IsValid() || !r.RemoteAddress.IsValid() {
			return invalidf("%s: both a local and a remote address are needed", op)
		}
		if r.RemotePort == 0 {
			return invalidf("%s: no remote port", op)
		}
		local, ifindex, err := s.addrAndLink(op, r.LocalAddress, r.Interface)
		if err != nil {
			return err
		}
		remote := r.RemoteAddress.WithZone("")
		if local.Unmap().Is4() != remote.Unmap().Is4() {
			return invalidf("%s: %s and %s are of different families", op, local, remote)
		}
		if s.synced && !s.net.hasAddr(local) {
			return invalidf("%s: %s is not an address of this host", op, local)
		}
		id := r.LocalID
		if id == 0 {
			id = s.ids.id(local, r.LocalPort)
		}
		var flags pm.Flags
		if r.Backup {
			flags = pm.FlagBackup
		}
		la := pm.Address{ID: id, Addr: local, Port: r.LocalPort, Flags: flags, Ifindex: ifindex}
		if err := s.gone(cn, s.k.CreateSubflow(cn.token, la, netip.AddrPortFrom(remote, r.RemotePort))); err != nil {
			return wrapErr(op, err)
		}
		if r.LocalID != 0 {
			s.ids.claim(local, r.LocalPort, id)
		}
		return nil
	})
}

// RemoveSubflow closes the subflow of connection conn with the 4-tuple; its
// closing comes as a SubflowEvent.
func (s *Service) RemoveSubflow(ctx context.Context, c Caller, conn uint64, local, remote netip.AddrPort) error {
	const op = "remove subflow"
	return do(ctx, s, op, func() error {
		cn, err := s.userspaceConn(op, c, conn)
		if err != nil {
			return err
		}
		if err := checkTuple(op, local, remote, false); err != nil {
			return err
		}
		if err := s.gone(cn, s.k.DestroySubflow(cn.token, local, remote)); err != nil {
			return wrapErr(op, err)
		}
		return nil
	})
}

// SetSubflowBackup sets or clears the backup flag of the subflows of
// connection conn from local to remote (local port 0: every subflow from
// the local address to remote) and tells the peer. The kernel sends no
// event for a change made here, so the service updates Subflows itself.
func (s *Service) SetSubflowBackup(ctx context.Context, c Caller, conn uint64, local, remote netip.AddrPort, backup bool) error {
	const op = "set subflow backup"
	return do(ctx, s, op, func() error {
		cn, err := s.userspaceConn(op, c, conn)
		if err != nil {
			return err
		}
		if err := checkTuple(op, local, remote, true); err != nil {
			return err
		}
		var flags pm.Flags
		if backup {
			flags = pm.FlagBackup
		}
		if err := s.gone(cn, s.k.SetSubflowFlags(cn.token, local, remote, flags)); err != nil {
			return wrapErr(op, err)
		}
		changed := false
		for i := range cn.subflows {
			sf := &cn.subflows[i]
			if sf.LocalAddress == local.Addr() && (local.Port() == 0 || sf.LocalPort == local.Port()) &&
				sf.RemoteAddress == remote.Addr() && sf.RemotePort == remote.Port() {
				cn.setBackupLocal(tuple{netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort), remote}, backup)
				if sf.Backup != backup {
					sf.Backup = backup
					changed = true
				}
			}
		}
		if changed {
			s.publish(ConnectionChanged{Connection: cn.snapshot(), Changed: []string{"Subflows"}})
		}
		return nil
	})
}

// RegisterController makes caller c, with its object at path, the
// controller: from now on only it may make changes. The claim ends with
// UnregisterController, ControllerVanished or Run's return.
func (s *Service) RegisterController(ctx context.Context, c Caller, path string) error {
	const op = "register controller"
	return do(ctx, s, op, func() error {
		if c.Name == "" || path == "" {
			return invalidf("%s: a bus name and an object path are needed", op)
		}
		if s.ctl != nil {
			return reqErrorf(ErrAlreadyControlled, "%s: %s already controls the path manager", op, s.ctl.name)
		}
		s.ctl = &controller{name: c.Name, path: path}
		s.log.Info("controller registered", "name", c.Name, "path", path)
		s.publishManager("ControlMode", "Controller")
		return nil
	})
}

// UnregisterController ends caller c's claim made with the same path.
func (s *Service) UnregisterController(ctx context.Context, c Caller, path string) error {
	const op = "unregister controller"
	return do(ctx, s, op, func() error {
		if s.ctl == nil || s.ctl.name != c.Name || s.ctl.path != path {
			return reqErrorf(ErrNotController, "%s: %s has no claim with path %q", op, c.Name, path)
		}
		s.releaseController("unregistered", "")
		return nil
	})
}

// RevokeController ends the claim at caller c's request: an administrator
// takes control back from a controller that is stuck. The controller is
// told (ControllerReleased with the reason "revoked", after the
// ManagerChanged that ends the claim) and the built-in policy takes over,
// as when a controller leaves. c must have been authorized; it need not be
// the controller. Without a claim it is ErrNotController.
func (s *Service) RevokeController(ctx context.Context, c Caller) error {
	const op = "revoke controller"
	return do(ctx, s, op, func() error {
		if s.ctl == nil {
			return reqErrorf(ErrNotController, "%s: no controller is registered", op)
		}
		s.releaseController(fmt.Sprintf("revoked by %s (uid %d)", c.Name, c.UID), "revoked")
		return nil
	})
}

// ControllerVanished tells the service that the bus name went away; if it
// was the controller's, the claim ends. It returns when the service has
// dealt with it, or at once if the service has stopped.
func (s *Service) ControllerVanished(name string) {
	_ = do(context.Background(), s, "controller vanished", func() error {
		if s.ctl != nil && s.ctl.name == name {
			s.releaseController("vanished", "")
		}
		return nil
	})
}

// releaseController ends the claim, and the built-in policy reconciles
// every endpoint and connection, as if it had run all along. With a
// reason, the controller is told (Controller.Release) once the claim is
// gone and before the policy acts.
func (s *Service) releaseController(why, reason string) {
	ctl := s.ctl
	s.log.Info("controller released", "name", ctl.name, "path", ctl.path, "why", why)
	s.ctl = nil
	s.publishManager("ControlMode", "Controller")
	if reason != "" {
		s.publish(ControllerReleased{Name: ctl.name, Path: ctl.path, Reason: reason})
	}
	s.reconcile()
}

// authorize checks that caller c may make changes now, and returns the
// origin of what it makes.
func (s *Service) authorize(op string, c Caller) (policy.Origin, error) {
	if s.ctl == nil {
		return policy.OriginAdmin, nil
	}
	if c.Name != s.ctl.name {
		return "", reqErrorf(ErrNotController, "%s: %s controls the path manager", op, s.ctl.name)
	}
	return policy.OriginController, nil
}

// userspaceConn authorizes caller c and returns connection id, which must be
// under the userspace path manager.
func (s *Service) userspaceConn(op string, c Caller, id uint64) (*conn, error) {
	if _, err := s.authorize(op, c); err != nil {
		return nil, err
	}
	cn := s.conns.byID[id]
	if cn == nil {
		return nil, reqErrorf(ErrNotFound, "%s: no connection %d", op, id)
	}
	if !cn.userspace {
		return nil, reqErrorf(ErrNotSupported, "%s: connection %d is not under the userspace path manager", op, id)
	}
	return cn, nil
}

// addrAndLink checks a local address and interface name and returns the
// address without zone and the interface's index (0 for none). A zone
// stands for the interface when none is named.
func (s *Service) addrAndLink(op string, addr netip.Addr, iface string) (netip.Addr, int32, error) {
	if !addr.IsValid() {
		return netip.Addr{}, 0, invalidf("%s: no address", op)
	}
	if z := addr.Zone(); z != "" {
		if iface != "" && iface != z {
			return netip.Addr{}, 0, invalidf("%s: address zone %q and interface %q differ", op, z, iface)
		}
		iface = z
	}
	if iface == "" {
		return addr, 0, nil
	}
	i, ok := s.net.linkIndex(iface)
	if !ok {
		return netip.Addr{}, 0, invalidf("%s: unknown interface %q", op, iface)
	}
	return addr.WithZone(""), i, nil
}

// checkTuple checks a subflow's 4-tuple: both addresses, the remote port
// and, unless anyLocalPort, the local port.
func checkTuple(op string, local, remote netip.AddrPort, anyLocalPort bool) error {
	switch {
	case !local.Addr().IsValid() || !remote.Addr().IsValid():
		return invalidf("%s: both a local and a remote address are needed", op)
	case remote.Port() == 0 || (local.Port() == 0 && !anyLocalPort):
		return invalidf("%s: the ports of both ends are needed", op)
	}
	return nil
}
