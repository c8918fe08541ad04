package main

import (
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
)

// diagLister lists the namespace's MPTCP connections for the service
// (service.Lister) through sock_diag, in the form their events would have
// given.
type diagLister struct{ c *diag.Client }

// Connections lists the connections and their joined subflows. Left out:
// a connection without a token (still in its handshake: its events will
// tell), one its application has closed (CLOSED was sent; the kernel
// lingers over its FIN), and a subflow still in its handshake or closing
// (SUB_CLOSED was sent when it began to close; its FIN may take long, or
// never leave when its address is gone).
func (l diagLister) Connections() ([]pm.Connection, error) {
	snap, err := l.c.Snapshot()
	if err != nil {
		return nil, err
	}
	return fromSnapshot(snap), nil
}

// fromSnapshot converts a sock_diag snapshot.
func fromSnapshot(snap *diag.Snapshot) []pm.Connection {
	out := make([]pm.Connection, 0, len(snap.Conns))
	for _, cn := range snap.Conns {
		if cn.Token == 0 || closedByApp(cn.Conn) {
			continue
		}
		pc := pm.Connection{
			Token:       cn.Token,
			Local:       pm.CanonicalAddrPort(cn.Local),
			Remote:      pm.CanonicalAddrPort(cn.Remote),
			ServerSide:  cn.Side == diag.SideServer,
			Established: !inHandshake(cn.State),
		}
		initialSeen := false
		for _, sf := range cn.Subflows {
			// The initial subflow is the connection's own (MP_CAPABLE);
			// SUB_ESTABLISHED reports joins only, once established.
			if sf.Flags&(diag.SubflowJoinLocal|diag.SubflowJoinRemote) == 0 {
				if !closing(sf.State) {
					initialSeen, pc.InitialBackup = true, sf.Backup
				}
				continue
			}
			if inHandshake(sf.State) || closing(sf.State) {
				continue
			}
			pc.Subflows = append(pc.Subflows, pm.Subflow{
				LocalID:  sf.LocalID,
				RemoteID: sf.RemoteID,
				Local:    pm.CanonicalAddrPort(sf.Local),
				Remote:   pm.CanonicalAddrPort(sf.Remote),
				// SUB_ESTABLISHED carries the peer's backup request
				// (docs/kernel-notes.md, "SUB_ESTABLISHED backup flag").
				Backup:      sf.BackupRemote,
				BackupLocal: sf.Backup,
				Ifindex:     int32(sf.Ifindex),
			})
		}
		// A connection that goes on with joins only: a path manager closed
		// its initial subflow (the handover policy closes a dead one).
		pc.InitialClosed = pc.Established && !initialSeen && len(pc.Subflows) > 0
		out = append(out, pc)
	}
	return out
}

func inHandshake(s diag.State) bool { return s == diag.StateSynSent || s == diag.StateSynRecv }

// closedByApp reports whether the connection's application closed it: the
// socket has no file any more (inode 0) and is closing. The kernel sent
// CLOSED then, though it keeps listing the socket until its FIN exchange
// ends (docs/kernel-notes.md, "Listing connections"). A connection the
// application only shut down keeps its inode; one not yet accepted has
// none but is not closing.
func closedByApp(c diag.Conn) bool { return c.Inode == 0 && closing(c.State) }

// closing reports whether a socket in state s has closed its end.
func closing(s diag.State) bool {
	switch s {
	case diag.StateFinWait1, diag.StateFinWait2, diag.StateClosing, diag.StateLastAck, diag.StateTimeWait, diag.StateClose:
		return true
	}
	return false
}
