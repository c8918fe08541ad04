// Package dbusapi is the D-Bus front end of mptcp-pmd: it exports the
// service org.mptcp.PathManager1 (the manager object, one object per MPTCP
// connection, ObjectManager, properties and signals), identifies and
// authorizes callers, validates arguments, forwards requests to the service
// loop (a Backend) and maps its errors to the contract's D-Bus errors.
//
// Reads (Get, GetAll, GetManagedObjects, Introspect) are served from a
// mirror of the state that Publish builds from the service's notifications,
// so that what a client reads is consistent with the signals it received.
package dbusapi

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Backend is what the front end needs from the service loop;
// *service.Service implements it. Every request method returns an error
// matching one of the service's sentinel errors.
type Backend interface {
	Manager(ctx context.Context) (service.Manager, error)
	Connections(ctx context.Context) ([]service.Connection, error)
	ConnectionByToken(ctx context.Context, token uint32) (uint64, error)
	// Addresses lists the local addresses with the address filter's verdict.
	Addresses(ctx context.Context) ([]service.AddressInfo, error)

	AddEndpoint(ctx context.Context, c service.Caller, e policy.Endpoint) (uint8, error)
	RemoveEndpoint(ctx context.Context, c service.Caller, id uint8) error
	SetEndpointFlags(ctx context.Context, c service.Caller, id uint8, flags pm.Flags) error
	FlushEndpoints(ctx context.Context, c service.Caller) error
	SetLimits(ctx context.Context, c service.Caller, l service.Limits) error
	// SetInterfacePreference sets an interface's preference ("" = back
	// to the configured one).
	SetInterfacePreference(ctx context.Context, c service.Caller, name, pref string) error

	AnnounceAddress(ctx context.Context, c service.Caller, conn uint64, addr netip.Addr, port uint16, id uint8) (uint8, error)
	RemoveAddress(ctx context.Context, c service.Caller, conn uint64, id uint8) error
	CreateSubflow(ctx context.Context, c service.Caller, conn uint64, r service.SubflowRequest) error
	RemoveSubflow(ctx context.Context, c service.Caller, conn uint64, local, remote netip.AddrPort) error
	SetSubflowBackup(ctx context.Context, c service.Caller, conn uint64, local, remote netip.AddrPort, backup bool) error

	RegisterController(ctx context.Context, c service.Caller, path string) error
	UnregisterController(ctx context.Context, c service.Caller, path string) error
	// ControllerVanished tells the service that the bus name left the bus.
	// It is called for every registered name that leaves, possibly more
	// than once, and must not block for long.
	ControllerVanished(name string)
}

// Options configure a Server.
type Options struct {
	// Authorizer decides who may call mutating methods. nil allows UID 0
	// only.
	Authorizer Authorizer
	// Logger receives what the server cannot report to a caller. nil means
	// slog.Default().
	Logger *slog.Logger
	// MaxInFlight bounds the calls one sender (unique bus name) may have
	// in flight; a call beyond it is answered Busy at once. 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxInFlightPerUID bounds the calls all the connections of one user
	// (the sender's UID on the bus) may have in flight together; a call
	// beyond it is answered Busy at once. Root is bounded per sender only.
	// 0 means DefaultMaxInFlightPerUID.
	MaxInFlightPerUID int
	// MaxAuthChecksPerUID bounds the authorization checks (the
	// Authorizer's, which asks polkit) the calls of one user may have
	// running at once; a check beyond it waits for one to end, at most as
	// long as a polkit check may take (5 s, 25 s for an interactive one),
	// and is then answered Busy. Root needs no check. 0 means
	// DefaultMaxAuthChecksPerUID.
	MaxAuthChecksPerUID int
	// Stats reads connection statistics for GetStatistics; nil answers
	// NotSupported.
	Stats StatsSource
	// Counters reads the kernel's MPTCP counters for GetCounters; nil
	// answers NotSupported.
	Counters CounterSource
	// Heavy runs the work of the calls whose cost grows with the number of
	// connections (GetManagedObjects, GetStatistics: 100 ms and more at
	// 10,000), so that the embedder can keep it from delaying the
	// reaction to the kernel's events (mptcp-pmd gives the process a
	// second processor while it runs). It returns when work has. nil runs
	// the work in place.
	Heavy func(work func())
	// SignalQueue bounds the signals other than PropertiesChanged that
	// may wait to be sent (the emitter); beyond it they are dropped and
	// counted. 0 means DefaultSignalQueue.
	SignalQueue int

	// authCheckWait replaces the wait for an authorization check's turn
	// (tests).
	authCheckWait time.Duration
}

