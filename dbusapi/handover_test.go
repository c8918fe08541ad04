package dbusapi

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// RevokeController makes the fake backend a ControllerRevoker.
func (f *fakeBackend) RevokeController(_ context.Context, c service.Caller) error {
	return f.record("RevokeController", c)
}

// controllerClient is a client that registers as the controller: it
// connects with an interceptor that records, in the order they arrive,
// the manager's PropertiesChanged and the Release calls it receives.
type controllerClient struct {
	conn *dbus.Conn
	path dbus.ObjectPath

	mu       sync.Mutex
	arrived  []string // "ControlMode=<mode>" or "Release(<reason>)"
	released chan string
}

// newControllerClient connects a controller client as uid (0: as this
// process), exporting Controller.Release at path.
func newControllerClient(t *testing.T, bus *dbustest.Bus, dest string, uid uint32, path dbus.ObjectPath) *controllerClient {
	t.Helper()
	cc := &controllerClient{path: path, released: make(chan string, 4)}
	if uid == 0 {
		conn, err := dbus.Connect(bus.Address(), dbus.WithIncomingInterceptor(cc.intercept))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		cc.conn = conn
	} else {
		cc.conn = dialAs(t, bus, uid, uid, dbus.WithIncomingInterceptor(cc.intercept))
	}
	err := cc.conn.ExportMethodTable(map[string]any{
		"Release": func(reason string) *dbus.Error {
			cc.released <- reason
			return nil
		},
	}, path, ControllerInterface)
	if err != nil {
		t.Fatal(err)
	}
	if err := cc.conn.AddMatchSignal(dbus.WithMatchObjectPath(ManagerPath), dbus.WithMatchInterface(propertiesInterface),
		dbus.WithMatchMember("PropertiesChanged")); err != nil {
		t.Fatal(err)
	}
	return cc
}

func (cc *controllerClient) intercept(msg *dbus.Message) {
	member, _ := msg.Headers[dbus.FieldMember].Value().(string)
	var what string
	switch {
	case msg.Type == dbus.TypeSignal && member == "PropertiesChanged" && len(msg.Body) > 1:
		changed, _ := msg.Body[1].(map[string]dbus.Variant)
		if v, ok := changed["ControlMode"]; ok {
			what = fmt.Sprint("ControlMode=", v.Value())
		}
	case msg.Type == dbus.TypeMethodCall && member == "Release" && len(msg.Body) == 1:
		what = fmt.Sprintf("Release(%v)", msg.Body[0])
	}
	if what != "" {
		cc.mu.Lock()
		cc.arrived = append(cc.arrived, what)
		cc.mu.Unlock()
	}
}

func (cc *controllerClient) order() []string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return append([]string(nil), cc.arrived...)
}

// nextRelease waits for a Release call.
func (cc *controllerClient) nextRelease(t *testing.T) string {
	t.Helper()
	select {
	case r := <-cc.released:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Release not received within 10s")
		return ""
	}
}

func (cc *controllerClient) call(dest, method string, args ...any) error {
	return cc.conn.Object(dest, ManagerPath).Call(ManagerInterface+"."+method, 0, args...).Err
}

// managerState returns ControlMode and Controller of the manager.
func managerState(t *testing.T, conn *dbus.Conn, dest string) (mode, controller string) {
	t.Helper()
	var props map[string]dbus.Variant
	if err := conn.Object(dest, ManagerPath).Call(propertiesInterface+".GetAll", 0, ManagerInterface).Store(&props); err != nil {
		t.Fatal(err)
	}
	mode, _ = props["ControlMode"].Value().(string)
	controller, _ = props["Controller"].Value().(string)
	return mode, controller
}

// serverRules returns how many match rules the server's connection srv
// has on the bus.
func serverRules(t *testing.T, bus *dbustest.Bus, srv *Server) uint32 {
	t.Helper()
	var stats map[string]dbus.Variant
	err := bus.Dial(t).Object("org.freedesktop.DBus", "/org/freedesktop/DBus").
		Call("org.freedesktop.DBus.Debug.Stats.GetConnectionStats", 0, srv.conn.Names()[0]).Store(&stats)
	if err != nil {
		t.Fatalf("GetConnectionStats: %v", err)
	}
	n, _ := stats["MatchRules"].Value().(uint32)
	return n
}

