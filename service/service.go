package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
)

// Kernel is the part of *pmnl.Client the service uses; pmtest.FakeKernel
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
	// Addresses lists a userspace-PM connection's local addresses: those
	// it announced (FlagSignal) and those of the subflows it made.
	Addresses(token uint32) ([]pm.Address, error)
}

// Deps are what the service works with. Kernel is required; the others have
// defaults.
type Deps struct {
	Kernel Kernel
	// Lister lists the kernel's connections, to adopt those that exist at
	// start and to repair what lost events said; nil = neither.
	Lister Lister
	// Record keeps which endpoints the daemon made across restarts; nil =
	// no record: after a restart every endpoint is external.
	Record    Record
	Publisher Publisher       // receives notifications; nil drops them
	Listeners ListenerFactory // opens listeners behind announced addresses; nil = ListenMPTCP
	Logger    *slog.Logger    // nil = no logging
	// PathManager returns the namespace's path manager, "kernel" or
	// "userspace"; nil = pm.PathManagerType.
	PathManager func() (string, error)
	// SetPathManager sets the namespace's path manager, with
	// Config.SetPathManager; nil = pm.SetPathManagerType.
	SetPathManager func(string) error
	Version        string // the daemon's version (Manager.Version)
	// Owner tells the cgroup of a connection's socket, for the rules on
	// units and cgroups; nil = such rules never match.
	Owner Owner
	// Preferences keeps the interface preferences set at run time across
	// restarts; nil = they last until the daemon stops.
	Preferences Preferences
	// NetworkManager is what NetworkManager said at start
	// (SetNetworkManager tells the changes); zero = not running.
	NetworkManager NMState
	// Sysctl reads a sysctl by its path under /proc/sys
	// ("net/ipv4/conf/all/rp_filter"), trimmed; nil reads /proc/sys.
	Sysctl func(name string) (string, error)
}

// Service is the daemon's core. One goroutine, Run's, owns all the state
// and does everything: it applies kernel events and network changes, serves
// the requests the methods below hand it, and publishes every change, in
// order. Its methods may be called from any goroutine.
type Service struct {
	cfg         Config
	k           Kernel
	lister      Lister
	record      Record
	pub         Publisher
	log         *slog.Logger
	pathManager func() (string, error)
	setPM       func(string) error
	sysctl      func(string) (string, error)
	version     string

	reqs     chan func()   // requests, run by the loop
	overflow chan struct{} // kernel events were lost (coalesced)
	ready    chan struct{} // closed when the start is complete (Ready)
	stopped  chan struct{} // closed when Run has returned
	running  atomic.Bool
	restart  atomic.Bool // the daemon stops to be restarted: keep what it made (ExitForRestart)

	// Owned by the loop: touched by nothing but Run and the functions it
	// calls (requests included).
	conns    *connTable
	ids      *idManager
	lis      *listeners
	net      *netState
	ctl      *controller    // nil = builtin mode
	live     bool           // start is done: changes are published
	outbox   []Notification // published, not yet handed to the publisher (flush)
	kernelPM string
	// The connections labelled with kernelPM since it was last read, and
	// the timer that reads it again (pmCheckAfter), so that the path
	// manager is not read for every new connection (pmcheck.go).
	pmReadAt     time.Time // when kernelPM was read
	pmUnsure     []*conn
	pmCheck      *time.Timer
	pmArmed      bool
	pmCheckAfter time.Duration
	limits       Limits
	endpoints    []policy.Endpoint // sorted by id; what Manager.Endpoints and the policy see
	origins      map[endpointKey]policy.Origin
	saved        []policy.Endpoint // what the record holds (saveRecord)
	local        []LocalAddress

	// The built-in policy (policy.go), also owned by the loop.
	pol       policy.Policy
	synced    bool             // the network monitor's first NetSynced came: the addresses are known
	usable    []policy.Address // the usable local addresses with their flags
	sfScratch []policy.Subflow // policyConn's
	retry     *time.Timer      // fires at retryAt for backoffs, pending subflows and the log summary
	retryAt   time.Time        // zero when retry is not armed
	actionLog logBudget        // of the info records of the policy's actions on connections
	now       func() time.Time
	backoff   backoff
	pendingTO time.Duration // a requested subflow not heard of for this long failed

	// NetworkManager (nm.go), also owned by the loop.
	nm        NMState
	poll      *time.Timer      // re-reads the endpoints while NetworkManager is followed; nil otherwise
	pollEvery time.Duration    // poll's steady period (endpointPoll)
	pollFast  int              // polls left at endpointPollFast after a change of NetworkManager's
	pollC     <-chan time.Time // poll's channel, nil when off
	takeAway  takeAways        // owned endpoints others removed, per interface
	warnings  warnings         // what Manager.Warnings says

	// Interface preferences and probes (handover.go), also owned by the
	// loop but probeEvery, which the prober reads.
	prefs        map[string]policy.Preference // set at run time
	prefStore    Preferences
	lastPrefs    map[string]string // InterfacePreferences as last published
	probeEvery   atomic.Int64      // ProbeInterval, in ns
	usesHandover bool              // handoverInUse, as of the last start or reload

	owner Owner    // Deps.Owner
	rules sync.Map // token -> ruleChoice, for RuleOf off the loop
}

