package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// The built-in policy in the loop.
//
// The policy is pure (package policy): the service hands it a View (the
// usable local addresses with their configured flags, the kernel's
// endpoints with Owned set on those the policy made, the subflow limit) and
// one connection, and carries out the Actions it returns through the
// Kernel. It asks
//
//   - Endpoints and Connection for every live connection (reconcile) when
//     the usable addresses change, at the first NetSynced, when a
//     controller's claim ends, after a reload, after lost kernel events,
//     and after an administrator changed endpoints or limits;
//   - Connection for one connection at its ESTABLISHED, SUB_ESTABLISHED,
//     SUB_CLOSED, ANNOUNCED and REMOVED, and when a backoff of one of its
//     addresses ends.
//
// It never acts while a controller holds the claim, nor before the local
// addresses are known (the first NetSynced), so that a half-known address
// list does not remove endpoints. A connection is only handed to a policy
// of its own path manager (the one in force at its creation).
//
// A subflow the policy requested is pending until the kernel reports it
// established or closed, or the command fails. A failure (the command
// refused, a pending subflow closed, or a subflow the policy made closed
// without the policy asking) puts the local address into the connection's
// Failed list for a backoff that doubles with each failure in a row, so
// that nothing loops; the policy is asked again when it ends.

// backoff is the waiting time after a failure: min after the first,
// doubling up to max. A failure more than max after the previous backoff
// ended counts as a first one again.
type backoff struct{ min, max time.Duration }

var defaultBackoff = backoff{min: time.Second, max: 30 * time.Second}

// pendingTimeout is how long a requested subflow may stay without news
// before it counts as failed. It is longer than the kernel's own SYN
// retries (about 127 s with net.ipv4.tcp_syn_retries = 6), which end in a
// SUB_CLOSED.
const pendingTimeout = 150 * time.Second

// pendingSubflow is a subflow the policy requested.
type pendingSubflow struct {
	local     netip.Addr     // as policy keys it: no zone, unmapped
	remote    netip.AddrPort // likewise
	iface     string
	backup    bool
	requested time.Time
}

// failure is the backoff state of one local address on a connection.
type failure struct {
	addr    netip.Addr // unmapped, no zone
	count   int        // failures in a row
	until   time.Time  // end of the backoff
	waiting bool       // the policy has not been asked since the failure
}

// tuple is a subflow's 4-tuple as the kernel reports it.
type tuple struct{ local, remote netip.AddrPort }

// acting reports whether the built-in policy acts now.
func (s *Service) acting() bool { return s.ctl == nil && s.synced }

// view returns what the policy decides on. The slices are shared: the
// policies do not change them.
func (s *Service) view() policy.View {
	h := s.handover()
	return policy.View{
		Addresses: s.usable, Endpoints: s.endpoints, SubflowLimit: s.limits.Subflows, Now: s.now(),
		Handover: policy.HandoverSettings{Cold: h.Cold, Hysteresis: h.Hysteresis},
	}
}

// checkPathManager says, at start and reload, when the policy needs the
// other path manager than the namespace's, or sets it with
// Config.SetPathManager.
func (s *Service) checkPathManager() {
	want := s.pol.PathManager()
	if want == "" || s.kernelPM == "" || want == s.kernelPM {
		return
	}
	if !s.cfg.SetPathManager {
		s.log.Error(fmt.Sprintf("policy %s needs net.mptcp.path_manager=%s; set it or set `set_path_manager = true`",
			s.pol.Name(), want), "path_manager", s.kernelPM)
		return
	}
	if err := s.setPM(want); err != nil {
		s.log.Error(fmt.Sprintf("policy %s needs net.mptcp.path_manager=%s, and setting it failed", s.pol.Name(), want),
			"err", err)
		return
	}
	s.log.Info("path manager set for the policy (set_path_manager)", "policy", s.pol.Name(), "path_manager", want)
	s.refreshPathManager()
}

