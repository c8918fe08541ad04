package service

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Lister lists the live MPTCP connections of the daemon's network namespace
// with their subflows (sock_diag; package pm/diag implements it). The
// kernel's events only tell what happens; the list is how the service
// learns what already exists: at start, and after events were lost.
type Lister interface {
	Connections() ([]pm.Connection, error)
}

// syncConnections makes the live connections those the kernel lists
// (docs/kernel-notes.md, "Listing connections"): a listed connection the
// service does not know is adopted as if its events had been seen (the
// peer's announcements excepted: the kernel does not list them); a known
// one whose subflows differ gets the missing SUB_ESTABLISHED and
// SUB_CLOSED applied; a known one that is not listed closed while its
// CLOSED was lost, and is removed. Every change is published as the events
// would have been, unless quiet (the start, before any front end has
// loaded the state). It returns false if the kernel could not be listed.
//
// Events that come after the listing are applied after it, so a connection
// that opens or closes meanwhile ends right: its CREATED adds or its
// CLOSED removes it.
func (s *Service) syncConnections(quiet bool) bool {
	if s.lister == nil {
		return true
	}
	start := time.Now()
	list, err := s.lister.Connections()
	if err != nil {
		s.log.Error("listing the kernel's MPTCP connections", "err", err)
		return false
	}
	if quiet {
		live := s.live
		s.live = false
		defer func() { s.live = live }()
	}
	listed := make(map[uint32]bool, len(list))
	adopted, updated := 0, 0
	for i := range list {
		kc := &list[i]
		if kc.Token == 0 {
			continue // in its handshake: its events will tell
		}
		listed[kc.Token] = true
		c := s.conns.byToken[kc.Token]
		if c != nil && (c.local != kc.Local || c.remote != kc.Remote) {
			s.drop(c) // the token was reused while the old CLOSED was lost
			c = nil
		}
		if c == nil {
			s.adopt(kc)
			adopted++
			continue
		}
		if s.syncSubflows(c, kc) {
			updated++
		}
		if kc.Established && !c.established {
			c.established = true
			s.publish(ConnectionChanged{Connection: c.snapshot(), Changed: []string{"State"}})
		}
	}
	removed := 0
	for _, c := range s.conns.sorted() {
		if !listed[c.token] {
			s.conns.closed.add(c.token)
			s.drop(c)
			removed++
		}
	}
	if adopted+updated+removed > 0 || !quiet {
		s.log.Info("connections synchronised with the kernel's list",
			"listed", len(listed), "adopted", adopted, "updated", updated, "removed", removed, "took", time.Since(start))
	}
	return true
}

// adopt adds a listed connection the service has not seen: its object, its
// subflows and, under the userspace path manager, the announcements it
// made (and the listeners behind them, which a restart closed).
func (s *Service) adopt(kc *pm.Connection) {
	c := s.conns.add(kc.Token)
	c.adopted = true
	c.established = kc.Established
	c.serverSide = kc.ServerSide
	c.local, c.remote = kc.Local, kc.Remote
	c.userspace = s.kernelPM == "userspace"
	for _, sf := range kc.Subflows {
		c.subflows = append(c.subflows, s.listedSubflow(sf))
		c.setBackupLocal(tuple{sf.Local, sf.Remote}, sf.BackupLocal)
	}
	c.initialClosed = kc.InitialClosed
	c.setBackupLocal(tuple{c.local, c.remote}, kc.InitialBackup && !kc.InitialClosed)
	if c.userspace {
		s.adoptAnnouncements(c)
	}
	s.publish(ConnectionAdded{Connection: c.snapshot()})
}

// listedSubflow returns a listed subflow as SUB_ESTABLISHED would have.
func (s *Service) listedSubflow(sf pm.Subflow) Subflow {
	return Subflow{
		LocalID:       sf.LocalID,
		RemoteID:      sf.RemoteID,
		LocalAddress:  sf.Local.Addr(),
		LocalPort:     sf.Local.Port(),
		RemoteAddress: sf.Remote.Addr(),
		RemotePort:    sf.Remote.Port(),
		Backup:        sf.Backup,
		Interface:     s.net.linkName(sf.Ifindex),
	}
}