// New returns a service with the configuration and dependencies. It does
// nothing until Run.
func New(cfg Config, d Deps) *Service {
	s := &Service{
		cfg:          cfg,
		k:            d.Kernel,
		lister:       d.Lister,
		record:       d.Record,
		pub:          d.Publisher,
		log:          d.Logger,
		pathManager:  d.PathManager,
		version:      d.Version,
		reqs:         make(chan func()),
		overflow:     make(chan struct{}, 1),
		ready:        make(chan struct{}),
		stopped:      make(chan struct{}),
		conns:        newConnTable(),
		ids:          newIDManager(),
		net:          newNetState(),
		origins:      make(map[endpointKey]policy.Origin),
		local:        []LocalAddress{},
		setPM:        d.SetPathManager,
		sysctl:       d.Sysctl,
		nm:           d.NetworkManager,
		prefStore:    d.Preferences,
		owner:        d.Owner,
		now:          time.Now,
		backoff:      defaultBackoff,
		pendingTO:    pendingTimeout,
		pollEvery:    endpointPoll,
		retry:        time.NewTimer(time.Hour),
		pmCheck:      time.NewTimer(time.Hour),
		pmCheckAfter: pathManagerCheck,
	}
	s.retry.Stop()
	s.pmCheck.Stop()
	if s.pol, _ = policy.New(cfg.Policy); s.pol == nil {
		s.pol, _ = policy.New(PolicyNone) // Run reports the bad name
	}
	s.usesHandover = s.handoverInUse()
	if s.setPM == nil {
		s.setPM = pm.SetPathManagerType
	}
	if s.sysctl == nil {
		s.sysctl = readSysctl
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
// returns nil then, or an error if the start failed (an unknown policy, the
// configured limits were refused) or events or netEvents was closed, which
// means the daemon no longer sees the kernel or the host's addresses. On
// return it closes the listeners it holds, if a controller was registered
// publishes ControllerReleased, and with Config.RemoveOnExit removes the
// endpoints the policy made. Run may be called once.
//
// The start completes at the first NetSynced on netEvents, when the local
// addresses are known in full: the service then adopts the connections the
// kernel lists, the built-in policy acts on the endpoints and on every
// connection, and Ready is closed.
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
	errClosed := errors.New("service: the kernel event channel was closed")
	for {
		s.updateProbing()
		s.flush() // what the last event, change or timer published
		// Kernel events first: a client calling in a loop must not delay
		// them. Requests are served whenever no event is waiting.
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return errClosed
			}
			s.handleEvent(ev)
			continue
		default:
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return errClosed
			}
			s.handleEvent(ev)
		case ev, ok := <-netEvents:
			if !ok {
				return errors.New("service: the network monitor ended: the host's addresses are no longer known")
			}
			s.handleNet(ev)
		case <-s.overflow:
			// The events read before the overflow are in the channel
			// already: apply them first.
			for more := true; more; {
				select {
				case ev, ok := <-events:
					if !ok {
						return errClosed
					}
					s.handleEvent(ev)
				default:
					more = false
				}
			}
			s.resync()
		case <-s.retry.C:
			s.retryDue()
		case <-s.pmCheck.C:
			s.pathManagerDue()
		case <-s.pollC:
			s.pollEndpoints()
		case req := <-s.reqs:
			req()
		}
	}
}