// reconcile brings the endpoints and every live connection to the policy's
// wish, if the policy acts now.
func (s *Service) reconcile() {
	if !s.acting() {
		return
	}
	s.reconcileEndpoints()
	for _, c := range s.conns.sorted() {
		s.reconcileConn(c)
	}
}

// reconcileEndpoints re-reads the kernel's endpoints (nobody tells when
// another program changes them) and carries out the policy's endpoint
// actions.
func (s *Service) reconcileEndpoints() {
	if !s.acting() {
		return
	}
	s.refreshEndpoints(nil)
	acts := s.pol.Endpoints(s.view())
	var edits []func([]policy.Endpoint) []policy.Endpoint
	for _, a := range acts {
		if edit := s.endpointAction(a); edit != nil {
			edits = append(edits, edit)
		}
	}
	if len(edits) > 0 {
		s.refreshEndpoints(func(eps []policy.Endpoint) []policy.Endpoint {
			for _, edit := range edits {
				eps = edit(eps)
			}
			return eps
		})
	}
}

// ownedEndpoint reports whether the endpoint with the id is the policy's.
func (s *Service) ownedEndpoint(id uint8) bool {
	return slices.ContainsFunc(s.endpoints, func(e policy.Endpoint) bool { return e.ID == id && e.Owned() })
}

// endpointAction carries out one endpoint action and returns the edit of
// the known endpoints it made, or nil if the kernel refused.
func (s *Service) endpointAction(a policy.Action) func([]policy.Endpoint) []policy.Endpoint {
	e := a.Endpoint
	switch a.Kind {
	case policy.AddEndpoint:
		id, err := s.k.AddEndpoint(e.Address)
		if err != nil {
			s.log.Warn("policy: the kernel refused an endpoint", "action", a.String(), "err", err)
			return nil
		}
		// An implicit endpoint of the address is replaced and keeps its
		// id: the id is the policy's now.
		e.ID, e.Origin = id, policy.OriginPolicy
		s.origins[keyOf(e.Address)] = e.Origin
		s.log.Info("policy: endpoint added", "id", id, "addr", e.Addr, "flags", e.Flags.String(), "interface", e.Interface, "why", a.Reason)
		return func(eps []policy.Endpoint) []policy.Endpoint {
			eps = slices.DeleteFunc(eps, func(x policy.Endpoint) bool { return x.ID == id })
			return append(eps, e)
		}
	case policy.RemoveEndpoint, policy.SetEndpointFlags:
		if !s.ownedEndpoint(e.ID) { // policies never ask this; a guard
			s.log.Error("policy: refusing to touch an endpoint it did not make", "action", a.String())
			return nil
		}
		if a.Kind == policy.RemoveEndpoint {
			if err := s.k.DeleteEndpoint(e.ID); err != nil {
				s.log.Warn("policy: the kernel refused to remove an endpoint", "action", a.String(), "err", err)
				return nil
			}
			s.log.Info("policy: endpoint removed", "id", e.ID, "addr", e.Addr, "why", a.Reason)
			return func(eps []policy.Endpoint) []policy.Endpoint {
				return slices.DeleteFunc(eps, func(x policy.Endpoint) bool { return x.ID == e.ID })
			}
		}
		if err := s.k.SetEndpointFlags(e.ID, e.Flags); err != nil {
			s.log.Warn("policy: the kernel refused endpoint flags", "action", a.String(), "err", err)
			return nil
		}
		s.log.Info("policy: endpoint flags set", "id", e.ID, "addr", e.Addr, "flags", e.Flags.String(), "why", a.Reason)
		return func(eps []policy.Endpoint) []policy.Endpoint {
			for i := range eps {
				if eps[i].ID == e.ID {
					eps[i].Flags = e.Flags
				}
			}
			return eps
		}
	}
	s.log.Error("policy: unexpected endpoint action", "action", a.String())
	return nil
}

