package policy

import (
	"net/netip"
	"slices"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// NameHandover is the name of the handover policy.
const NameHandover = "handover"

func init() { Register(NameHandover, func() Policy { return handover{} }) }

// handover carries a client's traffic on its cheap paths and keeps the
// expensive ones standing by, for the userspace path manager: Apple's
// "handover" service type, per interface.
//
// On an established client-side connection, with the usable addresses'
// preferences (an interface's addresses share one), a path "works" when a
// subflow on a cheap interface is established and not stalled (data
// outstanding and nothing acknowledged for the stall timeout), and is
// "settled" when it has worked for View.Handover.Hysteresis.
//
//   - A stalled subflow, the initial one included, is destroyed once
//     another subflow works: the kernel then sends what was outstanding
//     on it again at once. So is the initial subflow once its address is
//     not usable.
//   - While a cheap path works: every cheap interface gets a subflow
//     (non-backup); with a warm standby every expensive or backup
//     interface gets a backup subflow, with a cold one none. Once a cheap
//     path has settled, a cheap subflow that is backup is promoted; once a
//     settled cheap subflow is not backup (the next decision), a standby
//     subflow that is not backup is demoted (warm, or the initial one) or
//     destroyed (cold): the traffic never lacks a non-backup subflow.
//   - While none works: the standby subflows are promoted (MP_PRIO) and
//     standby interfaces without one get a non-backup subflow; cheap
//     interfaces without a subflow get a backup one, which probes for the
//     path's return and is promoted once it has settled.
//
// Subflows on addresses that are no longer usable are destroyed, as by the
// other policies. An interface counts as served by any subflow, pending
// ones included, from one of its addresses. Addresses in c.Failed are not
// used; no more than v.SubflowLimit extra subflows are made. On the server
// side it announces as subflow-per-interface does: the client decides.
type handover struct{}

func (handover) Name() string            { return NameHandover }
func (handover) PathManager() string     { return PathManagerUserspace }
func (handover) Endpoints(View) []Action { return nil }

// livePath is an established subflow and the usable address it leaves
// from.
type livePath struct {
	s       Subflow
	a       Address
	initial bool
}

func (handover) Connection(v View, c Connection) []Action {
	if !c.Established {
		return nil
	}
	addrs := sortedAddresses(v.Addresses)
	if c.ServerSide {
		return announceOthers(addrs, &c)
	}
	out, extra := staleSubflows(nil, addrs, &c)

	settled := func(s Subflow) bool {
		return !s.Stalled && !s.HealthySince.IsZero() && v.Now.Sub(s.HealthySince) >= v.Handover.Hysteresis
	}
	var paths []livePath
	// stableActive: a settled cheap subflow that is not backup carries
	// traffic; only then are the standbys demoted, so that the stream is
	// never without a non-backup subflow while it moves back.
	working, stable, stableActive, anyHealthy := false, false, false, false
	for _, s := range c.Subflows {
		a, ok := lookup(addrs, s.Local.Addr())
		if s.Pending || !ok {
			continue
		}
		p := livePath{s, a, c.isInitial(s)}
		paths = append(paths, p)
		if !s.Stalled {
			anyHealthy = true
			if a.Preference == PreferCheap {
				working = true
				stable = stable || settled(s)
				stableActive = stableActive || settled(s) && !s.Backup
			}
		}
	}
	// Dead subflows, the initial one included, are closed once another
	// subflow works: closing one makes the kernel send what was
	// outstanding on it again at once, on the others; a flag change would
	// leave it to the retransmission timer (docs/kernel-notes.md,
	// Failover). The initial subflow on an address that is gone (its
	// carrier, its address) is dead too.
	gone := map[netip.AddrPort]bool{}
	for _, s := range c.Subflows {
		if s.Pending || !c.isInitial(s) || !anyHealthy {
			continue
		}
		if _, ok := lookup(addrs, s.Local.Addr()); !ok {
			out = append(out, destroyAction(&c, livePath{s: s, initial: true}, "address "+s.Local.Addr().String()+" is not usable any more"))
			gone[s.Local] = true
		}
	}
	for _, p := range paths {
		if p.s.Stalled && anyHealthy {
			out = append(out, destroyAction(&c, p, "no progress on "+p.a.Interface+": the path failed"))
			gone[p.s.Local] = true
		}
	}
	for _, p := range paths {
		cheap, standby := p.a.Preference == PreferCheap, p.a.Preference.Standby()
		switch {
		case p.s.Stalled:
		case cheap && p.s.Backup && settled(p.s):
			out = append(out, flagAction(&c, p, false, p.a.Interface+" has worked for the hysteresis time"))
		case standby && p.s.Backup && !working:
			out = append(out, flagAction(&c, p, false, "no cheap path works"))
		case standby && stableActive && v.Handover.Cold && !p.initial:
			out = append(out, destroyAction(&c, p, "a cheap path works again (cold standby)"))
			gone[p.s.Local] = true
		case standby && stableActive && !p.s.Backup:
			out = append(out, flagAction(&c, p, true, "a cheap path works again"))
		}
	}

	// Interfaces without a subflow. The initial subflow's address may get
	// one once that subflow is closed.
	closed := len(gone)
	if gone[c.Local] {
		closed-- // not one of the extra subflows
	}
	initialGone := gone[c.Local] || !slices.ContainsFunc(c.Subflows, c.isInitial)
	left := room(v.SubflowLimit, extra-closed)
	for start := 0; start < len(addrs) && left > 0; {
		end := start + 1
		for end < len(addrs) && addrs[end].Interface == addrs[start].Interface {
			end++
		}
		from, to := start, end
		start = end
		pref := addrs[from].Preference
		var backup bool
		var why string
		switch {
		case pref == PreferCheap && working:
			why = "cheap interface " + addrs[from].Interface + " has no subflow"
		case pref == PreferCheap:
			backup, why = true, "no cheap path works: probing "+addrs[from].Interface
		case pref.Standby() && !working:
			why = "no cheap path works: standby " + addrs[from].Interface + " takes over"
		case pref.Standby() && !v.Handover.Cold:
			backup, why = true, "warm standby on "+addrs[from].Interface
		default:
			continue
		}
		if servedBy(addrs, from, to, &c, gone) {
			continue
		}
		for i := from; i < to; i++ {
			a := addrs[i]
			if c.sameFamily(a.Addr) && (initialGone || pm.CanonicalAddr(a.Addr) != pm.CanonicalAddr(c.Local.Addr())) &&
				firstOf(addrs, i) && !c.failed(a.Addr) {
				act := subflowTo(&c, a, pm.CanonicalAddrPort(c.Remote), why)
				act.Backup = backup
				out = append(out, act)
				left--
				break
			}
		}
	}
	return out
}

// servedBy reports whether a subflow, pending ones and the initial one
// included, leaves from one of the addresses addrs[from:to] of an
// interface, leaving out those in gone.
func servedBy(addrs []Address, from, to int, c *Connection, gone map[netip.AddrPort]bool) bool {
	for _, s := range c.Subflows {
		if gone[s.Local] {
			continue
		}
		k := pm.CanonicalAddr(s.Local.Addr())
		for i := from; i < to; i++ {
			if pm.CanonicalAddr(addrs[i].Addr) == k && firstOf(addrs, i) {
				return true
			}
		}
	}
	return false
}

// flagAction sets the backup flag of p's subflow.
func flagAction(c *Connection, p livePath, backup bool, why string) Action {
	return Action{
		Kind: SetSubflowBackup, Token: c.Token,
		Local: p.s.Local.Addr(), LocalPort: p.s.Local.Port(), Interface: p.a.Interface,
		Backup: backup, Remote: p.s.Remote, Reason: why,
	}
}

// destroyAction closes p's subflow (its interface may be unknown).
func destroyAction(c *Connection, p livePath, why string) Action {
	return Action{
		Kind: DestroySubflow, Token: c.Token,
		Local: p.s.Local.Addr(), LocalPort: p.s.Local.Port(), Interface: p.a.Interface,
		Backup: p.s.Backup, Remote: p.s.Remote, Reason: why,
	}
}