// ExitForRestart tells the service that the coming stop is a failure the
// daemon exits on, to be restarted (the bus went away): the endpoints the
// policy made stay, even with Config.RemoveOnExit, for the next process to
// find in its record instead of a gap in the in-kernel path manager.
func (s *Service) ExitForRestart() { s.restart.Store(true) }

// Ready returns a channel that is closed when the start is complete: the
// kernel's state is read, the host's addresses are known, the live
// connections are adopted and the built-in policy has acted on them.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Overflow tells the service that kernel events were lost (the event
// socket overflowed). The service re-reads the endpoints, limits and path
// manager, and lists the connections to repair what the lost events said
// (syncConnections): connections opened and closed meanwhile, and their
// subflows. The peer's lost announcements are not repaired: the kernel does
// not list them.
func (s *Service) Overflow() {
	select {
	case s.overflow <- struct{}{}:
	default: // a resync is already pending
	}
}

// start checks the configuration, reads the kernel's state and applies the
// configured limits.
func (s *Service) start() error {
	if err := s.cfg.Validate(); err != nil {
		return fmt.Errorf("service: %w", err)
	}
	s.net.nm = s.nmView()
	s.armEndpointPoll()
	s.loadPreferences()
	s.refreshPathManager()
	if l := s.cfg.Limits; l != nil {
		if err := s.k.SetLimits(pm.Limits(*l)); err != nil {
			return fmt.Errorf("service: set limits from the configuration: %w", err)
		}
	}
	s.refreshLimits()
	s.loadRecord()
	s.refreshEndpoints(nil)
	s.saveRecord()
	s.checkPathManager()
	for _, e := range s.endpoints {
		if e.Flags&pm.FlagImplicit == 0 && e.Origin.Foreign() {
			s.log.Info("in-kernel endpoints made by another program exist (NetworkManager, ip mptcp, ...): "+
				"another program manages endpoints too; the built-in policy leaves them alone",
				"id", e.ID, "addr", e.Addr, "flags", e.Flags.String())
			break
		}
	}
	return nil
}

// resync re-reads the kernel's state after events were lost, and
// reconciles.
func (s *Service) resync() {
	s.log.Warn("kernel events were lost: re-reading endpoints, limits and connections")
	s.refreshPathManager()
	s.refreshLimits()
	s.refreshEndpoints(nil)
	s.syncConnections(false)
	s.reconcile()
}

// shutdown releases what the service holds when Run returns.
func (s *Service) shutdown() {
	s.retry.Stop()
	s.pmCheck.Stop()
	if s.poll != nil {
		s.poll.Stop()
	}
	if s.ctl != nil {
		s.publish(ControllerReleased{Name: s.ctl.name, Path: s.ctl.path, Reason: "shutdown"})
		s.ctl = nil
	}
	if s.cfg.RemoveOnExit && !s.restart.Load() {
		s.removeOwnedEndpoints()
	}
	s.flush()
	s.lis.closeAll()
}

// handleNet applies a network change and, if the usable local addresses
// changed, reconciles. The first NetSynced lets the policy act.
func (s *Service) handleNet(ev NetEvent) {
	if !s.net.apply(ev) {
		return
	}
	if ev.Kind == NetLinkChanged {
		s.log.Debug("link changed", "interface", ev.Link.Name, "index", ev.Link.Index, "up", ev.Link.Up, "carrier", ev.Link.Carrier)
	}
	first := ev.Kind == NetSynced && !s.synced
	if first {
		s.synced = true
		s.syncConnections(true)
	}
	if s.updateUsable() || first {
		s.reconcile()
	}
	s.checkRPFilter()
	if first {
		close(s.ready)
	}
}

// updateUsable recomputes the usable local addresses and their flags,
// publishes LocalAddresses if they changed, and reports whether what the
// policy sees changed.
func (s *Service) updateUsable() bool {
	s.net.off = s.offInterfaces()
	usable := s.net.usable(s.cfg.Filter)
	for i := range usable {
		usable[i].Flags = s.flagsFor(usable[i].Interface)
		usable[i].Preference = s.preference(usable[i].Interface)
	}
	s.publishPreferences()
	if slices.Equal(usable, s.usable) {
		return false
	}
	s.usable = usable
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		addrs := make([]string, len(usable))
		for i, a := range usable {
			addrs[i] = a.Interface + " " + a.Addr.String()
		}
		s.log.Debug("usable local addresses", "addresses", addrs)
	}
	local := make([]LocalAddress, len(usable))
	for i, a := range usable {
		local[i] = LocalAddress{Interface: a.Interface, Address: a.Addr}
	}
	if !slices.Equal(local, s.local) {
		s.local = local
		s.publishManager("LocalAddresses")
	}
	return true
}