// removeOwnedEndpoints removes the endpoints the policy made (clean stop,
// change of policy).
func (s *Service) removeOwnedEndpoints() {
	var gone []uint8
	for _, e := range s.endpoints {
		if !e.Owned() {
			continue
		}
		if err := s.k.DeleteEndpoint(e.ID); err != nil {
			s.log.Warn("removing the policy's endpoint", "id", e.ID, "addr", e.Addr, "err", err)
			continue
		}
		gone = append(gone, e.ID)
	}
	if len(gone) == 0 {
		return
	}
	s.log.Info("removed the policy's endpoints", "ids", fmt.Sprint(gone))
	s.refreshEndpoints(func(eps []policy.Endpoint) []policy.Endpoint {
		return slices.DeleteFunc(eps, func(e policy.Endpoint) bool { return slices.Contains(gone, e.ID) })
	})
}

// fits reports whether c's policy may act on it: it runs on the path
// manager c was created under.
func (s *Service) fits(c *conn) bool {
	switch s.polOf(c).PathManager() {
	case policy.PathManagerUserspace:
		return c.userspace
	case policy.PathManagerKernel:
		return !c.userspace
	}
	return true
}

// reconcileConn carries out the policy's actions on connection c.
func (s *Service) reconcileConn(c *conn) {
	if !s.acting() || !c.established {
		return
	}
	s.applyRules(c)
	if !s.fits(c) {
		return
	}
	for _, a := range s.polOf(c).Connection(s.view(), s.policyConn(c)) {
		if s.conns.byToken[c.token] != c {
			return // it closed (gone)
		}
		if !s.fits(c) {
			return // relabelled by a refusal (refused)
		}
		s.connAction(c, a)
	}
}

// policyConn returns connection c as the policy sees it. Its Subflows
// are the service's scratch slice (policies keep nothing they are given),
// valid until the next call.
func (s *Service) policyConn(c *conn) policy.Connection {
	pc := policy.Connection{
		Token:       c.token,
		ServerSide:  c.serverSide,
		Established: c.established,
		Local:       c.local,
		Remote:      c.remote,
		Subflows:    s.sfScratch[:0],
	}
	defer func() { s.sfScratch = pc.Subflows[:0] }()
	if c.local.IsValid() && c.remote.IsValid() && !c.initialClosed && !slices.Contains(c.closing, tuple{c.local, c.remote}) { // the initial subflow
		t := tuple{c.local, c.remote}
		stalled, since := c.healthOf(t)
		pc.Subflows = append(pc.Subflows, policy.Subflow{Local: t.local, Remote: t.remote, Backup: c.backupLocal[t],
			Stalled: stalled, HealthySince: since})
	}
	for _, sf := range c.subflows {
		t := tuple{netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort), netip.AddrPortFrom(sf.RemoteAddress, sf.RemotePort)}
		if slices.Contains(c.closing, t) || t == (tuple{c.local, c.remote}) {
			continue // going (the policy asked for that already), or the initial one
		}
		stalled, since := c.healthOf(t)
		pc.Subflows = append(pc.Subflows, policy.Subflow{Local: t.local, Remote: t.remote, Interface: sf.Interface,
			Backup: c.backupLocal[t], Stalled: stalled, HealthySince: since})
	}
	for _, p := range c.pending {
		pc.Subflows = append(pc.Subflows, policy.Subflow{
			Local: netip.AddrPortFrom(p.local, 0), Remote: p.remote, Interface: p.iface, Backup: p.backup, Pending: true,
		})
	}
	for _, a := range c.remoteAddrs {
		pc.PeerAddresses = append(pc.PeerAddresses, policy.PeerAddress{ID: a.ID, Addr: a.Address, Port: a.Port})
	}
	for _, a := range c.announced {
		pc.Announced = append(pc.Announced, policy.PeerAddress{ID: a.addr.ID, Addr: a.addr.Address, Port: a.addr.Port})
	}
	if len(c.failures) > 0 {
		now := s.now()
		for _, f := range c.failures {
			if f.waiting && f.until.After(now) {
				pc.Failed = append(pc.Failed, netip.AddrPortFrom(f.addr, 0))
			}
		}
	}
	return pc
}

