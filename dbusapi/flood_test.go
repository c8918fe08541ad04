package dbusapi

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// gatedBackend is the fake backend whose FlushEndpoints waits for the gate
// to open, after saying so on entered.
type gatedBackend struct {
	*fakeBackend
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedBackend) FlushEndpoints(ctx context.Context, c service.Caller) error {
	g.entered <- struct{}{}
	<-g.gate
	return g.fakeBackend.FlushEndpoints(ctx, c)
}

// TestInFlightBound checks the bound on calls in flight per sender: with
// MaxInFlight calls of a client waiting in the backend, its next call, a
// read too, is answered Busy at once, while another client is served; once
// the calls are done, the client is served again.
func TestInFlightBound(t *testing.T) {
	for _, max := range []int{0, 3} {
		t.Run(fmt.Sprint("MaxInFlight=", max), func(t *testing.T) {
			bound := max
			if bound == 0 {
				bound = DefaultMaxInFlight
			}
			bus := dbustest.StartBus(t)
			be := &gatedBackend{fakeBackend: newFakeBackend(), entered: make(chan struct{}, bound), gate: make(chan struct{})}
			withState(be.fakeBackend)
			_, dest := startServer(t, bus, be, func(*dbus.Conn) Options {
				return Options{Authorizer: &allowAll{}, MaxInFlight: max}
			})
			flooder, other := bus.Dial(t), bus.Dial(t)
			mgr := flooder.Object(dest, ManagerPath)

			done := make(chan *dbus.Call, bound)
			for range bound {
				mgr.Go(ManagerInterface+".FlushEndpoints", 0, done)
			}
			for range bound {
				select {
				case <-be.entered:
				case <-time.After(10 * time.Second):
					t.Fatal("the calls did not reach the backend")
				}
			}
			// At the bound: refused at once, whatever the method.
			for _, m := range []string{ManagerInterface + ".FlushEndpoints", ManagerInterface + ".SetLimits"} {
				args := []any{}
				if m == ManagerInterface+".SetLimits" {
					args = []any{uint32(1), uint32(1)}
				}
				err := mgr.Call(m, 0, args...).Err
				if errName(err) != ErrorBusy || !containsAll(err.Error(), "too many requests in flight", flooder.Names()[0]) {
					t.Errorf("%s at the bound: %v, want Busy naming the sender", m, err)
				}
			}
			if _, err := mgr.GetProperty(ManagerInterface + ".Version"); errName(err) != ErrorBusy {
				t.Errorf("Get at the bound: %v, want Busy", err)
			}
			// Another client is served.
			if err := other.Object(dest, ManagerPath).Call(ManagerInterface+".SetLimits", 0, uint32(1), uint32(1)).Err; err != nil {
				t.Errorf("another client: %v", err)
			}
			close(be.gate)
			for range bound {
				if c := <-done; c.Err != nil {
					t.Errorf("a call within the bound: %v", c.Err)
				}
			}
			if err := mgr.Call(ManagerInterface+".SetLimits", 0, uint32(1), uint32(1)).Err; err != nil {
				t.Errorf("after the calls ended: %v", err)
			}
			var methods []string
			for _, c := range be.takeCalls() {
				methods = append(methods, c.Method)
			}
			if want := append(slices.Repeat([]string{"FlushEndpoints"}, bound), "SetLimits"); len(methods) != bound+2 ||
				!slices.Equal(slices.Sorted(slices.Values(methods[:bound+1])), slices.Sorted(slices.Values(want))) ||
				methods[bound+1] != "SetLimits" {
				t.Errorf("backend ran %v, want %d FlushEndpoints and 2 SetLimits", methods, bound)
			}
		})
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// eventStream feeds n subflow events (SUB_ESTABLISHED and SUB_CLOSED in
// turn, local port i for the ith) for the connection of startService into
// the service, one every interval, and returns when each was sent.
func eventStream(e *serviceEnv, first, n int, interval time.Duration) []time.Time {
	sent := make([]time.Time, n)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		ev := pm.Event{
			Type: pm.EventSubEstablished, Token: fakeToken, Family: syscall.AF_INET,
			LocalID: 1, RemoteID: 0,
			LocalAddr: netip.MustParseAddr("10.55.1.2"), LocalPort: uint16(first + i),
			RemoteAddr: netip.MustParseAddr("10.55.0.1"), RemotePort: 80,
		}
		if i%2 == 1 {
			ev.Type, ev.LocalPort = pm.EventSubClosed, uint16(first+i-1)
		}
		sent[i] = time.Now()
		e.events <- ev
	}
	return sent
}

// subflowSignal is a Subflow signal as the watcher received it.
type subflowSignal struct {
	name string
	port uint16
	at   time.Time
}

// watch collects the SubflowEstablished and SubflowClosed signals of the
// server until want have come or the time is up. It may run in a goroutine
// of its own.
func watch(t *testing.T, sigs <-chan *dbus.Signal, want int) []subflowSignal {
	var got []subflowSignal
	timeout := time.After(60 * time.Second)
	for len(got) < want {
		select {
		case s := <-sigs:
			at := time.Now()
			name, _ := strings.CutPrefix(s.Name, ConnectionInterface+".")
			if s.Path != ConnectionPath(1) || (name != "SubflowEstablished" && name != "SubflowClosed") {
				continue
			}
			port, _ := s.Body[3].(uint16)
			got = append(got, subflowSignal{name, port, at})
		case <-timeout:
			t.Errorf("%d of %d subflow signals arrived", len(got), want)
			return got
		}
	}
	return got
}

// checkStream checks that the signals are those of the events, in order,
// and returns the latencies, sorted, of the service loop (event sent ->
// notification published) and end to end (event sent -> signal received).
func checkStream(t *testing.T, e *serviceEnv, first int, sent []time.Time, got []subflowSignal) (loop, lat []time.Duration) {
	t.Helper()
	published := e.pub.takePublished()
	if len(published) != len(sent) {
		t.Fatalf("%d events published, want %d", len(published), len(sent))
	}
	loop = make([]time.Duration, len(sent))
	for i := range sent {
		loop[i] = published[i].Sub(sent[i])
	}
	slices.Sort(loop)
	if len(got) != len(sent) {
		t.Fatalf("%d signals for %d events", len(got), len(sent))
	}
	lat = make([]time.Duration, len(sent))
	for i, s := range got {
		want := subflowSignal{name: "SubflowEstablished", port: uint16(first + i)}
		if i%2 == 1 {
			want = subflowSignal{name: "SubflowClosed", port: uint16(first + i - 1)}
		}
		if s.name != want.name || s.port != want.port {
			t.Fatalf("signal %d: %s port %d, want %s port %d", i, s.name, s.port, want.name, want.port)
		}
		lat[i] = s.at.Sub(sent[i])
	}
	slices.Sort(lat)
	return loop, lat
}

func latencies(lat []time.Duration) string {
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))].Round(time.Microsecond) }
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v", q(0.5), q(0.9), q(0.99), q(1))
}

