package nmmon

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// waitTimeout bounds every wait for a state.
const waitTimeout = 5 * time.Second

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// fakeNM plays NetworkManager's bus API on a test bus, with replies the
// test chooses, odd ones included. Each start is a new instance on a new
// connection, as a restarted NetworkManager is.
type fakeNM struct {
	t   *testing.T
	bus *dbustest.Bus

	reads atomic.Int32 // GetAllDevices calls

	mu       sync.Mutex
	conn     *dbus.Conn // nil when stopped
	devices  []dbus.ObjectPath
	props    map[dbus.ObjectPath]any // GetAll(Device): a map[string]dbus.Variant, or anything else for an odd reply
	actives  map[dbus.ObjectPath]any // an active connection's Connection property
	settings map[dbus.ObjectPath]any // GetSettings: a map[string]map[string]dbus.Variant, or anything else
	errs     map[dbus.ObjectPath]*dbus.Error
	hang     chan struct{} // while not nil, GetAllDevices waits for it to close
}

func newFakeNM(t *testing.T, bus *dbustest.Bus) *fakeNM {
	f := &fakeNM{t: t, bus: bus,
		props: map[dbus.ObjectPath]any{}, actives: map[dbus.ObjectPath]any{},
		settings: map[dbus.ObjectPath]any{}, errs: map[dbus.ObjectPath]*dbus.Error{}}
	t.Cleanup(f.stop)
	return f
}

func devPath(n string) dbus.ObjectPath {
	return dbus.ObjectPath("/org/freedesktop/NetworkManager/Devices/" + n)
}

func activePath(n string) dbus.ObjectPath {
	return dbus.ObjectPath("/org/freedesktop/NetworkManager/ActiveConnection/" + n)
}

func settingsPath(n string) dbus.ObjectPath {
	return dbus.ObjectPath("/org/freedesktop/NetworkManager/Settings/" + n)
}

// addDevice adds a device; with a profile (flags >= 0) it is activated
// with active connection and settings objects numbered like it.
func (f *fakeNM) addDevice(n, ifname string, managed bool, flags int64, metered Metered) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := devPath(n)
	props := map[string]dbus.Variant{
		"Interface": v(ifname), "IpInterface": v(""), "Managed": v(managed), "State": v(uint32(30)),
		"Metered": v(uint32(metered)), "ActiveConnection": v(dbus.ObjectPath("/")),
	}
	if flags >= 0 {
		props["State"], props["IpInterface"], props["ActiveConnection"] = v(uint32(100)), v(ifname), v(activePath(n))
		f.actives[activePath(n)] = settingsPath(n)
		conn := map[string]dbus.Variant{"id": v("p" + n), "interface-name": v(ifname)}
		if flags > 0 {
			conn["mptcp-flags"] = v(uint32(flags))
		}
		f.settings[settingsPath(n)] = map[string]map[string]dbus.Variant{"connection": conn}
	}
	f.devices = append(f.devices, p)
	f.props[p] = props
}

// setProp changes one property of a device. It replaces the map, which
// godbus may still be encoding for an earlier reply.
func (f *fakeNM) setProp(n, name string, val any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := maps.Clone(f.props[devPath(n)].(map[string]dbus.Variant))
	m[name] = v(val)
	f.props[devPath(n)] = m
}

func (f *fakeNM) start() {
	conn := f.bus.Dial(f.t)
	check := func(err error) {
		if err != nil {
			f.t.Fatalf("fake NetworkManager: %v", err)
		}
	}
	check(conn.ExportMethodTable(map[string]any{
		"GetAllDevices": func() ([]dbus.ObjectPath, *dbus.Error) {
			f.reads.Add(1)
			f.mu.Lock()
			hang := f.hang
			f.mu.Unlock()
			if hang != nil {
				<-hang
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			return append([]dbus.ObjectPath{}, f.devices...), nil
		},
	}, managerPath, managerIface))
	reply := func(m map[dbus.ObjectPath]any, msg dbus.Message) (dbus.Variant, *dbus.Error) {
		path, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
		f.mu.Lock()
		defer f.mu.Unlock()
		if e := f.errs[path]; e != nil {
			return dbus.Variant{}, e
		}
		r, ok := m[path]
		if !ok {
			return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownObject", []any{"no " + string(path)})
		}
		return v(r), nil // the watcher's Store unwraps the variant
	}
	check(conn.ExportSubtreeMethodTable(map[string]any{
		"GetAll": func(msg dbus.Message, iface string) (dbus.Variant, *dbus.Error) { return reply(f.props, msg) },
		"Get":    func(msg dbus.Message, iface, name string) (dbus.Variant, *dbus.Error) { return reply(f.actives, msg) },
	}, "/org/freedesktop/NetworkManager", propertiesIface))
	check(conn.ExportSubtreeMethodTable(map[string]any{
		"GetSettings": func(msg dbus.Message) (dbus.Variant, *dbus.Error) { return reply(f.settings, msg) },
	}, "/org/freedesktop/NetworkManager/Settings", settingsIface))
	r, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		f.t.Fatalf("fake NetworkManager: request name: %v %v", r, err)
	}
	f.mu.Lock()
	f.conn = conn
	f.mu.Unlock()
}