// connAction carries out one action on connection c. A refusal is logged
// with the kernel's words and puts the local address into backoff.
func (s *Service) connAction(c *conn, a policy.Action) {
	switch a.Kind {
	case policy.CreateSubflow:
		local := pm.CanonicalAddr(a.Local)
		la := pm.Address{ID: s.ids.id(local, 0), Addr: local, Ifindex: int32(a.Ifindex)}
		if a.Backup {
			la.Flags = pm.FlagBackup
		}
		if err := s.gone(c, s.k.CreateSubflow(c.token, la, a.Remote)); err != nil {
			s.refused(c, a, err)
			return
		}
		now := s.now()
		c.pending = append(c.pending, pendingSubflow{
			local: local, remote: pm.CanonicalAddrPort(a.Remote), iface: a.Interface, backup: a.Backup, requested: now,
		})
		s.armRetry(now.Add(s.pendingTO))
		s.logAction(c, a, "policy: subflow requested", "local", local, "remote", a.Remote, "interface", a.Interface, "backup", a.Backup)
	case policy.DestroySubflow:
		t := tuple{netip.AddrPortFrom(a.Local, a.LocalPort), a.Remote}
		err := s.gone(c, s.k.DestroySubflow(c.token, t.local, t.remote))
		switch {
		case errors.Is(err, pm.ErrUnknownToken):
			return
		case errors.Is(err, pm.ErrNotFound):
			// The kernel has no such subflow: it closed and its SUB_CLOSED
			// was missed. Forget it as the event would have.
			s.log.Debug("policy: the subflow to close is gone already", "token", logToken(c.token), "local", t.local, "remote", t.remote)
			if t == (tuple{c.local, c.remote}) {
				c.initialClosed = true
			}
			if i := c.subflowIndex(t.local, t.remote); i >= 0 {
				sf := c.subflows[i]
				s.subflow(c, pm.Event{
					Type: pm.EventSubClosed, Token: c.token, LocalID: sf.LocalID, RemoteID: sf.RemoteID,
					LocalAddr: sf.LocalAddress, LocalPort: sf.LocalPort,
					RemoteAddr: sf.RemoteAddress, RemotePort: sf.RemotePort, Backup: sf.Backup,
				})
			}
			return
		case err != nil:
			s.log.Warn("policy: the kernel refused", "action", a.String(), "token", logToken(c.token), "err", err)
			return
		}
		c.closing = append(c.closing, t)
		s.logAction(c, a, "policy: subflow closed", "local", t.local, "remote", t.remote, "interface", a.Interface)
	case policy.SetSubflowBackup:
		local, remote := netip.AddrPortFrom(a.Local, a.LocalPort), a.Remote
		var flags pm.Flags
		if a.Backup {
			flags = pm.FlagBackup
		}
		if err := s.gone(c, s.k.SetSubflowFlags(c.token, local, remote, flags)); err != nil {
			s.log.Warn("policy: the kernel refused", "action", a.String(), "token", logToken(c.token), "err", err)
			return
		}
		// The kernel sends no event for a change made here.
		c.setBackupLocal(tuple{local, remote}, a.Backup)
		if i := c.subflowIndex(local, remote); i >= 0 && c.subflows[i].Backup != a.Backup {
			c.subflows[i].Backup = a.Backup
			s.publish(ConnectionChanged{Connection: c.snapshot(), Changed: []string{"Subflows"}})
		}
		s.logAction(c, a, "policy: subflow backup flag set", "local", local, "remote", remote, "backup", a.Backup)
	case policy.Announce:
		if _, err := s.announce(c, a.Local, a.LocalPort, a.ID, a.LocalPort == 0); err != nil {
			s.refused(c, a, err)
			return
		}
		s.logAction(c, a, "policy: address announced", "addr", a.Local, "interface", a.Interface)
	case policy.Withdraw:
		if err := s.withdraw(c, a.ID); err != nil {
			s.log.Warn("policy: the kernel refused", "action", a.String(), "token", logToken(c.token), "err", err)
			return
		}
		s.logAction(c, a, "policy: announcement withdrawn", "id", a.ID, "addr", a.Local)
	default:
		s.log.Error("policy: unexpected connection action", "action", a.String())
	}
}

