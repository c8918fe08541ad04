// This file holds the Watcher: its start, the loop that turns signals into
// reads, and the reads themselves.

package nmmon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
)

// Names of NetworkManager's bus API.
const (
	// BusName is NetworkManager's name on the system bus.
	BusName = "org.freedesktop.NetworkManager"

	managerPath     = dbus.ObjectPath("/org/freedesktop/NetworkManager")
	managerIface    = "org.freedesktop.NetworkManager"
	deviceIface     = "org.freedesktop.NetworkManager.Device"
	activeIface     = "org.freedesktop.NetworkManager.Connection.Active"
	settingsIface   = "org.freedesktop.NetworkManager.Settings.Connection"
	propertiesIface = "org.freedesktop.DBus.Properties"
	busIface        = "org.freedesktop.DBus"
)

// timing are the watcher's delays; tests shorten them.
type timing struct {
	call     time.Duration // bound of one method call
	settle   time.Duration // wait after the first signal of a burst before reading
	interval time.Duration // least time between the starts of two reads
	retryMin time.Duration // first wait after a failed read; doubles up to retryMax
	retryMax time.Duration
}

var defaultTiming = timing{
	call:     2 * time.Second,
	settle:   10 * time.Millisecond,
	interval: 100 * time.Millisecond,
	retryMin: 200 * time.Millisecond,
	retryMax: 5 * time.Second,
}

// signalBuffer is how many signals may wait for the watcher while it reads.
const signalBuffer = 64

// Watcher follows NetworkManager on a bus. Its methods are safe for
// concurrent use.
type Watcher struct {
	states chan State

	mu  sync.Mutex // guards err
	err error
}

// watcher is the state of the goroutine that runs a Watcher.
type watcher struct {
	w     *Watcher
	conn  *dbus.Conn
	log   *slog.Logger
	t     timing
	sigs  chan *dbus.Signal
	rules [][]dbus.MatchOption

	owner    string // NetworkManager's unique name when last read, "" when absent
	last     State  // the last state sent
	sent     bool   // a state was sent
	lastRead time.Time
	backoff  time.Duration // wait before the next retry; 0 after a good read
	timer    *time.Timer
	due      bool      // timer runs for a read
	dueAt    time.Time // when it fires
}

// Watch follows NetworkManager on conn (the system bus, or any bus) until
// ctx ends. It subscribes to the signals it needs before it returns, then
// reads NetworkManager's devices in the background and sends the result on
// States: first the state at start, then every state that differs from the
// last sent. Without NetworkManager on the bus the first state is
// State{Running: false}. log may be nil.
//
// Watch does not close conn. It registers a channel with conn.Signal, so
// conn's signal handler must be a dbus.SignalRegistrar (both of godbus's
// are). An error means a match rule could not be added.
func Watch(ctx context.Context, conn *dbus.Conn, log *slog.Logger) (*Watcher, error) {
	return watch(ctx, conn, log, defaultTiming)
}

// watch is Watch with the tests' timing.
func watch(ctx context.Context, conn *dbus.Conn, log *slog.Logger, t timing) (*Watcher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wr := &watcher{
		w:    &Watcher{states: make(chan State, 1)},
		conn: conn,
		log:  log,
		t:    t,
		sigs: make(chan *dbus.Signal, signalBuffer),
		rules: [][]dbus.MatchOption{
			{
				dbus.WithMatchSender(busIface), dbus.WithMatchObjectPath("/org/freedesktop/DBus"),
				dbus.WithMatchInterface(busIface), dbus.WithMatchMember("NameOwnerChanged"),
				dbus.WithMatchArg(0, BusName),
			},
			{
				dbus.WithMatchSender(BusName), dbus.WithMatchObjectPath(managerPath),
				dbus.WithMatchInterface(managerIface),
			},
			{
				dbus.WithMatchSender(BusName), dbus.WithMatchPathNamespace(managerPath),
				dbus.WithMatchInterface(propertiesIface), dbus.WithMatchMember("PropertiesChanged"),
			},
			{
				dbus.WithMatchSender(BusName), dbus.WithMatchPathNamespace(managerPath),
				dbus.WithMatchInterface(settingsIface), dbus.WithMatchMember("Updated"),
			},
		},
	}
	// The channel is registered before the rules are added and the first
	// read starts after, so no change is missed.
	conn.Signal(wr.sigs)
	for i, rule := range wr.rules {
		cctx, cancel := context.WithTimeout(ctx, t.call)
		err := conn.AddMatchSignalContext(cctx, rule...)
		cancel()
		if err != nil {
			wr.rules = wr.rules[:i]
			wr.unsubscribe()
			return nil, fmt.Errorf("nmmon: watch: add match rule: %w", err)
		}
	}
	go wr.run(ctx)
	return wr.w, nil
}

