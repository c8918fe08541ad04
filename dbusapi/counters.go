package dbusapi

import (
	"fmt"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// The kernel's MPTCP counters (MPTcpExt, as nstat shows them): on request,
// and a signal when one that means trouble increases.

// CounterSource reads the MPTcpExt counters by name ("MPJoinSynRx").
type CounterSource func() (map[string]uint64, error)

// getCounters is Manager.GetCounters.
func (s *Server) getCounters() (map[string]uint64, *dbus.Error) {
	if s.counters == nil {
		return nil, dbusError(fmt.Errorf("%w: no counter source", service.ErrNotSupported))
	}
	m, err := s.counters()
	if err != nil {
		return nil, dbusError(fmt.Errorf("%w: counters: %v", service.ErrFailed, err))
	}
	return m, nil
}

// EmitCounterIncreased sends Manager.CounterIncreased: the counter name
// (without the MPTcpExt prefix) reached value, increase more than when it
// was last signalled.
func (s *Server) EmitCounterIncreased(name string, value, increase uint64) error {
	if err := s.conn.Emit(ManagerPath, ManagerInterface+".CounterIncreased", name, value, increase); err != nil {
		return fmt.Errorf("dbusapi: emit CounterIncreased: %w", err)
	}
	return nil
}