// Server exports the service's objects on a bus connection. Create it with
// New, load the state and take the name with RequestName, and feed it the
// service's notifications through Publish.
type Server struct {
	conn *dbus.Conn
	b    Backend
	auth Authorizer
	log  *slog.Logger

	inFlight *inFlight // calls in flight per sender
	em       *emitter  // sends the signals Publish queues

	ctx    context.Context // for requests to the backend; done at Close
	cancel context.CancelFunc

	// pubMu serialises Publish: each notification updates the mirror and
	// is emitted before the next one starts, so signals keep their order.
	pubMu sync.Mutex

	mu      sync.RWMutex // guards the mirror below
	manager service.Manager
	conns   map[uint64]service.Connection
	paths   map[uint64]dbus.ObjectPath // connections' object paths (pathOf), guarded by pubMu
	peak    int                        // the most connections since conns was made
	gen     uint64                     // counts notifications that changed the mirror
	closed  bool

	ctl controllers

	managerXML    string
	connectionXML string
	stats         StatsSource   // nil: none
	counters      CounterSource // nil: none
	heavy         func(work func())
}

// New exports the manager object /org/mptcp/PathManager1 and the connection
// objects below it on conn, with the Properties, Introspectable, Peer and
// ObjectManager interfaces, and starts watching for departed controllers.
// It does not request the service name: call RequestName once the service
// is ready.
func New(conn *dbus.Conn, b Backend, opts Options) (*Server, error) {
	s := &Server{
		conn:     conn,
		b:        b,
		auth:     opts.Authorizer,
		log:      opts.Logger,
		conns:    make(map[uint64]service.Connection),
		stats:    opts.Stats,
		counters: opts.Counters,

		inFlight: newInFlight(conn, opts),
	}
	if s.heavy = opts.Heavy; s.heavy == nil {
		s.heavy = func(work func()) { work() }
	}
	if s.auth == nil {
		s.auth = rootOnly{}
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.em = newEmitter(conn, s.log, opts.SignalQueue, s.mirrored)
	if s.em.wire != nil {
		s.em.wire.rawReplies.Store(true)
	}
	var err error
	if s.managerXML, err = objectXML(ManagerInterface, true); err != nil {
		return nil, err
	}
	if s.connectionXML, err = objectXML(ConnectionInterface, false); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// The watch of controllers and of departed callers (whose UIDs are
	// forgotten) is ready before the first method can arrive.
	s.ctl.start(s)
	if err := s.export(); err != nil {
		s.unexport()
		s.ctl.stop()
		s.cancel()
		s.em.stop(0)
		return nil, err
	}
	return s, nil
}

// export registers every object and interface with godbus. Everything is
// registered here, once: connection objects are served by subtree handlers
// that look the connection up in the mirror, so nothing is registered or
// removed later. Every method is guarded (guard.go): the bound on calls in
// flight per sender, and the exact signature.
func (s *Server) export() error {
	exports := []struct {
		methods map[string]any
		path    dbus.ObjectPath
		iface   string
		subtree bool
	}{
		{s.managerMethods(), ManagerPath, ManagerInterface, false},
		{s.propertiesMethods(), ManagerPath, propertiesInterface, false},
		{s.introspectMethods(), ManagerPath, introspectableInterface, false},
		{map[string]any{"GetManagedObjects": s.getManagedObjects}, ManagerPath, objectManagerInterface, false},
		{s.connectionMethods(), ConnectionsPath, ConnectionInterface, true},
		{s.propertiesMethods(), ConnectionsPath, propertiesInterface, true},
		{s.introspectMethods(), ConnectionsPath, introspectableInterface, true},
		{s.introspectMethods(), "/", introspectableInterface, false},
		{s.introspectMethods(), "/org", introspectableInterface, false},
		{s.introspectMethods(), "/org/mptcp", introspectableInterface, false},
	}
	for _, e := range exports {
		var err error
		methods := s.guardTable(e.methods)
		if e.subtree {
			err = s.conn.ExportSubtreeMethodTable(methods, e.path, e.iface)
		} else {
			err = s.conn.ExportMethodTable(methods, e.path, e.iface)
		}
		if err != nil {
			return fmt.Errorf("dbusapi: export %s on %s: %w", e.iface, e.path, err)
		}
	}
	return nil
}

func (s *Server) unexport() {
	for _, p := range []dbus.ObjectPath{ManagerPath, ConnectionsPath, "/", "/org", "/org/mptcp"} {
		for _, iface := range []string{ManagerInterface, ConnectionInterface, propertiesInterface, introspectableInterface, objectManagerInterface} {
			s.conn.Export(nil, p, iface)
		}
	}
}

// RequestName loads the current state from the backend (so the objects are
// complete the moment the name appears), then requests the name
// org.mptcp.PathManager1 without queueing. When another connection owns
// the name and answers a Ping, the error wraps ErrNameTaken.
//
// An owner that does not answer may be the connection of a daemon that
// died while the bus was not reading it (a client that never reads its
// signals made the bus stop reading the daemon): the bus notices such a
// hang-up only when it writes to the connection, which the Ping makes it
// do. The name is then requested again.
func (s *Server) RequestName(ctx context.Context) error {
	if err := s.load(ctx); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		var reply uint32
		err := s.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.RequestName", 0,
			BusName, uint32(dbus.NameFlagDoNotQueue)).Store(&reply)
		if err != nil {
			return fmt.Errorf("dbusapi: request the name %s: %w", BusName, err)
		}
		switch dbus.RequestNameReply(reply) {
		case dbus.RequestNameReplyPrimaryOwner, dbus.RequestNameReplyAlreadyOwner:
			return nil
		case dbus.RequestNameReplyExists:
			var owner string
			if err := s.conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, BusName).Store(&owner); err != nil {
				owner = "another connection"
			}
			if attempt < 3 && !s.answers(ctx, owner) {
				s.log.Warn("dbusapi: the owner of the name does not answer: requesting the name again", "owner", owner)
				continue
			}
			return fmt.Errorf("dbusapi: %s is owned by %s (is another mptcp-pmd running?): %w", BusName, owner, ErrNameTaken)
		default:
			return fmt.Errorf("dbusapi: request the name %s: unexpected reply %q", BusName, dbus.RequestNameReply(reply))
		}
	}
}