// TestRevokeController runs the service on a bus: an administrator's
// RevokeController ends the claim of a controller, which is then sent
// Release("revoked") after the change of ControlMode back to builtin; the
// watch of its name goes; a second revocation, or the revoked controller's
// UnregisterController, is NotController; and the controller may register
// again.
func TestRevokeController(t *testing.T) {
	bus := dbustest.StartBus(t)
	e := startService(t, bus, Options{})
	base := serverRules(t, bus, e.srv)
	ctl := newControllerClient(t, bus, e.dest, 0, "/org/example/ctl")
	admin := bus.Dial(t)

	if err := admin.Object(e.dest, ManagerPath).Call(ManagerInterface+".RevokeController", 0).Err; errName(err) != ErrorNotController ||
		!strings.Contains(err.Error(), "no controller is registered") {
		t.Errorf("RevokeController without a controller: %v, want NotController", err)
	}
	if err := ctl.call(e.dest, "RegisterController", ctl.path, map[string]dbus.Variant{}); err != nil {
		t.Fatal(err)
	}
	if mode, name := managerState(t, admin, e.dest); mode != "controller" || name != ctl.conn.Names()[0] {
		t.Fatalf("after RegisterController: %s %q", mode, name)
	}
	if got := serverRules(t, bus, e.srv); got != base+1 {
		t.Errorf("%d match rules while a controller is registered, want %d", got, base+1)
	}
	// The controller's own changes work; an administrator's do not.
	if err := admin.Object(e.dest, ManagerPath).Call(ManagerInterface+".SetLimits", 0, uint32(2), uint32(2)).Err; errName(err) != ErrorNotController {
		t.Errorf("SetLimits of the administrator while controlled: %v, want NotController", err)
	}

	if err := admin.Object(e.dest, ManagerPath).Call(ManagerInterface+".RevokeController", 0).Err; err != nil {
		t.Fatalf("RevokeController: %v", err)
	}
	// The claim is gone when the reply comes.
	if mode, name := managerState(t, admin, e.dest); mode != "builtin" || name != "" {
		t.Errorf("after RevokeController: %s %q, want builtin \"\"", mode, name)
	}
	if r := ctl.nextRelease(t); r != "revoked" {
		t.Errorf("Release(%q), want revoked", r)
	}
	// ... and the controller learnt that before Release.
	if got := ctl.order(); len(got) < 2 || got[len(got)-1] != "Release(revoked)" || got[len(got)-2] != "ControlMode=builtin" {
		t.Errorf("the controller received %v, want ControlMode=builtin then Release(revoked) last", got)
	}
	waitServerRules(t, bus, e.srv, base)
	if err := admin.Object(e.dest, ManagerPath).Call(ManagerInterface+".SetLimits", 0, uint32(2), uint32(2)).Err; err != nil {
		t.Errorf("SetLimits of the administrator after the revocation: %v", err)
	}

	if err := admin.Object(e.dest, ManagerPath).Call(ManagerInterface+".RevokeController", 0).Err; errName(err) != ErrorNotController {
		t.Errorf("a second RevokeController: %v, want NotController", err)
	}
	if err := ctl.call(e.dest, "UnregisterController", ctl.path); errName(err) != ErrorNotController {
		t.Errorf("UnregisterController of the revoked controller: %v, want NotController", err)
	}
	// A new claim, given back as usual (no Release).
	if err := ctl.call(e.dest, "RegisterController", ctl.path, map[string]dbus.Variant{}); err != nil {
		t.Fatalf("RegisterController after the revocation: %v", err)
	}
	if err := ctl.call(e.dest, "UnregisterController", ctl.path); err != nil {
		t.Errorf("UnregisterController: %v", err)
	}
	select {
	case r := <-ctl.released:
		t.Errorf("Release(%q) after UnregisterController", r)
	case <-time.After(200 * time.Millisecond):
	}
	waitServerRules(t, bus, e.srv, base)
}

