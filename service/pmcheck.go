package service

import (
	"errors"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Which path manager a connection is under is the namespace's
// (net.mptcp.path_manager) when the connection was created, and the kernel
// says it in no event. Reading the sysctl for every new connection cost
// 4% of the daemon's CPU per kernel event (make bench-lab), so a new
// connection is labelled with the value last read, and the value is read
// again pathManagerCheck later (at most once per that time however many
// connections come), on a reload, at a resync and when the kernel refuses
// a userspace command for a connection ("userspace PM not selected").
// Should the value have changed, the connections labelled since the last
// read are asked of the kernel one by one (GET_ADDR answers only for a
// userspace-PM connection), and those labelled wrongly are corrected and
// reconciled: a connection made just after another program switched the
// path manager gets its subflows up to pathManagerCheck late, and never
// from the wrong path manager.

// pathManagerCheck is how long after a new connection the path manager is
// read again.
const pathManagerCheck = time.Second

// labelPathManager labels new connection c with the path manager last
// read, and arms the check of that value.
func (s *Service) labelPathManager(c *conn) {
	c.userspace = s.kernelPM == "userspace"
	s.pmUnsure = append(s.pmUnsure, c)
	if !s.pmArmed {
		s.pmArmed = true
		s.pmCheck.Reset(s.pmCheckAfter)
	}
}

// pathManagerDue runs when the check's timer fires.
func (s *Service) pathManagerDue() {
	s.pmArmed = false
	if len(s.pmUnsure) > 0 {
		s.refreshPathManager()
	}
}

// resolvePathManagers asks the kernel which path manager each of cs (those
// labelled before the path manager was found changed) is under, and
// corrects and reconciles those labelled wrongly.
func (s *Service) resolvePathManagers(cs []*conn) {
	for _, c := range cs {
		if s.conns.byToken[c.token] != c {
			continue // gone
		}
		_, err := s.k.Addresses(c.token)
		var userspace bool
		switch {
		case err == nil:
			userspace = true
		case errors.Is(err, pm.ErrNotSupported):
		default:
			if s.gone(c, err) != nil && !errors.Is(err, pm.ErrUnknownToken) {
				s.log.Warn("asking a connection's path manager", "token", logToken(c.token), "err", err)
			}
			continue
		}
		if userspace == c.userspace {
			continue
		}
		c.userspace = userspace
		s.log.Info("connection relabelled: the path manager changed as it was created",
			"token", logToken(c.token), "userspace", userspace)
		s.reconcileConn(c)
	}
}