// answers reports whether the connection named owner answers a Ping
// within a second.
func (s *Server) answers(ctx context.Context, owner string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return s.conn.Object(owner, "/").CallWithContext(ctx, "org.freedesktop.DBus.Peer.Ping", 0).Err == nil
}

// load fills the mirror from the backend. The service may publish while the
// snapshots are taken; a snapshot older than a notification already applied
// must not overwrite it, so load retries until no notification came in
// between.
func (s *Server) load(ctx context.Context) error {
	for {
		s.mu.RLock()
		gen := s.gen
		s.mu.RUnlock()
		m, err := s.b.Manager(ctx)
		if err != nil {
			return fmt.Errorf("dbusapi: load the manager state: %w", err)
		}
		cs, err := s.b.Connections(ctx)
		if err != nil {
			return fmt.Errorf("dbusapi: load the connections: %w", err)
		}
		s.mu.Lock()
		if s.gen == gen {
			s.manager = m
			s.conns = make(map[uint64]service.Connection, len(cs))
			for _, c := range cs {
				s.conns[c.ID] = c
			}
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("dbusapi: load the state: %w", err)
		}
	}
}

// Close stops the server: it unexports the objects, stops watching
// controllers and cancels the requests in flight. Publish does nothing
// afterwards. It does not close the bus connection, which belongs to the
// caller (closing it also releases the name).
func (s *Server) Close() error {
	s.pubMu.Lock()
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	s.pubMu.Unlock()
	if already {
		return nil
	}
	s.cancel()
	// What the service published last (a Release at shutdown) goes out,
	// unless the bus does not take it within a second.
	s.em.flush(time.Second)
	s.em.stop(100 * time.Millisecond)
	s.unexport()
	s.ctl.stop()
	return nil
}