// syncSubflows brings a known connection's subflows to the listed ones,
// publishing SubflowEstablished and SubflowClosed for what the lost events
// said, and reports whether anything changed.
func (s *Service) syncSubflows(c *conn, kc *pm.Connection) bool {
	changed := false
	for _, sf := range kc.Subflows {
		if c.subflowIndex(sf.Local, sf.Remote) < 0 {
			s.subflow(c, pm.Event{
				Type: pm.EventSubEstablished, Token: c.token, LocalID: sf.LocalID, RemoteID: sf.RemoteID,
				LocalAddr: sf.Local.Addr(), LocalPort: sf.Local.Port(),
				RemoteAddr: sf.Remote.Addr(), RemotePort: sf.Remote.Port(),
				Backup: sf.Backup, Ifindex: sf.Ifindex,
			})
			changed = true
		}
	}
	for _, sf := range slices.Clone(c.subflows) {
		local := netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort)
		remote := netip.AddrPortFrom(sf.RemoteAddress, sf.RemotePort)
		if !slices.ContainsFunc(kc.Subflows, func(k pm.Subflow) bool { return k.Local == local && k.Remote == remote }) {
			s.subflow(c, pm.Event{
				Type: pm.EventSubClosed, Token: c.token, LocalID: sf.LocalID, RemoteID: sf.RemoteID,
				LocalAddr: sf.LocalAddress, LocalPort: sf.LocalPort,
				RemoteAddr: sf.RemoteAddress, RemotePort: sf.RemotePort, Backup: sf.Backup,
			})
			changed = true
		}
	}
	return changed
}

// adoptAnnouncements reads what a userspace-PM connection has announced
// (the kernel keeps it per connection) and re-opens the listener behind
// each announcement, which the kernel needs to accept the peer's joins
// (docs/kernel-notes.md, "Listener behind an announced address"). An
// announcement whose listener cannot be opened is withdrawn. The ids in use
// are claimed, so that new ones do not clash. A connection the kernel says
// is under the in-kernel path manager is marked so.
func (s *Service) adoptAnnouncements(c *conn) {
	addrs, err := s.k.Addresses(c.token)
	switch {
	case errors.Is(err, pm.ErrNotSupported):
		c.userspace = false
		return
	case err != nil:
		s.log.Warn("reading a connection's announced addresses", "token", logToken(c.token), "err", err)
		return
	}
	for _, a := range addrs {
		s.ids.claim(a.Addr, a.Port, a.ID)
		if a.Flags&pm.FlagSignal == 0 {
			continue // the local address of a subflow it made
		}
		port := a.Port
		if port == 0 { // announced without a port: the listener is on the connection's
			port = c.local.Port()
		}
		bound, ours, err := s.lis.acquire(netip.AddrPortFrom(a.Addr, port))
		if err != nil {
			s.log.Warn("announced address: no listener can be opened behind it again: withdrawing it",
				"token", logToken(c.token), "id", a.ID, "addr", a.Addr, "err", err)
			if err := s.k.Remove(c.token, a.ID); err != nil {
				s.log.Warn("withdrawing an announcement", "token", logToken(c.token), "id", a.ID, "err", err)
			}
			continue
		}
		c.announced = append(c.announced, announcement{
			addr:     AnnouncedAddress{ID: a.ID, Address: a.Addr, Port: bound.Port()},
			listener: bound,
			ours:     ours,
		})
	}
}

// gone checks a kernel refusal of a command on connection c: "invalid
// token" means that the connection closed and that its CLOSED was lost or
// is still queued, so it is removed now, not retried forever; "userspace
// PM not selected" relabels it (relabel). It returns err.
func (s *Service) gone(c *conn, err error) error {
	s.relabel(c, err)
	if errors.Is(err, pm.ErrUnknownToken) && s.conns.byToken[c.token] == c {
		s.log.Debug("connection closed: the kernel no longer knows its token", "token", logToken(c.token))
		s.conns.closed.add(c.token)
		s.drop(c)
	}
	return err
}