// logAction writes the info record of an action carried out on c, with
// the connection's token and the policy's reason (WHY=), within the
// budget of such records (logBudget); at the debug level, every one.
func (s *Service) logAction(c *conn, a policy.Action, msg string, args ...any) {
	ctx := context.Background()
	if !s.log.Enabled(ctx, slog.LevelInfo) {
		return // nothing to write, nothing to count
	}
	if !s.log.Enabled(ctx, slog.LevelDebug) && !s.actionLog.allow(s.now()) {
		s.armRetry(s.actionLog.summaryDue())
		return
	}
	s.log.Info(msg, append([]any{"token", logToken(c.token), "why", a.Reason}, args...)...)
}

// logSummary writes how many action records the budget left out, once
// their period is over; it returns when it is due otherwise (zero: none).
func (s *Service) logSummary(now time.Time) time.Time {
	due := s.actionLog.summaryDue()
	if due.IsZero() || now.Before(due) {
		return due
	}
	n, since := s.actionLog.take()
	s.log.Info("policy: path-management records suppressed",
		"suppressed", n, "since", since.Format(time.RFC3339), "period", now.Sub(since).Round(time.Second))
	return time.Time{}
}

// refused logs a refused action on c and backs off its local address.
func (s *Service) refused(c *conn, a policy.Action, err error) {
	switch {
	case errors.Is(err, pm.ErrUnknownToken):
		return // the connection closed meanwhile (gone dropped it)
	case errors.Is(err, pm.ErrNotSupported) && !c.userspace:
		// "userspace PM not selected": gone relabelled the connection
		// (pmcheck.go); the policy leaves it alone from now on.
		return
	case errors.Is(err, syscall.ENOTCONN):
		// The connection is closing: nothing to warn about.
		s.log.Debug("policy: the kernel refused", "action", a.String(), "token", logToken(c.token), "err", err)
	default:
		s.log.Warn("policy: the kernel refused", "action", a.String(), "token", logToken(c.token), "err", err)
	}
	s.fail(c, a.Local)
}

// fail starts or lengthens the backoff of local address addr on c.
func (s *Service) fail(c *conn, addr netip.Addr) { s.failFor(c, addr, false) }

// failFor is fail; for good (the peer reset the subflow for a reason that
// does not pass, such as administratively-prohibited) the address is not
// used again on the connection.
func (s *Service) failFor(c *conn, addr netip.Addr, forGood bool) {
	now := s.now()
	k := pm.CanonicalAddr(addr)
	i := slices.IndexFunc(c.failures, func(f failure) bool { return f.addr == k })
	if i < 0 {
		c.failures = append(c.failures, failure{addr: k})
		i = len(c.failures) - 1
	}
	f := &c.failures[i]
	if !f.waiting && now.Sub(f.until) > s.backoff.max {
		f.count = 0 // quiet for long enough: start again
	}
	f.count++
	d := s.backoff.max
	if f.count <= 16 {
		d = min(s.backoff.min<<(f.count-1), s.backoff.max)
	}
	if forGood {
		f.until, f.waiting = now.Add(100*365*24*time.Hour), true
		s.log.Info("policy: not trying the address again on this connection", "token", logToken(c.token), "addr", k)
		return
	}
	f.until, f.waiting = now.Add(d), true
	s.armRetry(f.until)
	s.log.Debug("policy: backing off", "token", logToken(c.token), "addr", k, "for", d, "failures", f.count)
}

// armRetry makes the retry timer fire at t at the latest.
func (s *Service) armRetry(t time.Time) {
	if !s.retryAt.IsZero() && !t.Before(s.retryAt) {
		return
	}
	s.retryAt = t
	s.retry.Reset(max(t.Sub(s.now()), 0))
}