func waitServerRules(t *testing.T, bus *dbustest.Bus, srv *Server, want uint32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := serverRules(t, bus, srv)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server has %d match rules, want %d", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRevokeControllerUnit checks the front end of RevokeController with
// the fake backend: the caller is authorized (interactively when it says
// so), the backend's refusal is the reply, and a backend that cannot
// revoke answers NotSupported.
func TestRevokeControllerUnit(t *testing.T) {
	auth := &allowAll{}
	h := newHarness(t, Options{Authorizer: auth}, withState)
	if _, err := h.call(ManagerPath, ManagerInterface+".RevokeController"); err != nil {
		t.Fatal(err)
	}
	if calls := h.be.takeCalls(); len(calls) != 1 || calls[0].Method != "RevokeController" || calls[0].Caller.Name != h.client.Names()[0] {
		t.Errorf("backend calls %v", calls)
	}
	if asks := auth.requests(); len(asks) != 1 || asks[0].Sender != h.client.Names()[0] {
		t.Errorf("authorization requests %v", asks)
	}
	h.be.setErr(fmt.Errorf("%w: revoke controller: no controller is registered", service.ErrNotController))
	if _, err := h.call(ManagerPath, ManagerInterface+".RevokeController"); errName(err) != ErrorNotController {
		t.Errorf("backend refusal: %v, want NotController", err)
	}
	h.be.setErr(nil)
	h = newHarness(t, Options{Authorizer: denyAll{}}, withState)
	if _, err := h.call(ManagerPath, ManagerInterface+".RevokeController"); errName(err) != ErrorPermissionDenied {
		t.Errorf("refused caller: %v, want PermissionDenied", err)
	}
	if calls := h.be.takeCalls(); len(calls) != 0 {
		t.Errorf("the backend ran %v for a refused caller", calls)
	}
	// A backend without RevokeController.
	type plainBackend struct{ Backend }
	bus := dbustest.StartBus(t)
	_, dest := startServer(t, bus, plainBackend{newFakeBackend()}, func(*dbus.Conn) Options { return Options{Authorizer: &allowAll{}} })
	if err := bus.Dial(t).Object(dest, ManagerPath).Call(ManagerInterface+".RevokeController", 0).Err; errName(err) != ErrorNotSupported {
		t.Errorf("a backend that cannot revoke: %v, want NotSupported", err)
	}
}

// TestControllerUnregistersWithoutAuthorization runs the service with the
// daemon's Authorizer and a fake polkit: a controller that polkit
// authorized once, and no longer does, can still give its claim up (and
// polkit is not asked), though every other change is refused; the
// exemption is for its own name and path only.
func TestControllerUnregistersWithoutAuthorization(t *testing.T) {
	pmtest.RequireRoot(t)
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.Polkit())
	pk := &fakePolkit{yes: map[string]bool{}}
	dbustest.StartFakePolkit(t, bus, pk.decide)
	e := startService(t, bus, Options{Authorizer: NewAuthorizer(bus.Dial(t), AuthOptions{})})
	ctl := newControllerClient(t, bus, e.dest, uidNobody, "/org/example/ctl")
	name := ctl.conn.Names()[0]
	other := dialAs(t, bus, uidNobody, uidNobody)
	otherName := other.Names()[0]
	unregister := func(conn *dbus.Conn, path dbus.ObjectPath) error {
		return conn.Object(e.dest, ManagerPath).Call(ManagerInterface+".UnregisterController", 0, path).Err
	}

	pk.set(func(p *fakePolkit) { p.yes[name] = true })
	if err := ctl.call(e.dest, "RegisterController", ctl.path, map[string]dbus.Variant{}); err != nil {
		t.Fatal(err)
	}
	if err := ctl.call(e.dest, "SetLimits", uint32(2), uint32(2)); err != nil {
		t.Errorf("SetLimits of the authorized controller: %v", err)
	}
	pk.take()
	// polkit no longer authorizes the controller (its temporary
	// authorization expired, a rule changed).
	pk.set(func(p *fakePolkit) { delete(p.yes, name) })
	if err := ctl.call(e.dest, "SetLimits", uint32(2), uint32(2)); errName(err) != ErrorPermissionDenied {
		t.Errorf("SetLimits of the controller polkit no longer authorizes: %v, want PermissionDenied", err)
	}
	// Not for another path, nor for another name of the same user.
	if err := unregister(ctl.conn, "/org/example/other"); errName(err) != ErrorPermissionDenied {
		t.Errorf("UnregisterController of another path: %v, want PermissionDenied", err)
	}
	if err := unregister(other, ctl.path); errName(err) != ErrorPermissionDenied {
		t.Errorf("UnregisterController by another name: %v, want PermissionDenied", err)
	}
	// An authorized caller who is not the controller: NotController.
	pk.set(func(p *fakePolkit) { p.yes[otherName] = true })
	if err := unregister(other, ctl.path); errName(err) != ErrorNotController {
		t.Errorf("UnregisterController by another authorized name: %v, want NotController", err)
	}
	asks := pk.take()
	if len(asks) != 4 {
		t.Errorf("polkit was asked %d times, want 4: %v", len(asks), asks)
	}
	if mode, _ := managerState(t, other, e.dest); mode != "controller" {
		t.Fatalf("the claim ended: %s", mode)
	}

	if err := unregister(ctl.conn, ctl.path); err != nil {
		t.Fatalf("UnregisterController of the controller polkit no longer authorizes: %v", err)
	}
	if asks := pk.take(); len(asks) != 0 {
		t.Errorf("polkit was asked about the controller's UnregisterController: %v", asks)
	}
	if mode, controller := managerState(t, other, e.dest); mode != "builtin" || controller != "" {
		t.Errorf("after UnregisterController: %s %q", mode, controller)
	}
	// The exemption went with the claim.
	if err := unregister(ctl.conn, ctl.path); errName(err) != ErrorPermissionDenied {
		t.Errorf("a second UnregisterController: %v, want PermissionDenied", err)
	}
}