// States returns the channel of states. It holds only the latest state not
// yet received: a reader that falls behind misses the states in between,
// never the last one. It is closed when the context given to Watch ends or
// the bus connection closes; then Err says why.
func (w *Watcher) States() <-chan State { return w.states }

// Err returns nil while the watcher runs. Once States is closed it
// returns why: the context's error, or that the connection closed.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// run is the watcher's goroutine.
func (wr *watcher) run(ctx context.Context) {
	wr.timer = time.NewTimer(0) // the first read, at once
	wr.due, wr.dueAt = true, time.Now()
	err := wr.loop(ctx)
	wr.timer.Stop()
	wr.unsubscribe()
	wr.w.mu.Lock()
	wr.w.err = err
	wr.w.mu.Unlock()
	close(wr.w.states)
}

// loop reads when the timer fires and schedules reads for the signals that
// may change the state, until ctx ends or the connection closes.
func (wr *watcher) loop(ctx context.Context) error {
	closed := wr.conn.Context().Done()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-closed:
			return errors.New("nmmon: the bus connection closed")
		case sig, ok := <-wr.sigs:
			if !ok {
				return errors.New("nmmon: the bus connection closed")
			}
			if relevant(sig, wr.owner) {
				// NetworkManager coming or going is rare and is read at
				// once; other changes are spaced by interval.
				wr.schedule(wr.t.settle, sig.Name == memberNameOwnerChanged)
			}
		case <-wr.timer.C:
			wr.due = false
			wr.read(ctx)
		}
	}
}

// schedule arranges a read after delay, but unless now is set not sooner
// than interval after the last one began. A read already scheduled for
// that time or sooner stays as it is; one scheduled later (a retry) is
// brought forward.
func (wr *watcher) schedule(delay time.Duration, now bool) {
	at := time.Now().Add(delay)
	if next := wr.lastRead.Add(wr.t.interval); next.After(at) && !now {
		at = next
	}
	if wr.due && !wr.dueAt.After(at) {
		return
	}
	wr.timer.Reset(time.Until(at))
	wr.due, wr.dueAt = true, at
}

// read reads NetworkManager's state and sends it if it changed. A failed
// read keeps the last state and is tried again later.
func (wr *watcher) read(ctx context.Context) {
	wr.lastRead = time.Now()
	st, err := wr.readState(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		if wr.backoff == 0 {
			wr.backoff = wr.t.retryMin
		} else {
			wr.backoff = min(2*wr.backoff, wr.t.retryMax)
		}
		lvl := slog.LevelWarn
		if errors.Is(err, errNotServing) {
			lvl = slog.LevelDebug
		}
		wr.log.Log(ctx, lvl, "read NetworkManager's state; will try again", "err", describe(err), "retry", wr.backoff)
		wr.schedule(wr.backoff, false)
		return
	}
	wr.backoff = 0
	wr.send(st)
}

// send sends st unless it equals the last state sent, replacing a state
// the reader has not taken yet.
func (wr *watcher) send(st State) {
	if wr.sent && st.Equal(wr.last) {
		return
	}
	if st.Running != wr.last.Running || !wr.sent {
		if st.Running {
			wr.log.Info("NetworkManager runs", "owner", wr.owner, "devices", len(st.Devices))
		} else {
			wr.log.Info("NetworkManager does not run")
		}
	}
	wr.log.Debug("NetworkManager state", "state", st.String())
	wr.last, wr.sent = st, true
	for {
		select {
		case wr.w.states <- st:
			return
		default:
		}
		select {
		case <-wr.w.states: // drop the stale state nobody took
		default:
		}
	}
}

// unsubscribe removes the match rules and the signal channel. On a closed
// connection there is nothing to remove.
func (wr *watcher) unsubscribe() {
	wr.conn.RemoveSignal(wr.sigs)
	if !wr.conn.Connected() {
		return
	}
	for _, rule := range wr.rules {
		ctx, cancel := context.WithTimeout(context.Background(), wr.t.call)
		err := wr.conn.RemoveMatchSignalContext(ctx, rule...)
		cancel()
		if err != nil {
			wr.log.Debug("remove match rule", "err", err)
		}
	}
}

// Signal members the watcher reacts to.
const (
	memberNameOwnerChanged  = busIface + ".NameOwnerChanged"
	memberPropertiesChanged = propertiesIface + ".PropertiesChanged"
	memberDeviceAdded       = managerIface + ".DeviceAdded"
	memberDeviceRemoved     = managerIface + ".DeviceRemoved"
	memberUpdated           = settingsIface + ".Updated"
)

// relevantProps are the properties, by interface, whose change may change
// the state.
var relevantProps = map[string][]string{
	managerIface: {"Devices", "AllDevices"},
	deviceIface:  {"Interface", "IpInterface", "Managed", "State", "Metered", "ActiveConnection"},
}

