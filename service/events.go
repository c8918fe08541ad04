package service

import (
	"net/netip"
	"slices"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// The Changed lists of the ConnectionChanged that kernel events publish,
// shared by all of them (a Publisher only reads a notification): a new
// literal for each was an allocation per event.
var (
	changedState           = []string{"State"}
	changedSubflows        = []string{"Subflows"}
	changedRemoteAddresses = []string{"RemoteAddresses"}
)

// handleEvent applies a kernel event to the state and publishes what
// changed. For an event about a subflow or an address it publishes the
// event's own notification (SubflowEvent, AddressAnnounced, AddressRemoved)
// first and then, if the connection's state changed, ConnectionChanged.
//
// Quirks of the kernel (docs/kernel-notes.md, "Event order") and what is
// done about them:
//   - ESTABLISHED after CLOSED for the same token: dropped, as long as the
//     token is among the last recentClosed closed ones.
//   - ESTABLISHED for an unknown token that did not close recently: the
//     daemon missed CREATED (it started later, or events were lost), so the
//     connection is adopted, with the path manager now in force.
//   - CLOSED for an unknown token (a refused connect): ignored.
//   - CREATED for a live token (reused while its CLOSED was lost): the old
//     connection is removed and a new one added.
//   - Subflow and address events for unknown tokens: ignored (the
//     connection is adopted at its ESTABLISHED, if that is still to come).
func (s *Service) handleEvent(ev pm.Event) {
	switch ev.Type {
	case pm.EventCreated:
		old := s.conns.byToken[ev.Token]
		if old != nil && old.adopted && old.local == eventLocal(ev) && old.remote == eventRemote(ev) {
			old.adopted = false // listed before its CREATED came: the same connection
			return
		}
		if old != nil {
			s.drop(old)
		}
		s.addConn(ev, false)
	case pm.EventEstablished:
		c := s.conns.byToken[ev.Token]
		switch {
		case c != nil && !c.established:
			c.established = true
			s.publish(ConnectionChanged{Connection: c.snapshot(), Changed: changedState})
			s.reconcileConn(c)
		case c != nil:
		case s.conns.closed.contains(ev.Token):
			s.log.Debug("ESTABLISHED after CLOSED ignored", "token", logToken(ev.Token))
		default:
			s.reconcileConn(s.addConn(ev, true))
		}
	case pm.EventClosed:
		s.conns.closed.add(ev.Token)
		if c := s.conns.byToken[ev.Token]; c != nil {
			s.drop(c)
		}
	case pm.EventAnnounced, pm.EventRemoved:
		if c := s.known(ev); c != nil {
			s.remoteAddress(c, ev)
			s.reconcileConn(c)
		}
	case pm.EventSubEstablished, pm.EventSubClosed, pm.EventSubPriority:
		if c := s.known(ev); c != nil {
			s.subflow(c, ev)
			if ev.Type != pm.EventSubPriority {
				s.reconcileConn(c)
			}
		}
	}
	// LISTENER_CREATED, LISTENER_CLOSED and unknown events change nothing.
}

// known returns the connection an event is about, or nil.
func (s *Service) known(ev pm.Event) *conn {
	c := s.conns.byToken[ev.Token]
	if c == nil {
		s.log.Debug("event for an unknown connection ignored", "event", ev.Type, "token", logToken(ev.Token))
	}
	return c
}

// addConn adds the connection of a CREATED (or adopted ESTABLISHED) event,
// publishes ConnectionAdded and returns it. Whether it is under the
// userspace path manager is the namespace's path manager when it was
// created (labelPathManager).
func (s *Service) addConn(ev pm.Event, established bool) *conn {
	c := s.conns.add(ev.Token)
	s.labelPathManager(c)
	c.established = established
	c.serverSide = ev.ServerSide
	c.denyJoinID0 = ev.Flags&pm.EventFlagDenyJoinID0 != 0
	c.local, c.remote = eventLocal(ev), eventRemote(ev)
	s.publish(ConnectionAdded{Connection: c.snapshot()})
	return c
}

// eventLocal and eventRemote return a connection event's addresses.
func eventLocal(ev pm.Event) netip.AddrPort  { return netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort) }
func eventRemote(ev pm.Event) netip.AddrPort { return netip.AddrPortFrom(ev.RemoteAddr, ev.RemotePort) }