func (f *fakeNM) stop() {
	f.mu.Lock()
	conn := f.conn
	f.conn = nil
	if f.hang != nil {
		close(f.hang)
		f.hang = nil
	}
	f.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
}

// emit sends a signal from the fake.
func (f *fakeNM) emit(path dbus.ObjectPath, name string, args ...any) {
	f.t.Helper()
	f.mu.Lock()
	conn := f.conn
	f.mu.Unlock()
	if err := conn.Emit(path, name, args...); err != nil {
		f.t.Fatalf("emit %s: %v", name, err)
	}
}

// propsChanged emits a device's PropertiesChanged for the named properties.
func (f *fakeNM) propsChanged(n string, names ...string) {
	f.t.Helper()
	f.mu.Lock()
	changed := map[string]dbus.Variant{}
	for _, name := range names {
		changed[name] = f.props[devPath(n)].(map[string]dbus.Variant)[name]
	}
	f.mu.Unlock()
	f.emit(devPath(n), memberPropertiesChanged, deviceIface, changed, []string{})
}

// startWatch starts a watcher with the timing, on a connection of its own,
// stopped at the end of the test.
func startWatch(t *testing.T, bus *dbustest.Bus, log *slog.Logger, tm timing) *Watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := watch(ctx, bus.Dial(t), log, tm)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		for range w.States() {
		}
	})
	return w
}

// next returns the first state from w that satisfies ok, failing the test
// after timeout.
func next(t *testing.T, w *Watcher, timeout time.Duration, what string, ok func(State) bool) State {
	t.Helper()
	deadline := time.After(timeout)
	var last State
	for {
		select {
		case s, open := <-w.States():
			if !open {
				t.Fatalf("waiting for %s: the watcher stopped: %v", what, w.Err())
			}
			if ok(s) {
				return s
			}
			last = s
		case <-deadline:
			t.Fatalf("waiting for %s: not within %v; last state: %v", what, timeout, last)
		}
	}
}

// quiet fails the test if w sends a state within d.
func quiet(t *testing.T, w *Watcher, d time.Duration) {
	t.Helper()
	select {
	case s := <-w.States():
		t.Fatalf("unexpected state %v", s)
	case <-time.After(d):
	}
}

func TestWatchFake(t *testing.T) {
	bus := dbustest.StartBus(t)
	nm := newFakeNM(t, bus)
	nm.addDevice("1", "eth0", true, int64(MPTCPSubflow|MPTCPAlsoWithoutDefaultRoute), MeteredYes)
	nm.addDevice("2", "wlan0", false, -1, MeteredUnknown)
	nm.addDevice("3", "eth1", true, 0, MeteredGuessNo)

	w := startWatch(t, bus, discard(), defaultTiming)
	if s := next(t, w, waitTimeout, "the first state", func(State) bool { return true }); s.Running || s.Devices != nil {
		t.Fatalf("first state without NetworkManager: %v", s)
	}
	nm.start()
	s := next(t, w, waitTimeout, "running", func(s State) bool { return s.Running })
	want := map[string]Device{
		"eth0":  {Interface: "eth0", IPInterface: "eth0", Managed: true, Activated: true, Metered: MeteredYes, MPTCP: MPTCPSetting{Known: true, Flags: MPTCPSubflow | MPTCPAlsoWithoutDefaultRoute}},
		"wlan0": {Interface: "wlan0"},
		"eth1":  {Interface: "eth1", IPInterface: "eth1", Managed: true, Activated: true, Metered: MeteredGuessNo, MPTCP: MPTCPSetting{Known: true}},
	}
	if !s.Equal(State{Running: true, Devices: want}) {
		t.Fatalf("state %v\nwant %v", s, State{Running: true, Devices: want})
	}

	// A change that the watcher does not read sends nothing.
	nm.emit(devPath("1"), memberPropertiesChanged, deviceIface, map[string]dbus.Variant{"Ip4Connectivity": v(uint32(4))}, []string{})
	nm.emit(managerPath, managerIface+".StateChanged", uint32(70))
	quiet(t, w, 300*time.Millisecond)

	// Metered changes with its PropertiesChanged.
	nm.setProp("3", "Metered", uint32(MeteredGuessYes))
	nm.propsChanged("3", "Metered")
	s = next(t, w, waitTimeout, "eth1 metered", func(s State) bool { return s.Devices["eth1"].Metered.Expensive() })

	// A profile's Updated is followed.
	nm.mu.Lock()
	nm.settings[settingsPath("3")] = map[string]map[string]dbus.Variant{"connection": {"mptcp-flags": v(uint32(MPTCPDisabled))}}
	nm.mu.Unlock()
	nm.emit(settingsPath("3"), memberUpdated)
	s = next(t, w, waitTimeout, "eth1 disabled", func(s State) bool { return s.Devices["eth1"].MPTCP.Disabled })

	// A device removed.
	nm.mu.Lock()
	nm.devices = nm.devices[:2]
	nm.mu.Unlock()
	nm.emit(managerPath, memberDeviceRemoved, devPath("3"))
	next(t, w, waitTimeout, "eth1 removed", func(s State) bool { _, ok := s.Devices["eth1"]; return !ok && len(s.Devices) == 2 })

	nm.stop()
	next(t, w, waitTimeout, "not running", func(s State) bool { return !s.Running })
	nm.start()
	s = next(t, w, waitTimeout, "running again", func(s State) bool { return s.Running })
	if len(s.Devices) != 2 || !s.Devices["eth0"].MPTCP.Known {
		t.Fatalf("after a restart: %v", s)
	}
	if w.Err() != nil {
		t.Fatalf("Err() = %v while running", w.Err())
	}
}