// TestFloodDoesNotStallEvents floods the server from one client with
// 10000 concurrent calls (half through the service loop: SetLimits to the
// fake kernel, GetConnectionByToken; half Properties.GetAll from the
// mirror) while a stream of kernel events goes through the service: every
// event's signal arrives, in order, and the flooder's excess calls are
// answered Busy (by the server) or LimitsExceeded (by the bus, beyond its
// max_replies_per_connection), nothing else. The events' latencies with
// and without the flood are logged, not asserted.
func TestFloodDoesNotStallEvents(t *testing.T) {
	bus := dbustest.StartBus(t)
	e := startService(t, bus, Options{})
	watcher := bus.Dial(t)
	if err := watcher.AddMatchSignal(dbus.WithMatchSender(e.dest), dbus.WithMatchObjectPath(ConnectionPath(1))); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *dbus.Signal, 1<<16)
	watcher.Signal(sigs)

	const events, interval = 1000, time.Millisecond
	// stream sends the events while a goroutine receives the signals, and
	// checks them.
	stream := func(first int) (loop, lat []time.Duration) {
		got := make(chan []subflowSignal, 1)
		go func() { got <- watch(t, sigs, events) }()
		sent := eventStream(e, first, events, interval)
		return checkStream(t, e, first, sent, <-got)
	}
	baseLoop, base := stream(1)

	const calls = 10000
	flooder := bus.Dial(t)
	mgr := flooder.Object(e.dest, ManagerPath)
	replies := make(chan *dbus.Call, calls)
	var (
		floodStart, floodSent time.Time
		wg                    sync.WaitGroup
	)
	wg.Go(func() {
		floodStart = time.Now()
		for i := range calls {
			switch i % 4 {
			case 0:
				mgr.Go(ManagerInterface+".SetLimits", 0, replies, uint32(2), uint32(0))
			case 1:
				mgr.Go(ManagerInterface+".GetConnectionByToken", 0, replies, uint32(fakeToken))
			default:
				mgr.Go(propertiesInterface+".GetAll", 0, replies, ManagerInterface)
			}
		}
		floodSent = time.Now()
	})
	floodedLoop, flooded := stream(10001)
	wg.Wait()

	answers := map[string]int{}
	for range calls {
		select {
		case c := <-replies:
			answers[errName(c.Err)]++
			if c.Err != nil && errName(c.Err) == "" {
				t.Errorf("flood call: %v", c.Err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("only %v of the flood's %d calls were answered", answers, calls)
		}
	}
	floodDone := time.Since(floodStart)
	for name, n := range answers {
		if name != "" && name != ErrorBusy && name != "org.freedesktop.DBus.Error.LimitsExceeded" {
			t.Errorf("%d flood calls answered %s", n, name)
		}
	}
	if answers[ErrorBusy] == 0 || answers[""] == 0 {
		t.Errorf("flood answers %v: want some successes and some Busy", answers)
	}
	t.Logf("%d events, one per %v; latency in the service loop (event -> published), no flood: %s", events, interval, latencies(baseLoop))
	t.Logf("  with a %d-call flood: %s", calls, latencies(floodedLoop))
	t.Logf("end to end (event -> signal received by a client), no flood: %s", latencies(base))
	t.Logf("  with a %d-call flood: %s", calls, latencies(flooded))
	t.Logf("flood: sent in %v, answered in %v: %v (\"\" = success)",
		floodSent.Sub(floodStart).Round(time.Millisecond), floodDone.Round(time.Millisecond), answers)
}