// TestInteractiveAuthorizationRequired checks polkit's challenge with a
// fake authority that authorizes once the caller authenticated, which it
// can only do when the call allows interaction: without the flag the
// caller gets org.freedesktop.DBus.Error.InteractiveAuthorizationRequired
// and nothing runs; the same call with the flag is checked interactively
// and runs. A challenge that stands with interaction allowed (no agent,
// the person gave up) is PermissionDenied.
func TestInteractiveAuthorizationRequired(t *testing.T) {
	pmtest.RequireRoot(t)
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.Polkit())
	var (
		mu          sync.Mutex
		agentFails  bool
		interactive []uint32
	)
	dbustest.StartFakePolkit(t, bus, func(_, action string, flags uint32) (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		interactive = append(interactive, flags)
		if flags&1 != 0 && !agentFails {
			return true, false // authenticated
		}
		return false, true
	})
	takeFlags := func() []uint32 {
		mu.Lock()
		defer mu.Unlock()
		f := interactive
		interactive = nil
		return f
	}
	be, dest := authServer(t, bus, nil, nil)
	client := dialAs(t, bus, uidNobody, uidNobody)
	call := func(flags dbus.Flags) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return callRaw(ctx, client, dest, ManagerPath, ManagerInterface, "FlushEndpoints", flags).Err
	}

	err := call(0)
	if errName(err) != ErrorInteractiveAuthorizationRequired || !strings.Contains(err.Error(), "allowing interactive authorization") {
		t.Errorf("challenge without the flag: %v, want InteractiveAuthorizationRequired", err)
	}
	if f := takeFlags(); len(f) != 1 || f[0] != 0 {
		t.Errorf("polkit asked with flags %v, want [0]", f)
	}
	checkNothingRan(t, be)

	if err := call(dbus.FlagAllowInteractiveAuthorization); err != nil {
		t.Errorf("the same call allowing interaction: %v", err)
	}
	if f := takeFlags(); len(f) != 1 || f[0] != polkitAllowUserInteraction {
		t.Errorf("polkit asked with flags %v, want [1] (AllowUserInteraction)", f)
	}
	if methods, _ := backendCallers(be); len(methods) != 1 || methods[0] != "FlushEndpoints" {
		t.Errorf("the backend ran %v, want FlushEndpoints", methods)
	}

	mu.Lock()
	agentFails = true
	mu.Unlock()
	if err := call(dbus.FlagAllowInteractiveAuthorization); errName(err) != ErrorPermissionDenied {
		t.Errorf("a challenge that stands with interaction allowed: %v, want PermissionDenied", err)
	}
	checkNothingRan(t, be)
}

// TestErrorNameInteractive checks the error name of
// ErrInteractiveAuthorizationRequired, which is also a refusal.
func TestErrorNameInteractive(t *testing.T) {
	err := fmt.Errorf("%w: :1.5 needs to authenticate", ErrInteractiveAuthorizationRequired)
	if got := ErrorName(err); got != ErrorInteractiveAuthorizationRequired {
		t.Errorf("ErrorName = %s, want %s", got, ErrorInteractiveAuthorizationRequired)
	}
	if !errors.Is(err, service.ErrPermissionDenied) {
		t.Error("ErrInteractiveAuthorizationRequired is not a refusal (service.ErrPermissionDenied)")
	}
	if got := ErrorName(fmt.Errorf("%w: no", service.ErrPermissionDenied)); got != ErrorPermissionDenied {
		t.Errorf("ErrorName(PermissionDenied) = %s", got)
	}
}

