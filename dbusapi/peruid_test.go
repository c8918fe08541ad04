package dbusapi

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// Users the tests connect as (Debian's nobody, daemon and bin).
const (
	uidNobody = 65534
	uidDaemon = 1
	uidBin    = 2
)

// setThreadIDs sets the effective UID and GID of the calling thread only
// (raw system calls: the syscall package's Setresuid and Setresgid change
// every thread of the process). The real and saved IDs stay root's, so
// that setThreadIDs(0, 0) gives root back.
func setThreadIDs(uid, gid uint32) error {
	const keep = ^uintptr(0) // -1: unchanged
	if uid == 0 {            // root first, to be allowed to change the group
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, keep, 0, keep); e != 0 {
			return fmt.Errorf("setresuid(-1, 0, -1): %w", e)
		}
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESGID, keep, uintptr(gid), keep); e != 0 {
		return fmt.Errorf("setresgid(-1, %d, -1): %w", gid, e)
	}
	if uid != 0 {
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, keep, uintptr(uid), keep); e != 0 {
			return fmt.Errorf("setresuid(-1, %d, -1): %w", uid, e)
		}
	}
	return nil
}

// dialAs connects a client to the bus as the user uid (group gid), from
// this process: the bus believes the credentials of the socket's connect
// (SO_PEERCRED: the effective IDs of the connecting thread), so one thread
// takes the IDs for the connect and gives them back, and the EXTERNAL
// authentication claims uid. Many such clients are cheap, unlike a process
// each (CommandAs). It needs root; the client is closed when the test ends.
// opts are added to the connection's options.
func dialAs(tb testing.TB, bus *dbustest.Bus, uid, gid uint32, opts ...dbus.ConnOption) *dbus.Conn {
	tb.Helper()
	pmtest.RequireRoot(tb)
	type result struct {
		conn *dbus.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := setThreadIDs(uid, gid); err != nil {
			if setThreadIDs(0, 0) == nil {
				runtime.UnlockOSThread()
			}
			done <- result{err: err}
			return
		}
		conn, err := dbus.Dial(bus.Address(), append([]dbus.ConnOption{dbus.WithSignalHandler(dbus.NewSequentialSignalHandler())}, opts...)...)
		if err := setThreadIDs(0, 0); err != nil {
			// The thread keeps the other user's IDs: it ends with this
			// goroutine (still locked) rather than run anything else.
			if conn != nil {
				conn.Close()
			}
			done <- result{err: fmt.Errorf("give root back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		if err == nil {
			if err = conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.FormatUint(uint64(uid), 10))}); err == nil {
				err = conn.Hello()
			}
			if err != nil {
				conn.Close()
			}
		}
		done <- result{conn, err}
	}()
	r := <-done
	if r.err != nil {
		tb.Fatalf("connect to the bus as uid %d: %v", uid, r.err)
	}
	tb.Cleanup(func() { r.conn.Close() })
	return r.conn
}

// busUID asks the bus who the client conn is.
func busUID(tb testing.TB, conn *dbus.Conn) uint32 {
	tb.Helper()
	var uid uint32
	if err := conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, conn.Names()[0]).Store(&uid); err != nil {
		tb.Fatal(err)
	}
	return uid
}

func TestDialAs(t *testing.T) {
	bus := dbustest.StartBus(t)
	for _, uid := range []uint32{uidNobody, uidBin} {
		if got := busUID(t, dialAs(t, bus, uid, uid)); got != uid {
			t.Errorf("dialAs(%d): the bus says uid %d", uid, got)
		}
	}
	// The process is root again.
	if got := busUID(t, bus.Dial(t)); got != 0 {
		t.Errorf("after dialAs, Dial is uid %d", got)
	}
}

// waitEntered waits for n calls to reach a gated backend.
func waitEntered(t *testing.T, be *gatedBackend, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-be.entered:
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d calls reached the backend", i, n)
		}
	}
}

// checkNoMoreEntered checks that no further call reached a gated backend.
func checkNoMoreEntered(t *testing.T, be *gatedBackend) {
	t.Helper()
	select {
	case <-be.entered:
		t.Error("a call beyond the bound reached the backend")
	case <-time.After(100 * time.Millisecond):
	}
}