// subflowSignals names the signal of each kind of subflow event.
var subflowSignals = map[service.SubflowKind]string{
	service.SubflowEstablished:     ConnectionInterface + ".SubflowEstablished",
	service.SubflowClosed:          ConnectionInterface + ".SubflowClosed",
	service.SubflowPriorityChanged: ConnectionInterface + ".SubflowPriorityChanged",
}

// pathOf returns the object path of connection id, formatted once per
// connection (every signal of a connection needs it). s.pubMu must be
// held.
func (s *Server) pathOf(id uint64) dbus.ObjectPath {
	if p, ok := s.paths[id]; ok {
		return p
	}
	p := ConnectionPath(id)
	if s.paths == nil {
		s.paths = make(map[uint64]dbus.ObjectPath)
	}
	s.paths[id] = p
	return p
}

// Publish turns a service notification into the mirror's new state and
// queues the matching signals, in the order of the notifications, for the
// emitter to send. It never waits for the bus. It satisfies
// service.Publisher.
func (s *Server) Publish(n service.Notification) {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return
	}
	switch n := n.(type) {
	case service.ManagerChanged:
		s.mu.Lock()
		s.manager = n.Manager
		s.gen++
		s.mu.Unlock()
		s.emitChanged(ManagerPath, ManagerInterface, pick(managerProps(n.Manager), n.Changed))
	case service.ConnectionAdded:
		s.connectionAdded(n.Connection)
	case service.ConnectionChanged:
		c := n.Connection
		s.mu.Lock()
		_, known := s.conns[c.ID]
		s.conns[c.ID] = c
		s.gen++
		s.mu.Unlock()
		if !known {
			// Not announced yet (a notification that came before load):
			// announce the whole object rather than a change to nothing.
			s.emit(ManagerPath, objectManagerInterface+".InterfacesAdded", s.pathOf(c.ID), connObject{&c})
			return
		}
		s.em.changedConn(s.pathOf(c.ID), c.ID, connPropsMask(n.Changed))
	case service.ConnectionRemoved:
		s.mu.Lock()
		_, known := s.conns[n.Connection.ID]
		delete(s.conns, n.Connection.ID)
		if len(s.conns) == 0 && s.peak > shrinkAbove {
			// Maps do not shrink: after a burst, new ones.
			s.conns = make(map[uint64]service.Connection)
			s.paths = nil
			s.peak = 0
		}
		s.gen++
		s.mu.Unlock()
		if known {
			s.emit(ManagerPath, objectManagerInterface+".InterfacesRemoved",
				s.pathOf(n.Connection.ID), connectionInterfaces())
		}
		delete(s.paths, n.Connection.ID)
	case service.SubflowEvent:
		name := subflowSignals[n.Kind]
		if name == "" {
			s.log.Warn("dbusapi: unknown subflow event kind", "kind", n.Kind)
			return
		}
		if !s.known(n.ConnectionID, name) {
			return
		}
		s.em.subflowSignal(s.pathOf(n.ConnectionID), name, subflowSig{sf: n.Subflow,
			closed: n.Kind == service.SubflowClosed, errno: n.Error, reason: n.ResetReason})
	case service.AddressAnnounced:
		s.emitOnConnection(n.ConnectionID, ConnectionInterface+".AddressAnnounced",
			n.Address.ID, addrString(n.Address.Address), n.Address.Port)
	case service.AddressRemoved:
		s.emitOnConnection(n.ConnectionID, ConnectionInterface+".AddressRemoved", n.RemoteID)
	case service.ControllerReleased:
		s.ctl.release(n)
	default:
		s.log.Warn("dbusapi: unknown notification", "type", fmt.Sprintf("%T", n))
	}
}