// retryDue runs when the retry timer fires: pending subflows not heard of
// for too long fail, connections whose backoff ended are reconciled, and
// the timer is armed for the next deadline.
func (s *Service) retryDue() {
	now := s.now()
	s.retryAt = time.Time{}
	var next time.Time
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if t := s.logSummary(now); !t.IsZero() {
		later(t)
	}
	for _, c := range s.conns.sorted() {
		due := false
		var expired []netip.Addr
		c.pending = orNil(slices.DeleteFunc(c.pending, func(p pendingSubflow) bool {
			if now.Sub(p.requested) < s.pendingTO {
				later(p.requested.Add(s.pendingTO))
				return false
			}
			s.log.Warn("policy: no news of a requested subflow", "token", logToken(c.token), "local", p.local, "remote", p.remote)
			expired = append(expired, p.local)
			return true
		}))
		for _, a := range expired {
			s.fail(c, a)
			due = true
		}
		c.failures = slices.DeleteFunc(c.failures, func(f failure) bool {
			return !f.waiting && now.Sub(f.until) > s.backoff.max
		})
		for i := range c.failures {
			f := &c.failures[i]
			switch {
			case !f.waiting:
			case f.until.After(now):
				later(f.until)
			default:
				f.waiting = false
				due = true
			}
		}
		if due {
			s.reconcileConn(c)
		}
	}
	if !next.IsZero() {
		s.armRetry(next)
	}
}

// orNil returns s, or nil when s is empty. A connection's requests and
// closes wait only for the kernel's news of them, while the connection
// may live for days: an emptied list lets its array go (208 bytes a
// connection under subflow-per-interface with three paths).
func orNil[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

// subflowNews updates the pending, closing and failure state of c with a
// SUB_ESTABLISHED or SUB_CLOSED for the 4-tuple t; established says
// whether the service knew the subflow established.
func (s *Service) subflowNews(c *conn, ev pm.Event, t tuple, established bool) {
	typ := ev.Type
	lk, rk := pm.CanonicalAddr(t.local.Addr()), pm.CanonicalAddrPort(t.remote)
	p := slices.IndexFunc(c.pending, func(p pendingSubflow) bool { return p.local == lk && p.remote == rk })
	if pm.CanonicalAddrPort(t.local) == pm.CanonicalAddrPort(c.local) && pm.CanonicalAddrPort(t.remote) == pm.CanonicalAddrPort(c.remote) {
		p = -1 // the initial subflow: not a requested one, though its addresses may be a request's
	}
	switch typ {
	case pm.EventSubEstablished:
		if p >= 0 {
			c.setBackupLocal(t, c.pending[p].backup)
			c.pending = orNil(slices.Delete(c.pending, p, p+1))
			c.made = append(c.made, t)
		}
	case pm.EventSubClosed:
		c.setBackupLocal(t, false)
		closing := slices.Index(c.closing, t)
		made := slices.Index(c.made, t)
		if closing >= 0 {
			c.closing = orNil(slices.Delete(c.closing, closing, closing+1))
		}
		if made >= 0 {
			c.made = slices.Delete(c.made, made, made+1)
		}
		reset := pm.ResetReason(ev.ResetReason)
		switch {
		case established && made >= 0 && closing < 0:
			// A subflow the policy made closed without being asked to: made
			// again after a backoff, unless the peer refuses it for good.
			s.log.Info("policy: a subflow it made closed", "token", logToken(c.token), "local", t.local, "remote", t.remote,
				"error", pm.ErrnoName(uint32(ev.Error)), "reset", reset.String(), "again", reset.Transient())
			s.failFor(c, lk, !reset.Transient())
		case !established && p >= 0:
			// A requested subflow that never came up.
			c.pending = orNil(slices.Delete(c.pending, p, p+1))
			s.failFor(c, lk, !reset.Transient())
		}
	}
}