// TestWatchOddReplies checks that replies of unexpected shape make the
// parts they concern unknown, are logged, and break nothing else.
func TestWatchOddReplies(t *testing.T) {
	bus := dbustest.StartBus(t)
	nm := newFakeNM(t, bus)
	nm.addDevice("1", "good0", true, int64(MPTCPSubflow), MeteredNo)
	nm.addDevice("2", "notamap", true, 0, MeteredNo)
	nm.addDevice("3", "badtypes", true, int64(MPTCPSignal), MeteredNo)
	nm.addDevice("4", "badconn", true, int64(MPTCPSignal), MeteredNo)
	nm.addDevice("5", "denied", true, int64(MPTCPSignal), MeteredYes)
	nm.addDevice("6", "int32flags", true, 0, MeteredNo)
	nm.addDevice("7", "vanished", true, 0, MeteredNo)
	nm.addDevice("8", "nosettings", true, 0, MeteredNo)
	nm.mu.Lock()
	nm.props[devPath("2")] = "not a map"
	p3 := nm.props[devPath("3")].(map[string]dbus.Variant)
	p3["Managed"], p3["State"] = v("yes"), v(int32(100))
	nm.actives[activePath("4")] = "/org/freedesktop/NetworkManager/Settings/4" // a string, not a path
	nm.errs[settingsPath("5")] = dbus.NewError("org.freedesktop.NetworkManager.Settings.PermissionDenied", []any{"no"})
	nm.settings[settingsPath("6")] = map[string]map[string]dbus.Variant{"connection": {"mptcp-flags": v(int32(0x20))}}
	delete(nm.props, devPath("7"))
	nm.settings[settingsPath("8")] = map[string]map[string]dbus.Variant{}
	nm.mu.Unlock()
	nm.start()

	var logs pmtest.SyncBuffer
	w := startWatch(t, bus, slog.New(slog.NewTextHandler(&logs, nil)), defaultTiming)
	s := next(t, w, waitTimeout, "running", func(s State) bool { return s.Running })
	unknown := func(ifname string, metered Metered) Device {
		return Device{Interface: ifname, IPInterface: ifname, Managed: true, Activated: true, Metered: metered}
	}
	want := map[string]Device{
		"good0":      {Interface: "good0", IPInterface: "good0", Managed: true, Activated: true, Metered: MeteredNo, MPTCP: MPTCPSetting{Known: true, Flags: MPTCPSubflow}},
		"badtypes":   {Interface: "badtypes", IPInterface: "badtypes", Metered: MeteredNo, MPTCP: MPTCPSetting{Known: true, Flags: MPTCPSignal}},
		"badconn":    unknown("badconn", MeteredNo),
		"denied":     unknown("denied", MeteredYes),
		"int32flags": unknown("int32flags", MeteredNo),
		"nosettings": unknown("nosettings", MeteredNo),
	}
	if !s.Equal(State{Running: true, Devices: want}) {
		t.Fatalf("state %v\nwant %v", s, State{Running: true, Devices: want})
	}
	for _, msg := range []string{
		"odd reply for a device's properties", "Devices/2",
		"property Managed has type s, want b", "property State has type i, want u",
		"odd active connection", "property Connection has type s, want o",
		"PermissionDenied",
		"connection.mptcp-flags has type i, want u",
		"no connection setting",
	} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("the log does not say %q:\n%s", msg, logs.String())
		}
	}
	if strings.Contains(logs.String(), "vanished") {
		t.Errorf("a device that is gone was logged as odd:\n%s", logs.String())
	}
}