func (s *Server) connectionAdded(c service.Connection) {
	s.mu.Lock()
	s.conns[c.ID] = c
	s.peak = max(s.peak, len(s.conns))
	s.gen++
	s.mu.Unlock()
	s.emit(ManagerPath, objectManagerInterface+".InterfacesAdded", s.pathOf(c.ID), connObject{&c})
}

// emitOnConnection emits a Connection signal, only for a connection the
// clients know about: an object exists before its signals.
// emitOnConnection emits the signal name (interface and member) on the
// object of connection id, if it is known. s.pubMu must be held.
func (s *Server) emitOnConnection(id uint64, name string, args ...any) {
	if s.known(id, name) {
		s.emit(s.pathOf(id), name, args...)
	}
}

// known reports whether the clients know connection id's object, for its
// signal name.
func (s *Server) known(id uint64, name string) bool {
	s.mu.RLock()
	_, known := s.conns[id]
	s.mu.RUnlock()
	if !known {
		s.log.Debug("dbusapi: signal for an unknown connection dropped", "connection", id, "signal", name)
	}
	return known
}

func (s *Server) emitChanged(path dbus.ObjectPath, iface string, changed map[string]dbus.Variant) {
	s.em.changed(path, iface, changed)
}

func (s *Server) emit(path dbus.ObjectPath, name string, args ...any) {
	s.em.signal(path, name, args...)
}

// SignalsDropped returns how many signals were dropped because the bus did
// not take them as fast as they came (Options.SignalQueue).
func (s *Server) SignalsDropped() uint64 { return s.em.dropped.Load() }

// Stalled returns how long the signal being sent has waited for the bus to
// take it, or 0: a bus that does not read the daemon's connection (a client
// that does not read its signals holds them, charged to the daemon) stalls
// the method replies too.
func (s *Server) Stalled() time.Duration { return s.em.stalled() }

// connectionObject is a connection object's entry in GetManagedObjects and
// InterfacesAdded: its interfaces with their properties. Like BlueZ and
// sd-bus, it lists the standard interfaces too, with no properties.
func connectionObject(c service.Connection) map[string]map[string]dbus.Variant {
	return map[string]map[string]dbus.Variant{
		ConnectionInterface:     connectionProps(c),
		propertiesInterface:     {},
		introspectableInterface: {},
		peerInterface:           {},
	}
}

// connectionInterfaces are the interfaces of a connection object, as
// InterfacesRemoved lists them.
func connectionInterfaces() []string {
	return []string{ConnectionInterface, propertiesInterface, introspectableInterface, peerInterface}
}

// getManagedObjects implements ObjectManager.GetManagedObjects. On a
// connection that Connect made, the reply is written here, encoded
// straight from the mirror's connections (wireConn.intercept): at 10,000
// connections godbus took a second and left tens of megabytes of garbage.
// The objects are in the order of their ids.
func (s *Server) getManagedObjects(msg dbus.Message) (objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant, _ *dbus.Error) {
	s.heavy(func() {
		cs := s.managed()
		if w := s.em.wire; w != nil && w.takeOwed(msgSender(msg), msg.Serial()) {
			if err := w.replyManaged(msgSender(msg), msg.Serial(), cs); err != nil {
				s.log.Warn("dbusapi: GetManagedObjects reply", "to", msgSender(msg), "err", err)
			}
			return
		}
		objs = toGodbus([]any{cs})[0].(map[dbus.ObjectPath]map[string]map[string]dbus.Variant)
	})
	return objs, nil
}

