package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// Kernel is the part of *pm.Client the service uses; pmtest.FakeKernel
// implements it too.
type Kernel interface {
	AddEndpoint(e pm.Address) (uint8, error)
	DeleteEndpoint(id uint8) error
	Endpoints() ([]pm.Address, error)
	FlushEndpoints() error
	SetLimits(l pm.Limits) error
	Limits() (pm.Limits, error)
	SetEndpointFlags(id uint8, f pm.Flags) error
	Announce(token uint32, a pm.Address) error
	Remove(token uint32, id uint8) error
	CreateSubflow(token uint32, local pm.Address, remote netip.AddrPort) error
	DestroySubflow(token uint32, local, remote netip.AddrPort) error
	SetSubflowFlags(token uint32, local, remote netip.AddrPort, f pm.Flags) error
}

// Deps are what the service works with. Kernel is required; the others have
// defaults.
type Deps struct {
	Kernel    Kernel
	Publisher Publisher       // receives notifications; nil drops them
	Listeners ListenerFactory // opens listeners behind announced addresses; nil = ListenMPTCP
	Logger    *slog.Logger    // nil = no logging
	// PathManager returns the namespace's path manager, "kernel" or
	// "userspace"; nil = pm.PathManagerType.
	PathManager func() (string, error)
	Version     string // the daemon's version (Manager.Version)
}

// Service is the daemon's core. One goroutine, Run's, owns all the state
// and does everything: it applies kernel events and network changes, serves
// the requests the methods below hand it, and publishes every change, in
// order. Its methods may be called from any goroutine.
type Service struct {
	cfg         Config
	k           Kernel
	pub         Publisher
	log         *slog.Logger
	pathManager func() (string, error)
	version     string

	reqs     chan func()   // requests, run by the loop
	overflow chan struct{} // kernel events were lost (coalesced)
	stopped  chan struct{} // closed when Run has returned
	running  atomic.Bool

	// Owned by the loop: touched by nothing but Run and the functions it
	// calls (requests included).
	conns     *connTable
	ids       *idManager
	lis       *listeners
	net       *netState
	ctl       *controller // nil = builtin mode
	live      bool        // start is done: changes are published
	kernelPM  string
	limits    Limits
	endpoints []endpoint // sorted by id
	origins   map[endpointKey]string
	local     []LocalAddress
}

// New returns a service with the configuration and dependencies. It does
// nothing until Run.
func New(cfg Config, d Deps) *Service {
	s := &Service{
		cfg:         cfg,
		k:           d.Kernel,
		pub:         d.Publisher,
		log:         d.Logger,
		pathManager: d.PathManager,
		version:     d.Version,
		reqs:        make(chan func()),
		overflow:    make(chan struct{}, 1),
		stopped:     make(chan struct{}),
		conns:       newConnTable(),
		ids:         newIDManager(),
		net:         newNetState(),
		origins:     make(map[endpointKey]string),
		local:       []LocalAddress{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.pathManager == nil {
		s.pathManager = pm.PathManagerType
	}
	open := d.Listeners
	if open == nil {
		open = ListenMPTCP
	}
	s.lis = newListeners(open, s.log)
	return s
}

// Run is the service loop. It reads the kernel's state, then applies
// kernel events and network events and serves requests until ctx ends. It
// returns nil then, or an error if the start failed (the configured limits
// were refused) or events was closed, which means the daemon no longer
// sees the kernel. On return it closes the listeners it holds and, if a
// controller was registered, publishes ControllerReleased. Run may be called
// once.
//
// A closed netEvents only stops the tracking of local addresses.
func (s *Service) Run(ctx context.Context, events <-chan pm.Event, netEvents <-chan NetEvent) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("service: Run called more than once")
	}
	defer close(s.stopped)
	defer s.shutdown()
	if err := s.start(); err != nil {
		return err
	}
	s.live = true
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return errors.New("service: the kernel event channel was closed")
			}
			s.handleEvent(ev)
		case ev, ok := <-netEvents:
			if !ok {
				s.log.Error("network monitor ended: local addresses are no longer tracked")
				netEvents = nil
				continue
			}
			s.handleNet(ev)
		case <-s.overflow:
			s.resync()
		case req := <-s.reqs:
			req()
		}
	}
}

// Overflow tells the service that kernel events were lost (the event
// socket overflowed). The service re-reads the endpoints, limits and path
// manager. The kernel cannot list connections, so what the lost events said
// about connections stays unknown: a connection whose CREATED was lost is
// adopted at its ESTABLISHED, one whose CLOSED was lost stays until its
// token is reused, and lost subflow and address events are not repaired.
func (s *Service) Overflow() {
	select {
	case s.overflow <- struct{}{}:
	default: // a resync is already pending
	}
}