// TestWatchCoalesces checks that a burst of signals costs a few reads, and
// that the last change of the burst is in the state.
func TestWatchCoalesces(t *testing.T) {
	bus := dbustest.StartBus(t)
	nm := newFakeNM(t, bus)
	nm.addDevice("1", "eth0", true, 0, MeteredNo)
	nm.start()
	w := startWatch(t, bus, discard(), defaultTiming)
	next(t, w, waitTimeout, "running", func(s State) bool { return s.Running })
	before := nm.reads.Load()
	const burst = 300
	start := time.Now()
	for i := range burst {
		nm.setProp("1", "Metered", uint32(i%5))
		nm.propsChanged("1", "Metered")
	}
	nm.setProp("1", "Metered", uint32(MeteredYes))
	nm.propsChanged("1", "Metered")
	elapsed := time.Since(start)
	next(t, w, waitTimeout, "the last change", func(s State) bool { return s.Devices["eth0"].Metered == MeteredYes })
	time.Sleep(300 * time.Millisecond) // let a last read happen, if one is due
	reads := nm.reads.Load() - before
	// At most one read per 100 ms while the burst lasted, plus the one
	// after it (and one for the signals queued during a read).
	limit := int32(elapsed/(100*time.Millisecond)) + 3
	t.Logf("%d signals in %v: %d reads (limit %d)", burst+1, elapsed.Round(time.Millisecond), reads, limit)
	if reads > limit || reads < 1 {
		t.Errorf("%d reads for a burst of %d signals in %v, want 1..%d", reads, burst+1, elapsed, limit)
	}
}

// TestWatchTimeout checks that a NetworkManager that does not answer makes
// the watcher keep its state, and that it reads again once it answers.
func TestWatchTimeout(t *testing.T) {
	bus := dbustest.StartBus(t)
	nm := newFakeNM(t, bus)
	nm.addDevice("1", "eth0", true, 0, MeteredNo)
	nm.start()
	tm := defaultTiming
	tm.call, tm.retryMin, tm.retryMax = 100*time.Millisecond, 50*time.Millisecond, 200*time.Millisecond
	var logs pmtest.SyncBuffer
	w := startWatch(t, bus, slog.New(slog.NewTextHandler(&logs, nil)), tm)
	next(t, w, waitTimeout, "running", func(s State) bool { return s.Running })

	hang := make(chan struct{})
	nm.mu.Lock()
	nm.hang = hang
	nm.mu.Unlock()
	nm.setProp("1", "Metered", uint32(MeteredYes))
	nm.propsChanged("1", "Metered")
	quiet(t, w, 600*time.Millisecond)
	if !strings.Contains(logs.String(), "will try again") || !strings.Contains(logs.String(), "deadline exceeded") {
		t.Errorf("the timeout was not logged:\n%s", logs.String())
	}
	nm.mu.Lock()
	nm.hang = nil
	nm.mu.Unlock()
	close(hang)
	next(t, w, waitTimeout, "metered after the retry", func(s State) bool { return s.Devices["eth0"].Metered == MeteredYes })
}

// TestWatchStops checks how the watcher ends: with its context, or when
// its connection closes; either way the channel is closed and Err says why.
func TestWatchStops(t *testing.T) {
	bus := dbustest.StartBus(t)
	conn := bus.Dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	w, err := Watch(ctx, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	next(t, w, waitTimeout, "the first state", func(State) bool { return true })
	cancel()
	for range w.States() {
	}
	if !errors.Is(w.Err(), context.Canceled) {
		t.Errorf("Err() = %v after cancel", w.Err())
	}
	// The watcher's rules are gone from the connection, which still works.
	if err := conn.BusObject().Call("org.freedesktop.DBus.GetId", 0).Err; err != nil {
		t.Errorf("the connection broke: %v", err)
	}

	conn2, err := dbus.Connect(bus.Address())
	if err != nil {
		t.Fatal(err)
	}
	w2, err := Watch(context.Background(), conn2, nil)
	if err != nil {
		t.Fatal(err)
	}
	next(t, w2, waitTimeout, "the first state", func(State) bool { return true })
	conn2.Close()
	done := make(chan struct{})
	go func() {
		for range w2.States() {
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("the watcher did not stop when its connection closed")
	}
	if err := w2.Err(); err == nil || !strings.Contains(err.Error(), "connection closed") {
		t.Errorf("Err() = %v after the connection closed", err)
	}

	// Watch on a closed connection fails.
	if _, err := Watch(context.Background(), conn2, nil); err == nil {
		t.Error("Watch on a closed connection succeeded")
	}
}