// managed returns the mirror's connections in the order of their ids.
func (s *Server) managed() managedObjects {
	s.mu.RLock()
	cs := make(managedObjects, 0, len(s.conns))
	for _, c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.RUnlock()
	slices.SortFunc(cs, func(a, b service.Connection) int { return cmp.Compare(a.ID, b.ID) })
	return cs
}

// propsOf returns the interface with properties at path and all their
// values, from the mirror.
func (s *Server) propsOf(path dbus.ObjectPath) (string, map[string]dbus.Variant, *dbus.Error) {
	if path == ManagerPath {
		s.mu.RLock()
		m := s.manager
		s.mu.RUnlock()
		props := managerProps(m)
		props["SignalsDropped"] = dbus.MakeVariant(s.em.dropped.Load())
		return ManagerInterface, props, nil
	}
	c, err := s.connection(path)
	if err != nil {
		return "", nil, err
	}
	return ConnectionInterface, connectionProps(c), nil
}

// mirrored returns the mirror's connection id.
func (s *Server) mirrored(id uint64) (service.Connection, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.conns[id]
	return c, ok
}

// connection returns the mirrored connection of an object path.
func (s *Server) connection(path dbus.ObjectPath) (service.Connection, *dbus.Error) {
	id, ok := connectionID(path)
	if ok {
		s.mu.RLock()
		c, known := s.conns[id]
		s.mu.RUnlock()
		if known {
			return c, nil
		}
	}
	return service.Connection{}, dbus.NewError(ErrorNotFound, []any{fmt.Sprintf("no connection object %s", path)})
}

func (s *Server) propertiesMethods() map[string]any {
	return map[string]any{
		"Get": func(msg dbus.Message, iface, name string) (dbus.Variant, *dbus.Error) {
			own, props, err := s.propsOf(msgPath(msg))
			if err != nil {
				return dbus.Variant{}, err
			}
			if iface != own && iface != "" {
				return dbus.Variant{}, unknownInterface(iface)
			}
			v, ok := props[name]
			if !ok {
				return dbus.Variant{}, unknownProperty(iface, name)
			}
			return v, nil
		},
		"GetAll": func(msg dbus.Message, iface string) (map[string]dbus.Variant, *dbus.Error) {
			own, props, err := s.propsOf(msgPath(msg))
			if err != nil {
				return nil, err
			}
			switch iface {
			case own, "":
				return props, nil
			case propertiesInterface, introspectableInterface, peerInterface:
				return map[string]dbus.Variant{}, nil
			case objectManagerInterface:
				if own == ManagerInterface {
					return map[string]dbus.Variant{}, nil
				}
			}
			return nil, unknownInterface(iface)
		},
		"Set": func(msg dbus.Message, iface, name string, _ dbus.Variant) *dbus.Error {
			own, props, err := s.propsOf(msgPath(msg))
			if err != nil {
				return err
			}
			if iface != own && iface != "" {
				return unknownInterface(iface)
			}
			if _, ok := props[name]; !ok {
				return unknownProperty(iface, name)
			}
			return dbus.NewError(errorReadOnly, []any{fmt.Sprintf("property %s is read-only", quote(name))})
		},
	}
}

func unknownInterface(iface string) *dbus.Error {
	return dbus.NewError(errorUnknownInterface, []any{fmt.Sprintf("no interface %s with properties here", quote(iface))})
}

func unknownProperty(iface, name string) *dbus.Error {
	return dbus.NewError(errorUnknownProperty, []any{fmt.Sprintf("no property %s of %s", quote(name), quote(iface))})
}

// msgPath is the object path a method call was sent to.
func msgPath(msg dbus.Message) dbus.ObjectPath {
	p, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	return p
}

// msgSender is the unique name of a method call's sender.
func msgSender(msg dbus.Message) string {
	s, _ := msg.Headers[dbus.FieldSender].Value().(string)
	return s
}