// drop removes a connection, releases the listeners of its announcements
// and publishes ConnectionRemoved.
func (s *Service) drop(c *conn) {
	for _, a := range c.announced {
		if a.ours {
			s.lis.release(a.listener)
		}
	}
	s.conns.remove(c)
	s.rules.Delete(c.token)
	s.publish(ConnectionRemoved{Connection: c.snapshot()})
}

// subflow applies SUB_ESTABLISHED, SUB_CLOSED or SUB_PRIORITY. Subflows
// lists the subflows the kernel reported established (the initial one is
// the connection's own addresses), once per 4-tuple.
func (s *Service) subflow(c *conn, ev pm.Event) {
	sf := Subflow{
		LocalID:       ev.LocalID,
		RemoteID:      ev.RemoteID,
		LocalAddress:  ev.LocalAddr,
		LocalPort:     ev.LocalPort,
		RemoteAddress: ev.RemoteAddr,
		RemotePort:    ev.RemotePort,
		Backup:        ev.Backup,
		Interface:     s.net.linkName(ev.Ifindex),
	}
	t := tuple{netip.AddrPortFrom(sf.LocalAddress, sf.LocalPort), netip.AddrPortFrom(sf.RemoteAddress, sf.RemotePort)}
	i := c.subflowIndex(t.local, t.remote)
	if i >= 0 && sf.Interface == "" {
		sf.Interface = c.subflows[i].Interface
	}
	s.subflowNews(c, ev, t, i >= 0)
	if ev.Type != pm.EventSubPriority && c.backupLocal[t] {
		// The event carries the peer's request; this end asked for a
		// backup (the policy made it so).
		sf.Backup = true
	}
	n := SubflowEvent{ConnectionID: c.id, Subflow: sf}
	changed := false
	switch ev.Type {
	case pm.EventSubEstablished:
		n.Kind = SubflowEstablished
		if i < 0 {
			c.subflows = append(c.subflows, sf)
			changed = true
		} else if c.subflows[i] != sf {
			c.subflows[i] = sf
			changed = true
		}
	case pm.EventSubClosed:
		if pm.CanonicalAddrPort(t.local) == pm.CanonicalAddrPort(c.local) && pm.CanonicalAddrPort(t.remote) == pm.CanonicalAddrPort(c.remote) {
			c.initialClosed = true
		}
		n.Kind = SubflowClosed
		n.Error = uint32(ev.Error)
		n.ResetReason = ev.ResetReason
		if i >= 0 {
			c.subflows = slices.Delete(c.subflows, i, i+1)
			changed = true
		}
	case pm.EventSubPriority:
		n.Kind = SubflowPriorityChanged
		if i >= 0 && c.subflows[i].Backup != sf.Backup {
			c.subflows[i].Backup = sf.Backup
			changed = true
		}
	}
	s.publish(n)
	if changed {
		s.publish(ConnectionChanged{Connection: c.snapshot(), Changed: changedSubflows})
	}
}

// remoteAddress applies ANNOUNCED or REMOVED: the peer's addresses, at most
// one per id (a new announcement with an id replaces the old).
func (s *Service) remoteAddress(c *conn, ev pm.Event) {
	i := slices.IndexFunc(c.remoteAddrs, func(a AnnouncedAddress) bool { return a.ID == ev.RemoteID })
	changed := false
	if ev.Type == pm.EventAnnounced {
		a := AnnouncedAddress{ID: ev.RemoteID, Address: ev.RemoteAddr, Port: ev.RemotePort}
		switch {
		case i < 0:
			c.remoteAddrs = append(c.remoteAddrs, a)
			changed = true
		case c.remoteAddrs[i] != a:
			c.remoteAddrs[i] = a
			changed = true
		}
		s.publish(AddressAnnounced{ConnectionID: c.id, Address: a})
	} else {
		if i >= 0 {
			c.remoteAddrs = slices.Delete(c.remoteAddrs, i, i+1)
			changed = true
		}
		s.publish(AddressRemoved{ConnectionID: c.id, RemoteID: ev.RemoteID})
	}
	if changed {
		s.publish(ConnectionChanged{Connection: c.snapshot(), Changed: changedRemoteAddresses})
	}
}