// TestInFlightPerUID opens 200 connections as nobody, each with one call
// that waits in the backend: together they get the per-user bound in flight
// (64 by default), and the surplus is answered Busy at once, naming the
// UID, even for a read from a fresh connection of that user, while the
// calls of another user and of root are served. When the calls end the
// user is served again, and when its connections close, their UIDs are
// forgotten.
func TestInFlightPerUID(t *testing.T) {
	pmtest.RequireRoot(t)
	const conns = 200
	bound := DefaultMaxInFlightPerUID
	bus := dbustest.StartBus(t)
	be := &gatedBackend{fakeBackend: newFakeBackend(), entered: make(chan struct{}, conns), gate: make(chan struct{})}
	withState(be.fakeBackend)
	srv, dest := startServer(t, bus, be, func(*dbus.Conn) Options { return Options{Authorizer: &allowAll{}} })

	clients := make([]*dbus.Conn, conns)
	for i := range clients {
		clients[i] = dialAs(t, bus, uidNobody, uidNobody)
	}
	replies := make(chan *dbus.Call, conns)
	for _, c := range clients {
		c.Object(dest, ManagerPath).Go(ManagerInterface+".FlushEndpoints", 0, replies)
	}
	waitEntered(t, be, bound)
	// The surplus is answered at once: Busy, naming the user.
	for i := range conns - bound {
		select {
		case c := <-replies:
			if errName(c.Err) != ErrorBusy || !containsAll(c.Err.Error(), "too many requests in flight from uid 65534") {
				t.Errorf("a call beyond the bound: %v, want Busy naming uid 65534", c.Err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d calls beyond the bound were answered", i, conns-bound)
		}
	}
	checkNoMoreEntered(t, be)
	// Any call of that user, even a read on a new connection, is Busy.
	late := dialAs(t, bus, uidNobody, uidNobody)
	if _, err := late.Object(dest, ManagerPath).GetProperty(ManagerInterface + ".Version"); errName(err) != ErrorBusy {
		t.Errorf("a read of the same user at the bound: %v, want Busy", err)
	}
	// Another user and root are served.
	for _, other := range []*dbus.Conn{dialAs(t, bus, uidDaemon, uidDaemon), bus.Dial(t)} {
		if err := other.Object(dest, ManagerPath).Call(ManagerInterface+".SetLimits", 0, uint32(1), uint32(1)).Err; err != nil {
			t.Errorf("uid %d at the other user's bound: %v", busUID(t, other), err)
		}
	}
	close(be.gate)
	for range bound {
		select {
		case c := <-replies:
			if c.Err != nil {
				t.Errorf("a call within the bound: %v", c.Err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the calls within the bound were not answered")
		}
	}
	if _, err := late.Object(dest, ManagerPath).GetProperty(ManagerInterface + ".Version"); err != nil {
		t.Errorf("a read once the calls ended: %v", err)
	}
	if got := len(be.takeCalls()); got != bound+2 {
		t.Errorf("the backend ran %d calls, want %d", got, bound+2)
	}

	// The departed clients' UIDs are forgotten; the others' kept.
	names := make([]string, len(clients))
	for i, c := range clients {
		names[i] = c.Names()[0]
		if !srv.inFlight.uids.has(names[i]) {
			t.Fatalf("%s's UID is not cached", names[i])
		}
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, name := range names {
		for srv.inFlight.uids.has(name) {
			if time.Now().After(deadline) {
				t.Fatalf("%s left the bus, its UID is still cached (%d names cached)", name, srv.inFlight.uids.size())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !srv.inFlight.uids.has(late.Names()[0]) {
		t.Errorf("the UID of %s, still on the bus, was forgotten", late.Names()[0])
	}
}

// size returns how many names the cache holds (tests).
func (c *uidCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// has reports whether the cache holds name (tests).
func (c *uidCache) has(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[name]
	return ok
}

// TestInFlightPerUIDBound checks Options.MaxInFlightPerUID, and that root
// is bounded per connection only.
func TestInFlightPerUIDBound(t *testing.T) {
	pmtest.RequireRoot(t)
	const bound = 3
	bus := dbustest.StartBus(t)
	be := &gatedBackend{fakeBackend: newFakeBackend(), entered: make(chan struct{}, 16), gate: make(chan struct{})}
	withState(be.fakeBackend)
	_, dest := startServer(t, bus, be, func(*dbus.Conn) Options {
		return Options{Authorizer: &allowAll{}, MaxInFlightPerUID: bound}
	})
	replies := make(chan *dbus.Call, 16)
	// Two connections of bin: three calls in flight together, the fourth
	// is Busy.
	bin1, bin2 := dialAs(t, bus, uidBin, uidBin), dialAs(t, bus, uidBin, uidBin)
	for i := range bound {
		[]*dbus.Conn{bin1, bin2}[i%2].Object(dest, ManagerPath).Go(ManagerInterface+".FlushEndpoints", 0, replies)
	}
	waitEntered(t, be, bound)
	if err := bin2.Object(dest, ManagerPath).Call(ManagerInterface+".FlushEndpoints", 0).Err; errName(err) != ErrorBusy {
		t.Errorf("bin beyond its bound: %v, want Busy", err)
	}
	// Root: more than the per-user bound over several connections.
	const rootCalls = bound + 2
	for range rootCalls {
		bus.Dial(t).Object(dest, ManagerPath).Go(ManagerInterface+".FlushEndpoints", 0, replies)
	}
	waitEntered(t, be, rootCalls)
	close(be.gate)
	for range bound + rootCalls {
		if c := <-replies; c.Err != nil {
			t.Errorf("a call within the bounds: %v", c.Err)
		}
	}
}

// gatedPolkit is a fake polkit authority that says yes to everyone, but
// holds the checks of the names in hold until the gate opens, and counts
// the checks under way.
type gatedPolkit struct {
	mu      sync.Mutex
	hold    map[string]bool
	gate    chan struct{}
	delay   time.Duration // every check of a held name takes this long (instead of the gate)
	now     int           // checks of held names under way
	max     int           // the most checks of held names under way at once
	entered chan string   // the held checks (buffered: never drained in full)
}

func (p *gatedPolkit) decide(subject, _ string, _ uint32) (bool, bool) {
	p.mu.Lock()
	held, delay := p.hold[subject], p.delay
	if held {
		p.now++
		p.max = max(p.max, p.now)
	}
	p.mu.Unlock()
	if !held {
		return true, false
	}
	p.entered <- subject
	if delay > 0 {
		time.Sleep(delay)
	} else {
		<-p.gate
	}
	p.mu.Lock()
	p.now--
	p.mu.Unlock()
	return true, false
}

func (p *gatedPolkit) most() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.max
}

// TestAuthChecksPerUID checks the bound on the authorization checks of one
// user: with polkit slow to answer for nobody's ten connections, at most
// four of their checks reach polkit at once; the others wait for a turn
// and, when none comes in time, are answered Busy, while another user's
// check goes through at once. When the checks end in time, every call
// waits its turn and succeeds.
func TestAuthChecksPerUID(t *testing.T) {
	pmtest.RequireRoot(t)
	const conns = 10
	bound := DefaultMaxAuthChecksPerUID
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.Polkit())
	pk := &gatedPolkit{hold: map[string]bool{}, gate: make(chan struct{}), entered: make(chan string, 4*conns)}
	dbustest.StartFakePolkit(t, bus, pk.decide)

	t.Run("busy", func(t *testing.T) {
		be := newFakeBackend()
		withState(be)
		_, dest := startServer(t, bus, be, func(c *dbus.Conn) Options {
			return Options{Authorizer: NewAuthorizer(c, AuthOptions{}), authCheckWait: 500 * time.Millisecond}
		})
		clients := make([]*dbus.Conn, conns)
		pk.mu.Lock()
		for i := range clients {
			clients[i] = dialAs(t, bus, uidNobody, uidNobody)
			pk.hold[clients[i].Names()[0]] = true
		}
		pk.mu.Unlock()
		replies := make(chan *dbus.Call, conns)
		for _, c := range clients {
			c.Object(dest, ManagerPath).Go(ManagerInterface+".FlushEndpoints", 0, replies)
		}
		for range bound {
			select {
			case <-pk.entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the checks did not reach polkit")
			}
		}
		// The others wait, then are Busy.
		for i := range conns - bound {
			select {
			case c := <-replies:
				if errName(c.Err) != ErrorBusy || !containsAll(c.Err.Error(), "too many authorization checks in flight for uid 65534") {
					t.Errorf("a check beyond the bound: %v, want Busy", c.Err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%d of %d checks beyond the bound were answered", i, conns-bound)
			}
		}
		// Another user is checked at once.
		other := dialAs(t, bus, uidDaemon, uidDaemon)
		if err := other.Object(dest, ManagerPath).Call(ManagerInterface+".SetLimits", 0, uint32(1), uint32(1)).Err; err != nil {
			t.Errorf("another user: %v", err)
		}
		close(pk.gate)
		for range bound {
			if c := <-replies; c.Err != nil {
				t.Errorf("a check within the bound: %v", c.Err)
			}
		}
		if got := pk.most(); got != bound {
			t.Errorf("%d checks of nobody reached polkit at once, want %d", got, bound)
		}
		if got := len(be.takeCalls()); got != bound+1 {
			t.Errorf("the backend ran %d calls, want %d", got, bound+1)
		}
	})

	t.Run("wait", func(t *testing.T) {
		pk.mu.Lock()
		pk.max, pk.delay = 0, 100*time.Millisecond
		pk.mu.Unlock()
		be := newFakeBackend()
		withState(be)
		_, dest := startServer(t, bus, be, func(c *dbus.Conn) Options {
			return Options{Authorizer: NewAuthorizer(c, AuthOptions{})}
		})
		clients := make([]*dbus.Conn, conns)
		pk.mu.Lock()
		for i := range clients {
			clients[i] = dialAs(t, bus, uidNobody, uidNobody)
			pk.hold[clients[i].Names()[0]] = true
		}
		pk.mu.Unlock()
		replies := make(chan *dbus.Call, conns)
		for _, c := range clients {
			c.Object(dest, ManagerPath).Go(ManagerInterface+".FlushEndpoints", 0, replies)
		}
		for range conns {
			select {
			case c := <-replies:
				if c.Err != nil {
					t.Errorf("a check that waited its turn: %v", c.Err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the calls were not answered")
			}
		}
		if got := pk.most(); got > bound {
			t.Errorf("%d checks of nobody reached polkit at once, want at most %d", got, bound)
		}
	})
}

// TestUIDCache checks the cache of the senders' UIDs: a sender is asked
// about once, its UID is forgotten on request, a name that left the bus is
// an error and not kept, and nothing is kept without the departure watch.
func TestUIDCache(t *testing.T) {
	bus := dbustest.StartBus(t)
	c := &uidCache{conn: bus.Dial(t), m: make(map[string]*uidEntry)}
	client := bus.Dial(t)
	name := client.Names()[0]
	ctx := context.Background()
	want := busUID(t, client)

	if uid, err := c.lookup(ctx, name); err != nil || uid != want {
		t.Errorf("lookup = %d, %v; want %d", uid, err, want)
	}
	if c.size() != 0 {
		t.Error("an entry was kept without the departure watch")
	}
	c.keep.Store(true)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if uid, err := c.lookup(ctx, name); err != nil || uid != want {
				t.Errorf("lookup = %d, %v; want %d", uid, err, want)
			}
		})
	}
	wg.Wait()
	if !c.has(name) || c.size() != 1 {
		t.Errorf("the cache holds %d names, want %s", c.size(), name)
	}
	c.forget(name)
	if c.has(name) {
		t.Error("forget kept the name")
	}
	gone := bus.Dial(t)
	goneName := gone.Names()[0]
	gone.Close()
	if _, err := c.lookup(ctx, goneName); err == nil {
		t.Error("a departed name has a UID")
	}
	if c.has(goneName) {
		t.Error("the failed lookup was kept")
	}
}
