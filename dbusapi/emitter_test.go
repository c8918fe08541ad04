package dbusapi

import (
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// blockedEmitter returns an emitter on a real bus whose first send blocks
// until release is called, and the signals a subscriber receives. With
// wire, the emitter writes the signals itself (Connect's connection);
// else through godbus.
func blockedEmitter(t *testing.T, max int, wire bool) (e *emitter, release func(), received <-chan *dbus.Signal) {
	t.Helper()
	bus := dbustest.StartBus(t)
	conn := bus.Dial(t)
	if wire {
		conn = dialServer(t, bus)
	}
	sub := bus.Dial(t)
	ch := make(chan *dbus.Signal, 10000)
	sub.Signal(ch)
	if err := sub.AddMatchSignal(dbus.WithMatchSender(conn.Names()[0])); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	e = newEmitter(conn, slog.New(slog.DiscardHandler), max, nil)
	if (e.wire != nil) != wire {
		t.Fatalf("emitter writes itself: %v, want %v", e.wire != nil, wire)
	}
	first := true
	e.onSent = func(dbus.ObjectPath, string) {
		if first {
			first = false
			<-gate
		}
	}
	t.Cleanup(func() { e.stop(time.Second) })
	return e, sync.OnceFunc(func() { close(gate) }), ch
}

// nextSignal returns the next signal that is not the bus's own.
func nextSignal(t *testing.T, ch <-chan *dbus.Signal) *dbus.Signal {
	t.Helper()
	for {
		select {
		case s := <-ch:
			if s.Sender != "org.freedesktop.DBus" {
				return s
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no signal within 5 s")
			return nil
		}
	}
}

// bothPaths runs f with the emitter writing through godbus and itself.
func bothPaths(t *testing.T, f func(t *testing.T, wire bool)) {
	for _, wire := range []bool{false, true} {
		name := "godbus"
		if wire {
			name = "wire"
		}
		t.Run(name, func(t *testing.T) { f(t, wire) })
	}
}

func TestEmitterNeverBlocksAndMerges(t *testing.T) { bothPaths(t, testEmitterNeverBlocksAndMerges) }

func testEmitterNeverBlocksAndMerges(t *testing.T, wire bool) {
	e, release, ch := blockedEmitter(t, 3, wire)
	e.signal("/a", "org.example.T.First") // taken by the sender, which then blocks
	for !func() bool { return e.stalled() > 0 }() {
		time.Sleep(time.Millisecond)
	}
	// While the sender is stuck: nothing here waits.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			e.changed("/a", "org.example.T", map[string]dbus.Variant{"N": dbus.MakeVariant(uint32(i))})
			e.changed("/a", "org.example.T", map[string]dbus.Variant{"M": dbus.MakeVariant("m")})
			e.changed("/b", "org.example.T", map[string]dbus.Variant{"N": dbus.MakeVariant(uint32(i))})
		}
		for range 5 {
			e.signal("/a", "org.example.T.Event")
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("queueing blocked while the bus did not take a signal")
	}
	if got := e.dropped.Load(); got != 2 {
		t.Errorf("dropped %d, want 2 (5 events, room for 3)", got)
	}
	release()
	want := []struct {
		path, member string
	}{
		{"/a", "First"}, {"/a", "PropertiesChanged"}, {"/b", "PropertiesChanged"},
		{"/a", "Event"}, {"/a", "Event"}, {"/a", "Event"},
	}
	for i, w := range want {
		s := nextSignal(t, ch)
		if string(s.Path) != w.path || s.Name[len(s.Name)-len(w.member):] != w.member {
			t.Fatalf("signal %d: %s %s, want %s %s", i, s.Path, s.Name, w.path, w.member)
		}
		if w.member == "PropertiesChanged" {
			changed := s.Body[1].(map[string]dbus.Variant)
			if changed["N"].Value() != uint32(99) || (w.path == "/a" && changed["M"].Value() != "m") {
				t.Errorf("merged PropertiesChanged of %s: %v, want the newest values of all", w.path, changed)
			}
		}
	}
	if !e.flush(5 * time.Second) {
		t.Fatal("flush timed out")
	}
	select {
	case s := <-ch:
		if s.Sender != "org.freedesktop.DBus" {
			t.Errorf("more signals than queued: %s %s", s.Path, s.Name)
		}
	case <-time.After(100 * time.Millisecond):
	}
}

func TestEmitterConnectionChanges(t *testing.T) { bothPaths(t, testEmitterConnectionChanges) }

// testEmitterConnectionChanges: a connection's property changes that wait
// are merged into one PropertiesChanged, with the values the mirror has
// when it is sent; one of a connection gone by then is not sent.
func testEmitterConnectionChanges(t *testing.T, wire bool) {
	e, release, ch := blockedEmitter(t, 8, wire)
	var mu sync.Mutex
	mirror := map[uint64]service.Connection{1: conn1, 2: conn2}
	e.lookup = func(id uint64) (service.Connection, bool) {
		mu.Lock()
		defer mu.Unlock()
		c, ok := mirror[id]
		return c, ok
	}
	e.signal("/a", "org.example.T.First") // taken by the sender, which then blocks
	for e.stalled() == 0 {
		time.Sleep(time.Millisecond)
	}
	e.changedConn(ConnectionPath(1), 1, connPropsMask([]string{"State"}))
	e.changedConn(ConnectionPath(2), 2, connPropsMask([]string{"State"}))
	e.changedConn(ConnectionPath(1), 1, connPropsMask([]string{"Subflows"}))
	e.signal(ManagerPath, objectManagerInterface+".InterfacesRemoved")
	mu.Lock()
	newer := conn1
	newer.State = "closing-test"
	newer.Subflows = newer.Subflows[:1]
	mirror[1] = newer
	delete(mirror, 2)
	mu.Unlock()
	release()
	if s := nextSignal(t, ch); s.Name != "org.example.T.First" {
		t.Fatalf("first signal %s", s.Name)
	}
	s := nextSignal(t, ch)
	if s.Path != ConnectionPath(1) || s.Name != propertiesChanged {
		t.Fatalf("second signal %s %s, want connection 1's PropertiesChanged", s.Path, s.Name)
	}
	changed := s.Body[1].(map[string]dbus.Variant)
	if len(changed) != 2 || changed["State"].Value() != "closing-test" || len(changed["Subflows"].Value().([][]any)) != 1 {
		t.Errorf("merged PropertiesChanged: %v, want State and Subflows as the mirror has them at the send", changed)
	}
	if s := nextSignal(t, ch); s.Name != objectManagerInterface+".InterfacesRemoved" {
		t.Errorf("third signal %s %s, want InterfacesRemoved (nothing for the connection gone)", s.Path, s.Name)
	}
	if !e.flush(5 * time.Second) {
		t.Fatal("flush timed out")
	}
}

func TestEmitterStopWhileStuck(t *testing.T) { bothPaths(t, testEmitterStopWhileStuck) }

func testEmitterStopWhileStuck(t *testing.T, wire bool) {
	e, release, _ := blockedEmitter(t, 10, wire)
	defer release()
	e.signal("/a", "org.example.T.First")
	for e.stalled() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	e.stop(50 * time.Millisecond)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("stop took %v with the bus stuck", took)
	}
}
