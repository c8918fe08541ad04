package dbusapi

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// TestGetStatistics: both methods return the source's statistics under the
// contract's keys; the connection's has the process, the manager's does
// not; without a source they are NotSupported.
func TestGetStatistics(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	var one map[string]dbus.Variant
	if err := h.obj(ConnectionPath(1)).Call(ConnectionInterface+".GetStatistics", 0).Store(&one); err != nil {
		t.Fatal(err)
	}
	if one["bytes_sent"].Value() != uint64(1000) || one["unit"].Value() != "x.service" || one["pid"].Value() != uint32(42) ||
		one["command"].Value() != "curl" || one["cgroup_id"].Value() != uint64(7) {
		t.Errorf("Connection.GetStatistics = %v", one)
	}
	sfs, ok := one["subflows"].Value().([]map[string]dbus.Variant)
	if !ok || len(sfs) != 1 || sfs[0]["rtt_us"].Value() != uint32(1500) || sfs[0]["local_address"].Value() != "10.55.0.1" ||
		sfs[0]["bytes_acked"].Value() != uint64(900) || sfs[0]["interface"].Value() != "c0" {
		t.Errorf("subflows = %#v", one["subflows"].Value())
	}
	var all map[dbus.ObjectPath]map[string]dbus.Variant
	if err := h.obj(ManagerPath).Call(ManagerInterface+".GetStatistics", 0).Store(&all); err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[ConnectionPath(1)]["bytes_received"].Value() != uint64(2000) {
		t.Errorf("Manager.GetStatistics = %v", all)
	}
	if _, ok := all[ConnectionPath(1)]["pid"]; ok {
		t.Errorf("Manager.GetStatistics looked up processes: %v", all[ConnectionPath(1)])
	}
	if err := h.obj(ConnectionPath(99)).Call(ConnectionInterface+".GetStatistics", 0).Err; errName(err) != ErrorNotFound {
		t.Errorf("GetStatistics of an unknown object: %v", err)
	}

	h2 := newHarness(t, Options{Stats: noStats{}}, withState)
	if err := h2.obj(ManagerPath).Call(ManagerInterface+".GetStatistics", 0).Err; errName(err) != ErrorFailed {
		t.Errorf("GetStatistics with a failing source: %v, want Failed", err)
	}
}

// TestGetStatisticsRefusedAnswers: a call whose reply the server writes
// itself (GetStatistics, GetManagedObjects) and that is refused before
// its method runs (a sender beyond its bound of calls in flight) gets
// the refusal, and the server forgets the reply it owed.
func TestGetStatisticsRefusedAnswers(t *testing.T) {
	src := &blockingStats{entered: make(chan struct{}), release: make(chan struct{})}
	h := newHarness(t, Options{MaxInFlight: 1, Stats: src}, withState)
	first := h.obj(ManagerPath).Go(ManagerInterface+".GetStatistics", 0, nil)
	<-src.entered
	for _, method := range []string{ManagerInterface + ".GetStatistics", objectManagerInterface + ".GetManagedObjects"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		call := h.obj(ManagerPath).CallWithContext(ctx, method, 0)
		cancel()
		if errName(call.Err) != ErrorBusy {
			t.Errorf("%s beyond the bound: %v, want Busy", method, call.Err)
		}
	}
	close(src.release)
	<-first.Done
	var all map[dbus.ObjectPath]map[string]dbus.Variant
	if err := first.Store(&all); err != nil || len(all) != 2 {
		t.Errorf("the call in flight: %d objects, %v", len(all), err)
	}
	w := wireOf(h.srvConn)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.owed) != 0 {
		t.Errorf("replies still owed: %v", w.owed)
	}
}

// blockingStats gives fakeStats's statistics once release is closed.
type blockingStats struct {
	once             sync.Once
	entered, release chan struct{}
}

func (b *blockingStats) Stats(tokens []uint32, owner bool) (map[uint32]ConnStats, error) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	return fakeStats{}.Stats(tokens, owner)
}

// noStats fails.
type noStats struct{}

func (noStats) Stats([]uint32, bool) (map[uint32]ConnStats, error) {
	return nil, errNoStats
}

var errNoStats = dbus.ErrMsgNoObject

func TestGetCounters(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	var m map[string]uint64
	if err := h.obj(ManagerPath).Call(ManagerInterface+".GetCounters", 0).Store(&m); err != nil {
		t.Fatal(err)
	}
	if m["MPJoinSynRx"] != 12 || len(m) != 2 {
		t.Errorf("GetCounters = %v", m)
	}
}

// TestHeavyCalls: the calls whose work grows with the number of
// connections run through Options.Heavy, and the others do not.
func TestHeavyCalls(t *testing.T) {
	var mu sync.Mutex
	var n int
	h := newHarness(t, Options{Heavy: func(work func()) {
		mu.Lock()
		n++
		mu.Unlock()
		work()
	}}, withState)
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
	for _, c := range []struct {
		obj    dbus.ObjectPath
		method string
		heavy  bool
	}{
		{ManagerPath, objectManagerInterface + ".GetManagedObjects", true},
		{ManagerPath, ManagerInterface + ".GetStatistics", true},
		{ConnectionPath(1), ConnectionInterface + ".GetStatistics", true},
		{ManagerPath, ManagerInterface + ".GetCounters", false},
		{ManagerPath, "org.freedesktop.DBus.Peer.Ping", false},
	} {
		before := count()
		if err := h.obj(c.obj).Call(c.method, 0).Err; err != nil {
			t.Fatalf("%s: %v", c.method, err)
		}
		if got := count() - before; got != map[bool]int{true: 1, false: 0}[c.heavy] {
			t.Errorf("%s ran through Heavy %d times", c.method, got)
		}
	}
}