// relevant reports whether sig may change the state: a change of owner of
// NetworkManager's name, or one of NetworkManager's signals that tells of
// a change the watcher reads. owner is NetworkManager's unique name when
// known; signals of other senders are then ignored. The connection may
// deliver signals that other users of it asked for: they are ignored too.
func relevant(sig *dbus.Signal, owner string) bool {
	if sig == nil {
		return false
	}
	if sig.Name == memberNameOwnerChanged {
		name, _ := arg[string](sig.Body, 0)
		return sig.Sender == busIface && name == BusName
	}
	if owner != "" && sig.Sender != owner {
		return false
	}
	if sig.Path != managerPath && !strings.HasPrefix(string(sig.Path), string(managerPath)+"/") {
		return false
	}
	switch sig.Name {
	case memberDeviceAdded, memberDeviceRemoved:
		return sig.Path == managerPath
	case memberUpdated:
		return true
	case memberPropertiesChanged:
		iface, ok := arg[string](sig.Body, 0)
		if !ok {
			return true // odd: read to be safe
		}
		names, ok := relevantProps[iface]
		if !ok {
			return false
		}
		changed, ok1 := arg[map[string]dbus.Variant](sig.Body, 1)
		invalidated, ok2 := arg[[]string](sig.Body, 2)
		if !ok1 && !ok2 {
			return true
		}
		for _, n := range names {
			if _, ok := changed[n]; ok {
				return true
			}
			for _, inv := range invalidated {
				if inv == n {
					return true
				}
			}
		}
	}
	return false
}

// arg returns body[i] if it has type T.
func arg[T any](body []any, i int) (T, bool) {
	var zero T
	if i >= len(body) {
		return zero, false
	}
	v, ok := body[i].(T)
	return v, ok
}

// errVanished: NetworkManager left the bus while the watcher read.
var errVanished = errors.New("NetworkManager left the bus")

// errNotServing: NetworkManager owns its name but does not answer for its
// manager object: it is starting up or shutting down.
var errNotServing = errors.New("NetworkManager owns its name but serves no manager object")

// errorName returns the name of the D-Bus error err carries, or "" when
// err is no error reply (a timeout, a closed connection, a reply that
// could not be stored).
func errorName(err error) string {
	var de dbus.Error
	if errors.As(err, &de) {
		return de.Name
	}
	var pde *dbus.Error
	if errors.As(err, &pde) && pde != nil {
		return pde.Name
	}
	return ""
}

// describe returns err's text, preceded by the error's name for an error
// reply (godbus's text is only the message).
func describe(err error) string {
	if name := errorName(err); name != "" {
		return name + ": " + err.Error()
	}
	return err.Error()
}

// gone reports whether err is NetworkManager's answer that an object (or
// one of its interfaces or methods) is not there, as when a device was
// removed while the watcher read it.
func gone(err error) bool {
	switch errorName(err) {
	case "org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod",
		"org.freedesktop.DBus.Error.UnknownInterface", "org.freedesktop.DBus.Error.UnknownProperty":
		return true
	}
	return false
}

// absent reports whether err says that nobody owns NetworkManager's name
// (any more).
func absent(err error) bool {
	switch errorName(err) {
	case "org.freedesktop.DBus.Error.NameHasNoOwner", "org.freedesktop.DBus.Error.ServiceUnknown":
		return true
	}
	return false
}

// odd reports whether err is an answer, though not the expected one: an
// error reply, or a reply of another type than asked for. Anything else
// (a timeout, a closed connection) means there was no answer.
func odd(err error) bool {
	var ite dbus.InvalidTypeError
	return errorName(err) != "" || errors.As(err, &ite) || strings.Contains(err.Error(), "dbus.Store:")
}

// call calls method on obj of dest with the call timeout and stores the
// reply in out.
func (wr *watcher) call(ctx context.Context, dest string, obj dbus.ObjectPath, method string, out any, args ...any) error {
	cctx, cancel := context.WithTimeout(ctx, wr.t.call)
	defer cancel()
	return wr.conn.Object(dest, obj).CallWithContext(cctx, method, 0, args...).Store(out)
}