// publish queues n for the publisher; flush hands it over once the loop
// has done what the event, change or request asks, so that kernel
// commands (a policy's new subflow) do not wait for the front ends. The
// order is kept. What start reads is not published: it is the initial
// state, which front ends read with Manager.
func (s *Service) publish(n Notification) {
	if s.live && s.pub != nil {
		s.outbox = append(s.outbox, n)
	}
}

// flush hands the queued notifications to the publisher, in order.
func (s *Service) flush() {
	for i, n := range s.outbox {
		s.pub.Publish(n)
		s.outbox[i] = nil
	}
	if cap(s.outbox) > shrinkAbove {
		s.outbox = nil // a resync's or a reconcile's burst: do not keep it
	} else {
		s.outbox = s.outbox[:0]
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
		Endpoints:         slices.Clone(s.endpoints),
		Limits:            s.limits,
		LocalAddresses:    slices.Clone(s.local),
		ConnectionCount:   len(s.conns.byToken),
		Warnings:          s.warnings.list(),
		Preferences:       s.preferences(),
	}
	if s.ctl != nil {
		m.ControlMode = ModeController
		m.Controller = s.ctl.name
	}
	for i := range m.Endpoints { // links may have been named since the endpoints were read
		m.Endpoints[i].Interface = s.net.linkName(m.Endpoints[i].Ifindex)
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
	s.pmReadAt = s.now()
	unsure := s.pmUnsure
	s.pmUnsure = nil
	if p != s.kernelPM {
		s.kernelPM = p
		s.publishManager("KernelPathManager")
		s.resolvePathManagers(unsure)
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
// those the service made; an endpoint made by someone else is external, or
// networkmanager on an interface whose endpoints NetworkManager writes,
// where the policy's endpoints are given up to NetworkManager. If
// the kernel cannot be read, it applies edit (if not nil) to the known list
// instead. It publishes a change.
func (s *Service) refreshEndpoints(edit func([]policy.Endpoint) []policy.Endpoint) {
	var next []policy.Endpoint
	addrs, err := s.k.Endpoints()
	switch {
	case err == nil:
		expected := s.endpoints
		if edit != nil {
			expected = edit(slices.Clone(expected))
		}
		next = make([]policy.Endpoint, 0, len(addrs))
		origins := make(map[endpointKey]policy.Origin, len(addrs))
		nmIfs := s.net.nmIfindexes()
		for _, a := range addrs {
			origin, ok := s.origins[keyOf(a)]
			switch {
			case ok && origin == policy.OriginPolicy && nmIfs[a.Ifindex]:
				// The policy's endpoint on an interface NetworkManager has
				// taken: left to it (it keeps an equal one as its own).
				s.log.Info("endpoint left to NetworkManager, which manages its interface now", "id", a.ID, "addr", a.Addr)
				origin = policy.OriginNetworkManager
			case ok:
				origins[keyOf(a)] = origin
			case nmIfs[a.Ifindex]:
				origin = policy.OriginNetworkManager
			default:
				origin = policy.OriginExternal
			}
			next = append(next, policy.Endpoint{Address: a, Origin: origin})
		}
		s.origins = origins
		s.noteTakeAways(expected, next)
	case edit != nil:
		s.log.Warn("reading endpoints", "err", err)
		next = edit(slices.Clone(s.endpoints))
	default:
		s.log.Warn("reading endpoints", "err", err)
		return
	}
	for i := range next {
		next[i].Interface = s.net.linkName(next[i].Ifindex)
	}
	slices.SortFunc(next, func(a, b policy.Endpoint) int { return int(a.ID) - int(b.ID) })
	if slices.Equal(next, s.endpoints) {
		return
	}
	s.endpoints = next
	s.saveRecord()
	s.publishManager("Endpoints")
}
