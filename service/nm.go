package service

import (
	"context"
	"maps"
	"slices"
	"time"
)

// NetworkManager settings (Config.NetworkManager).
const (
	// NetworkManagerAuto follows NetworkManager when it is on the bus: its
	// MPTCP devices' endpoints are its own, devices whose profile disables
	// MPTCP are not used, metered devices are backup paths.
	NetworkManagerAuto = "auto"
	// NetworkManagerIgnore treats NetworkManager's interfaces like any
	// other.
	NetworkManagerIgnore = "ignore"
)

// NMState is what NetworkManager says about the host's interfaces, as the
// daemon's main adapts its watcher's reports (the service does not depend
// on the watcher's types).
type NMState struct {
	Running bool // NetworkManager is on the bus
	// Interfaces holds, by kernel interface name, the interfaces of the
	// devices NetworkManager manages: their endpoints are its own.
	Interfaces map[string]NMInterface
}

// NMInterface is an interface of a device NetworkManager manages.
type NMInterface struct {
	// MPTCPDisabled: the active profile disables MPTCP
	// (connection.mptcp-flags disabled): no policy uses the interface.
	// Otherwise NetworkManager writes the interface's endpoints itself.
	MPTCPDisabled bool
	// Metered: NetworkManager says traffic on the device costs (metered
	// yes or guess-yes): the policies use it as a backup path, unless
	// [interfaces.NAME] sets its flags.
	Metered bool
}

// Reasons given by ListAddresses for NetworkManager's interfaces.
const (
	reasonNMDisabled = "MPTCP disabled by the NetworkManager profile"
	reasonNMManaged  = "managed by NetworkManager"
)

// SetNetworkManager tells the service what NetworkManager says now; the
// daemon calls it with each state its watcher reports. With
// Config.NetworkManager "ignore" the state is kept but not used.
func (s *Service) SetNetworkManager(ctx context.Context, st NMState) error {
	st.Interfaces = maps.Clone(st.Interfaces)
	return do(ctx, s, "networkmanager", func() error {
		if st.Running == s.nm.Running && maps.Equal(st.Interfaces, s.nm.Interfaces) {
			return nil
		}
		s.logNM(s.nm, st)
		s.nm = st
		s.nmChanged()
		return nil
	})
}

// nmChanged applies a change of NetworkManager's state or of
// Config.NetworkManager: the usable addresses and their flags, the
// endpoints' origins, the endpoint poll, and the policy.
func (s *Service) nmChanged() {
	s.net.nm = s.nmView()
	s.armEndpointPoll()
	s.refreshEndpoints(nil)
	s.updateUsable()
	s.reconcile()
}

// nmView returns NetworkManager's interfaces as the service uses them:
// none when it is not running or Config.NetworkManager ignores it.
func (s *Service) nmView() map[string]NMInterface {
	if !s.nm.Running || s.cfg.NetworkManager == NetworkManagerIgnore {
		return nil
	}
	return s.nm.Interfaces
}

// logNM says what changed in NetworkManager's state.
func (s *Service) logNM(was, now NMState) {
	if was.Running != now.Running {
		if now.Running {
			s.log.Info("NetworkManager is running: its MPTCP devices' endpoints are its own", "setting", s.cfg.NetworkManager)
		} else {
			s.log.Info("NetworkManager is gone: its interfaces are used like any other")
		}
	}
	names := slices.Sorted(maps.Keys(now.Interfaces))
	for _, name := range names {
		if old, ok := was.Interfaces[name]; !ok || old != now.Interfaces[name] {
			s.log.Debug("NetworkManager device", "interface", name, "mptcp", nmMPTCPWord(now.Interfaces[name]),
				"metered", now.Interfaces[name].Metered)
		}
	}
}

func nmMPTCPWord(i NMInterface) string {
	if i.MPTCPDisabled {
		return "disabled"
	}
	return "networkmanager"
}

// The endpoints are re-read while NetworkManager is followed: the kernel
// tells nobody when another program changes them. NetworkManager writes a
// device's endpoints a moment (about 180 ms here) after the device's
// state changes, so each change of its state is followed by a few quick
// reads; otherwise a slow one finds other programs' changes (a fight).
const (
	endpointPoll      = 5 * time.Second
	endpointPollFast  = 200 * time.Millisecond
	endpointPollBurst = 5 // quick reads after a change: one second's worth
)

// nmFollowed reports whether the service follows NetworkManager now.
func (s *Service) nmFollowed() bool {
	return s.nm.Running && s.cfg.NetworkManager != NetworkManagerIgnore
}

// armEndpointPoll starts the endpoint poll, quick reads first, while
// NetworkManager is followed, and stops it otherwise.
func (s *Service) armEndpointPoll() {
	if !s.nmFollowed() {
		if s.poll != nil {
			s.poll.Stop()
			s.poll, s.pollC = nil, nil
		}
		return
	}
	s.pollFast = endpointPollBurst
	wait := min(endpointPollFast, s.pollEvery)
	if s.poll == nil {
		s.poll = time.NewTimer(wait)
		s.pollC = s.poll.C
		return
	}
	s.poll.Reset(wait)
}

// pollEndpoints re-reads the endpoints and, when another program changed
// them, lets the policy act.
func (s *Service) pollEndpoints() {
	next := s.pollEvery
	if s.pollFast > 0 {
		s.pollFast--
		next = min(endpointPollFast, s.pollEvery)
	}
	s.poll.Reset(next)
	was := s.endpoints
	s.refreshEndpoints(nil)
	if !slices.Equal(was, s.endpoints) {
		s.reconcileEndpoints()
	}
	s.checkRPFilter()
}
