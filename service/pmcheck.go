package service

import (
	"errors"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Which path manager a connection is under is the namespace's
// (net.mptcp.path_manager) when the connection was created, and the kernel
// says it in no event. Reading the sysctl for every new connection cost
// 4% of the daemon's CPU per kernel event (make bench-lab), so it is read
// for a new connection only when the value last read is pathManagerFresh
// old or older: at most ten times a second however many connections come.
// A connection labelled with a younger value is checked: the value is read
// again pathManagerCheck later (and at a reload, a resync, and when the
// kernel refuses a userspace command for a connection with "userspace PM
// not selected"); should it have changed, the connections labelled since
// the last read are asked of the kernel one by one (GET_ADDR answers only
// for a userspace-PM connection), and those labelled wrongly are corrected
// and reconciled. So a connection made less than pathManagerFresh after
// another program switched the path manager gets its subflows up to
// pathManagerCheck late, and never from the wrong path manager.

// pathManagerFresh is how old the value last read may be to label a new
// connection.
const pathManagerFresh = 100 * time.Millisecond

// pathManagerCheck is how long after a connection labelled with a value
// read earlier the path manager is read again.
const pathManagerCheck = time.Second

// labelPathManager labels new connection c with the path manager last
// read, and arms the check of that value.
func (s *Service) labelPathManager(c *conn) {
	if s.now().Sub(s.pmReadAt) >= pathManagerFresh {
		s.refreshPathManager()
	} else {
		s.pmUnsure = append(s.pmUnsure, c)
		if !s.pmArmed {
			s.pmArmed = true
			s.pmCheck.Reset(s.pmCheckAfter)
		}
	}
	c.userspace = s.kernelPM == "userspace"
}

// relabel marks c as under the in-kernel path manager when the kernel
// refused a userspace command for it with "userspace PM not selected" (the
// namespace's path manager changed as it was created), and reads the path
// manager again. It returns err.
func (s *Service) relabel(c *conn, err error) error {
	if c.userspace && errors.Is(err, pm.ErrNotSupported) {
		s.log.Info("connection relabelled: the kernel says it is under the in-kernel path manager", "token", logToken(c.token))
		c.userspace = false
		s.refreshPathManager()
	}
	return err
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