// start reads the kernel's state and applies the configured limits.
func (s *Service) start() error {
	s.refreshPathManager()
	if l := s.cfg.Limits; l != nil {
		if err := s.k.SetLimits(pm.Limits(*l)); err != nil {
			return fmt.Errorf("service: set limits from the configuration: %w", err)
		}
	}
	s.refreshLimits()
	s.refreshEndpoints(nil)
	if s.cfg.Policy != PolicyNone {
		s.log.Warn("policy not implemented yet: observing only", "policy", s.cfg.Policy)
	}
	return nil
}

// resync re-reads what the kernel can tell after events were lost.
func (s *Service) resync() {
	s.log.Warn("kernel events were lost: re-reading endpoints and limits; " +
		"connections keep their last known state (the kernel cannot list them)")
	s.refreshPathManager()
	s.refreshLimits()
	s.refreshEndpoints(nil)
}

// shutdown releases what the service holds when Run returns.
func (s *Service) shutdown() {
	if s.ctl != nil {
		s.publish(ControllerReleased{Name: s.ctl.name, Path: s.ctl.path, Reason: "shutdown"})
		s.ctl = nil
	}
	s.lis.closeAll()
}

// handleNet applies a network change.
//
// The built-in policy will be consulted here and after kernel events, while
// no controller is registered: it sees the change and the state and returns
// actions for the service to carry out. Only "none" exists yet.
func (s *Service) handleNet(ev NetEvent) {
	if !s.net.apply(ev) {
		return
	}
	local := s.net.usable(s.cfg.Filter)
	if slices.Equal(local, s.local) {
		return
	}
	s.local = local
	s.publishManager("LocalAddresses")
}

// publish hands n to the publisher. What start reads is not published: it
// is the initial state, which front ends read with Manager.
func (s *Service) publish(n Notification) {
	if s.live && s.pub != nil {
		s.pub.Publish(n)
	}
}

// publishManager publishes ManagerChanged for the named properties.
func (s *Service) publishManager(changed ...string) {
	s.publish(ManagerChanged{Manager: s.manager(), Changed: changed})
}

// manager returns a snapshot of the manager's properties.
func (s *Service) manager() Manager {
	m := Manager{
		Version:           s.version,
		ControlMode:       ModeBuiltin,
		Policy:            s.cfg.Policy,
		KernelPathManager: s.kernelPM,
		Endpoints:         make([]Endpoint, len(s.endpoints)),
		Limits:            s.limits,
		LocalAddresses:    slices.Clone(s.local),
	}
	if s.ctl != nil {
		m.ControlMode = ModeController
		m.Controller = s.ctl.name
	}
	for i, e := range s.endpoints {
		m.Endpoints[i] = Endpoint{
			ID:        e.addr.ID,
			Address:   e.addr.Addr,
			Port:      e.addr.Port,
			Flags:     e.addr.Flags.Names(),
			Interface: s.net.linkName(e.addr.Ifindex),
			Origin:    e.origin,
		}
	}
	return m
}

// refreshPathManager re-reads the namespace's path manager and publishes a
// change.
func (s *Service) refreshPathManager() {
	p, err := s.pathManager()
	if err != nil {
		s.log.Warn("reading the path manager", "err", err)
		return
	}
	if p != s.kernelPM {
		s.kernelPM = p
		s.publishManager("KernelPathManager")
	}
}

// refreshLimits re-reads the kernel's limits and publishes a change.
func (s *Service) refreshLimits() {
	l, err := s.k.Limits()
	if err != nil {
		s.log.Warn("reading limits", "err", err)
		return
	}
	s.setLimits(Limits(l))
}

func (s *Service) setLimits(l Limits) {
	if l != s.limits {
		s.limits = l
		s.publishManager("Limits")
	}
}

// refreshEndpoints re-reads the kernel's endpoints, keeping the origin of
// those the service made; an endpoint made by someone else is external. If
// the kernel cannot be read, it applies edit (if not nil) to the known list
// instead. It publishes a change.
func (s *Service) refreshEndpoints(edit func([]endpoint) []endpoint) {
	var next []endpoint
	addrs, err := s.k.Endpoints()
	switch {
	case err == nil:
		next = make([]endpoint, 0, len(addrs))
		origins := make(map[endpointKey]string, len(addrs))
		for _, a := range addrs {
			origin, ok := s.origins[keyOf(a)]
			if ok {
				origins[keyOf(a)] = origin
			} else {
				origin = OriginExternal
			}
			next = append(next, endpoint{addr: a, origin: origin})
		}
		s.origins = origins
	case edit != nil:
		s.log.Warn("reading endpoints", "err", err)
		next = edit(slices.Clone(s.endpoints))
	default:
		s.log.Warn("reading endpoints", "err", err)
		return
	}
	slices.SortFunc(next, func(a, b endpoint) int { return int(a.addr.ID) - int(b.addr.ID) })
	if slices.Equal(next, s.endpoints) {
		return
	}
	s.endpoints = next
	s.publishManager("Endpoints")
}