// readState reads NetworkManager's state. The calls go to the unique name
// of the owner found first, so that a read never mixes two instances.
func (wr *watcher) readState(ctx context.Context) (State, error) {
	var owner string
	err := wr.call(ctx, busIface, "/org/freedesktop/DBus", busIface+".GetNameOwner", &owner, BusName)
	if absent(err) {
		wr.owner = ""
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("nmmon: get the owner of %s: %w", BusName, err)
	}
	wr.owner = owner

	var paths []dbus.ObjectPath
	err = wr.call(ctx, owner, managerPath, managerIface+".GetAllDevices", &paths)
	switch {
	case absent(err):
		wr.owner = ""
		return State{}, nil // it has just gone; NameOwnerChanged follows
	case gone(err):
		return State{}, fmt.Errorf("nmmon: read devices: %w (%w)", errNotServing, err)
	case err != nil:
		return State{}, fmt.Errorf("nmmon: read devices: %w", err)
	}

	devs := make(map[string]Device, len(paths))
	for _, p := range paths {
		d, ok, err := wr.readDevice(ctx, owner, p)
		if errors.Is(err, errVanished) {
			wr.owner = ""
			return State{}, nil
		}
		if err != nil {
			return State{}, err
		}
		if !ok {
			continue
		}
		if old, dup := devs[d.Interface]; dup {
			// Several devices may share a name (Open vSwitch's bridge,
			// port and interface): keep the one that carries IP traffic.
			if rank(old) >= rank(d) {
				continue
			}
		}
		devs[d.Interface] = d
	}
	return State{Running: true, Devices: devs}, nil
}

// rank orders devices of the same name: one with an IP interface first,
// then an activated one, then a managed one.
func rank(d Device) int {
	r := 0
	if d.IPInterface != "" {
		r += 4
	}
	if d.Activated {
		r += 2
	}
	if d.Managed {
		r++
	}
	return r
}

// readDevice reads one device. ok is false for a device that is gone or
// has no name. An error means NetworkManager did not answer: the whole
// read is tried again later.
func (wr *watcher) readDevice(ctx context.Context, owner string, path dbus.ObjectPath) (Device, bool, error) {
	var props map[string]dbus.Variant
	err := wr.call(ctx, owner, path, propertiesIface+".GetAll", &props, deviceIface)
	if err != nil {
		if absent(err) {
			return Device{}, false, errVanished
		}
		if gone(err) {
			wr.log.Debug("device gone while read", "device", path)
			return Device{}, false, nil
		}
		if odd(err) {
			wr.log.Warn("odd reply for a device's properties; leaving it out", "device", path, "err", describe(err))
			return Device{}, false, nil
		}
		return Device{}, false, fmt.Errorf("nmmon: read device %s: %w", path, err)
	}
	info, problems := decodeDevice(props)
	if len(problems) > 0 {
		wr.log.Warn("odd device properties", "device", path, "interface", info.dev.Interface, "problems", problems)
	}
	if info.dev.Interface == "" {
		return Device{}, false, nil
	}
	if info.active != "" {
		mptcp, err := wr.readMPTCP(ctx, owner, info.dev.Interface, info.active)
		if err != nil {
			return Device{}, false, err
		}
		info.dev.MPTCP = mptcp
	}
	return info.dev, true, nil
}

// readMPTCP reads the MPTCP setting of the profile of an active
// connection. An odd or missing answer gives an unknown setting; an error
// means NetworkManager did not answer.
func (wr *watcher) readMPTCP(ctx context.Context, owner, ifname string, active dbus.ObjectPath) (MPTCPSetting, error) {
	var v dbus.Variant
	err := wr.call(ctx, owner, active, propertiesIface+".Get", &v, activeIface, "Connection")
	if err != nil {
		return MPTCPSetting{}, wr.unknown(err, "read the profile of an active connection", ifname, active)
	}
	settingsPath, problem := decodeConnectionPath(v)
	if problem != "" {
		wr.log.Warn("odd active connection", "interface", ifname, "object", active, "problem", problem)
		return MPTCPSetting{}, nil
	}
	var settings map[string]map[string]dbus.Variant
	err = wr.call(ctx, owner, settingsPath, settingsIface+".GetSettings", &settings)
	if err != nil {
		return MPTCPSetting{}, wr.unknown(err, "read a profile's settings", ifname, settingsPath)
	}
	mptcp, problem := decodeMPTCP(settings)
	if problem != "" {
		wr.log.Warn("odd profile", "interface", ifname, "profile", settingsPath, "problem", problem)
	}
	return mptcp, nil
}

// unknown handles a failed call for a device's profile: an answer (the
// object is gone, access denied, a reply of another type) is logged and
// makes the setting unknown (nil); no answer is returned as the error.
func (wr *watcher) unknown(err error, what, ifname string, obj dbus.ObjectPath) error {
	switch {
	case absent(err):
		return errVanished
	case gone(err):
		wr.log.Debug(what+": gone", "interface", ifname, "object", obj, "err", describe(err))
		return nil
	case odd(err):
		wr.log.Warn(what+"; MPTCP setting unknown", "interface", ifname, "object", obj, "err", describe(err))
		return nil
	}
	return fmt.Errorf("nmmon: %s of %s (%s): %w", what, ifname, obj, err)
}