// TestPolkitdRevokeAndChallenge runs the real polkitd with a rule that
// tells RevokeController apart by the detail "method": nobody may control
// paths but not revoke, daemon (uid 1) may revoke but not control, and bin
// (uid 2) must authenticate as an administrator. nobody registers and
// works as the controller; its RevokeController is refused; bin's
// non-interactive call is InteractiveAuthorizationRequired and, allowing
// interaction, PermissionDenied (no authentication agent); daemon's
// RevokeController ends nobody's claim, which is sent Release("revoked").
func TestPolkitdRevokeAndChallenge(t *testing.T) {
	pmtest.RequireRoot(t)
	for _, u := range []string{"nobody", "daemon", "bin"} {
		if _, err := user.Lookup(u); err != nil {
			pmtest.Unavailable(t, "needs the user %s: %v", u, err)
		}
	}
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.Polkit())
	dbustest.StartPolkitd(t, bus, []string{filepath.Join(root, "dist/polkit-1/actions/org.mptcp.pathmanager1.policy")}, `
polkit.addRule(function(action, subject) {
    if (action.id != "org.mptcp.pathmanager1.control") {
        return polkit.Result.NOT_HANDLED;
    }
    var revoke = action.lookup("method") == "RevokeController";
    if (subject.user == "nobody") {
        return revoke ? polkit.Result.NO : polkit.Result.YES;
    }
    if (subject.user == "daemon") {
        return revoke ? polkit.Result.YES : polkit.Result.NO;
    }
    if (subject.user == "bin") {
        return polkit.Result.AUTH_ADMIN;
    }
    return polkit.Result.NO;
});
`)
	e := startService(t, bus, Options{Authorizer: NewAuthorizer(bus.Dial(t), AuthOptions{})})
	ctl := newControllerClient(t, bus, e.dest, uidNobody, "/org/example/ctl")
	admin := dialAs(t, bus, uidDaemon, uidDaemon)
	bin := dialAs(t, bus, uidBin, uidBin)
	mgr := func(conn *dbus.Conn, flags dbus.Flags, method string, args ...any) error {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		return callRaw(ctx, conn, e.dest, ManagerPath, ManagerInterface, method, flags, args...).Err
	}

	if err := ctl.call(e.dest, "RegisterController", ctl.path, map[string]dbus.Variant{}); err != nil {
		t.Fatalf("nobody's RegisterController: %v", err)
	}
	if err := ctl.call(e.dest, "SetLimits", uint32(2), uint32(2)); err != nil {
		t.Errorf("nobody's SetLimits as the controller: %v", err)
	}
	if err := ctl.call(e.dest, "RevokeController"); errName(err) != ErrorPermissionDenied {
		t.Errorf("nobody's RevokeController: %v, want PermissionDenied", err)
	}
	if err := mgr(admin, 0, "SetLimits", uint32(2), uint32(2)); errName(err) != ErrorPermissionDenied {
		t.Errorf("daemon's SetLimits: %v, want PermissionDenied", err)
	}
	for _, m := range []string{"SetLimits", "RevokeController"} {
		args := []any{}
		if m == "SetLimits" {
			args = []any{uint32(2), uint32(2)}
		}
		if err := mgr(bin, 0, m, args...); errName(err) != ErrorInteractiveAuthorizationRequired {
			t.Errorf("bin's %s without the interactive flag: %v, want InteractiveAuthorizationRequired", m, err)
		}
		if err := mgr(bin, dbus.FlagAllowInteractiveAuthorization, m, args...); errName(err) != ErrorPermissionDenied {
			t.Errorf("bin's %s allowing interaction, without an agent: %v, want PermissionDenied", m, err)
		}
	}
	if mode, name := managerState(t, admin, e.dest); mode != "controller" || name != ctl.conn.Names()[0] {
		t.Fatalf("the claim did not stand: %s %q", mode, name)
	}

	if err := mgr(admin, 0, "RevokeController"); err != nil {
		t.Fatalf("daemon's RevokeController: %v", err)
	}
	if r := ctl.nextRelease(t); r != "revoked" {
		t.Errorf("Release(%q), want revoked", r)
	}
	if mode, name := managerState(t, admin, e.dest); mode != "builtin" || name != "" {
		t.Errorf("after RevokeController: %s %q", mode, name)
	}
}
