package dbusapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/introspection"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// The test binary doubles as a bus client run under other users (setpriv):
// with childEnv set, TestMain makes every call of clientCalls and prints a
// childReport instead of running tests.
const (
	childEnv            = "DBUSAPI_TEST_CHILD"
	childDestEnv        = "DBUSAPI_TEST_DEST"
	childInteractiveEnv = "DBUSAPI_TEST_INTERACTIVE"
)

// childDir holds the copy of the test binary that children run: the go
// tool's build directory is not open to other users.
var (
	childOnce sync.Once
	childDir  string
	childErr  error
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	code := m.Run()
	if childDir != "" {
		os.RemoveAll(childDir)
	}
	os.Exit(code)
}

// childReport is what a child saw: its unique name and the outcome of each
// call.
type childReport struct {
	Name    string
	Results []childResult
}

type childResult struct {
	Call     string // "path interface.method"
	Mutating bool
	Error    string // the D-Bus error name; "" for success
	Message  string
}

// clientCall is a method call with valid arguments.
type clientCall struct {
	path     dbus.ObjectPath
	iface    string
	method   string
	args     []any
	mutating bool
}

func (c clientCall) String() string { return fmt.Sprintf("%s %s.%s", c.path, c.iface, c.method) }

// clientCalls are the calls a child makes: every read, then every mutating
// method of the Manager and Connection interfaces (on connection 1), each
// with arguments the fake backend accepts.
func clientCalls() []clientCall {
	c1 := ConnectionPath(conn1.ID)
	calls := []clientCall{
		{ManagerPath, objectManagerInterface, "GetManagedObjects", nil, false},
		{ManagerPath, propertiesInterface, "GetAll", []any{ManagerInterface}, false},
		{c1, propertiesInterface, "GetAll", []any{ConnectionInterface}, false},
		{ConnectionPath(conn2.ID), propertiesInterface, "GetAll", []any{ConnectionInterface}, false},
		{ManagerPath, ManagerInterface, "GetConnectionByToken", []any{conn1.Token}, false},
		{ManagerPath, ManagerInterface, "ListAddresses", nil, false},
		{ManagerPath, peerInterface, "Ping", nil, false},
	}
	for _, iface := range []struct {
		name string
		path dbus.ObjectPath
	}{{ManagerInterface, ManagerPath}, {ConnectionInterface, c1}} {
		i, _ := introspection.Lookup(iface.name)
		for _, p := range i.Properties {
			calls = append(calls, clientCall{iface.path, propertiesInterface, "Get", []any{iface.name, p.Name}, false})
		}
	}
	for _, p := range []dbus.ObjectPath{"/", "/org", "/org/mptcp", ManagerPath, ConnectionsPath, c1} {
		calls = append(calls, clientCall{p, introspectableInterface, "Introspect", nil, false})
	}
	noOpts := map[string]dbus.Variant{}
	for _, m := range []clientCall{
		{ManagerPath, ManagerInterface, "RegisterController", []any{dbus.ObjectPath("/org/example/ctl"), noOpts}, true},
		{ManagerPath, ManagerInterface, "UnregisterController", []any{dbus.ObjectPath("/org/example/ctl")}, true},
		{ManagerPath, ManagerInterface, "RevokeController", nil, true},
		{ManagerPath, ManagerInterface, "AddEndpoint", []any{"10.55.1.1", uint16(0), []string{"subflow"}, "", uint8(0)}, true},
		{ManagerPath, ManagerInterface, "RemoveEndpoint", []any{uint8(1)}, true},
		{ManagerPath, ManagerInterface, "SetEndpointFlags", []any{uint8(1), []string{"backup"}}, true},
		{ManagerPath, ManagerInterface, "FlushEndpoints", nil, true},
		{ManagerPath, ManagerInterface, "SetLimits", []any{uint32(2), uint32(2)}, true},
		{ManagerPath, ManagerInterface, "SetInterfacePreference", []any{"wwan0", "expensive"}, true},
		{ManagerPath, ManagerInterface, "GetStatistics", nil, false},
		{ManagerPath, ManagerInterface, "GetCounters", nil, false},
		{c1, ConnectionInterface, "GetStatistics", nil, false},
		{c1, ConnectionInterface, "AnnounceAddress", []any{"10.55.1.2", uint16(0), uint8(0)}, true},
		{c1, ConnectionInterface, "RemoveAddress", []any{uint8(5)}, true},
		{c1, ConnectionInterface, "CreateSubflow", []any{"10.55.1.2", "10.55.1.1", uint16(80), noOpts}, true},
		{c1, ConnectionInterface, "RemoveSubflow", []any{"10.55.0.2", uint16(8080), "10.55.0.1", uint16(40000)}, true},
		{c1, ConnectionInterface, "SetSubflowBackup", []any{"10.55.0.2", uint16(8080), "10.55.0.1", uint16(40000), true}, true},
	} {
		calls = append(calls, m)
	}
	return calls
}

// readMethods are the methods of the Manager and Connection interfaces
// that anyone may call.
var readMethods = []string{"GetConnectionByToken", "ListAddresses", "GetStatistics", "GetCounters"}

// TestClientCallsCoverContract checks that clientCalls has every method of
// the Manager and Connection interfaces, so that a new mutating method is
// not left out of the authorization tests.
func TestClientCallsCoverContract(t *testing.T) {
	have := map[string]bool{}
	for _, c := range clientCalls() {
		have[c.iface+"."+c.method] = c.mutating
	}
	for _, name := range []string{ManagerInterface, ConnectionInterface} {
		for _, m := range lookup(t, name).Methods {
			mutating, ok := have[name+"."+m.Name]
			if !ok {
				t.Errorf("clientCalls lacks %s.%s", name, m.Name)
			}
			if read := slices.Contains(readMethods, m.Name); mutating == read {
				t.Errorf("%s.%s: mutating = %v", name, m.Name, mutating)
			}
		}
	}
}

// callRaw calls a method with a message made by hand: any flags (godbus's
// Call drops ALLOW_INTERACTIVE_AUTHORIZATION) and any body, whose signature
// is the body's.
func callRaw(ctx context.Context, conn *dbus.Conn, dest string, path dbus.ObjectPath, iface, method string, flags dbus.Flags, body ...any) *dbus.Call {
	msg := &dbus.Message{
		Type:  dbus.TypeMethodCall,
		Flags: flags,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldDestination: dbus.MakeVariant(dest),
			dbus.FieldPath:        dbus.MakeVariant(path),
			dbus.FieldInterface:   dbus.MakeVariant(iface),
			dbus.FieldMember:      dbus.MakeVariant(method),
		},
		Body: body,
	}
	if len(body) > 0 {
		msg.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
	}
	call := conn.SendWithContext(ctx, msg, make(chan *dbus.Call, 1))
	select {
	case <-call.Done:
	case <-ctx.Done():
		call.Err = ctx.Err()
	}
	return call
}

// childMain is the child's main: it makes every call of clientCalls to the
// service at $DBUS_SYSTEM_BUS_ADDRESS and prints a childReport as JSON.
func childMain() int {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	defer conn.Close()
	var flags dbus.Flags
	if os.Getenv(childInteractiveEnv) != "" {
		flags = dbus.FlagAllowInteractiveAuthorization
	}
	rep := childReport{Name: conn.Names()[0]}
	for _, c := range clientCalls() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		call := callRaw(ctx, conn, os.Getenv(childDestEnv), c.path, c.iface, c.method, flags, c.args...)
		cancel()
		r := childResult{Call: c.String(), Mutating: c.mutating}
		if call.Err != nil {
			r.Error, r.Message = errName(call.Err), call.Err.Error()
			if r.Error == "" {
				r.Error = "local: " + call.Err.Error()
			}
		}
		rep.Results = append(rep.Results, r)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		return 2
	}
	return 0
}

// childBinary returns a copy of the test binary that every user may run.
func childBinary(t *testing.T) string {
	t.Helper()
	childOnce.Do(func() {
		var self string
		if self, childErr = os.Executable(); childErr != nil {
			return
		}
		if childDir, childErr = os.MkdirTemp("", "dbusapi-child-"); childErr != nil {
			return
		}
		if childErr = os.Chmod(childDir, 0o755); childErr != nil {
			return
		}
		childErr = copyFile(filepath.Join(childDir, "child"), self, 0o755)
	})
	if childErr != nil {
		t.Fatalf("copy the test binary for a child: %v", childErr)
	}
	return filepath.Join(childDir, "child")
}

func copyFile(dst, src string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// child is who a child runs as.
type child struct {
	uid, gid    uint32
	groups      []uint32 // supplementary
	interactive bool     // calls allow interactive authorization
}

// run runs a child against the service at dest on bus and returns its
// report.
func (c child) run(t *testing.T, bus *dbustest.Bus, dest string) childReport {
	t.Helper()
	cmd := bus.CommandAsGroups(t, c.uid, c.gid, c.groups, childBinary(t))
	cmd.Env = append(cmd.Env, childEnv+"=1", childDestEnv+"="+dest)
	if c.interactive {
		cmd.Env = append(cmd.Env, childInteractiveEnv+"=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child uid %d: %v\n%s", c.uid, err, stderr.String())
	}
	var rep childReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("child uid %d: %v in %q", c.uid, err, out)
	}
	if len(rep.Results) != len(clientCalls()) {
		t.Fatalf("child uid %d made %d calls, want %d", c.uid, len(rep.Results), len(clientCalls()))
	}
	return rep
}

// expect checks a child's report: every read succeeded, and every mutating
// call answered mutatingErr ("" = success). It returns the mutating calls'
// error messages.
func (rep childReport) expect(t *testing.T, who, mutatingErr string) []string {
	t.Helper()
	var msgs []string
	for _, r := range rep.Results {
		want := ""
		if r.Mutating {
			want = mutatingErr
			msgs = append(msgs, r.Message)
		}
		if r.Error != want {
			t.Errorf("%s: %s: %q (%s), want %q", who, r.Call, r.Error, r.Message, want)
		}
	}
	return msgs
}

// startServer starts a Server for backend on bus, with the options opts
// returns for the server's own connection. As root it takes the service
// name; as another user (whom the bus policy does not let own it) it only
// loads the state. It returns the server and where clients send to.
func startServer(t *testing.T, bus *dbustest.Bus, be Backend, opts func(*dbus.Conn) Options) (*Server, string) {
	t.Helper()
	conn := dialServer(t, bus)
	o := opts(conn)
	if o.Stats == nil {
		o.Stats = fakeStats{}
	}
	if o.Counters == nil {
		o.Counters = fakeCounters
	}
	srv, err := New(conn, be, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if os.Geteuid() != 0 {
		if err := srv.load(ctx); err != nil {
			t.Fatal(err)
		}
		return srv, conn.Names()[0]
	}
	if err := srv.RequestName(ctx); err != nil {
		t.Fatal(err)
	}
	return srv, BusName
}

// authServer starts a server with the fake backend (withState) and
// NewAuthorizer's Authorizer with the groups, logging to log.
func authServer(t *testing.T, bus *dbustest.Bus, groups []string, log *slog.Logger) (*fakeBackend, string) {
	t.Helper()
	be := newFakeBackend()
	withState(be)
	_, dest := startServer(t, bus, be, func(c *dbus.Conn) Options {
		return Options{Authorizer: NewAuthorizer(c, AuthOptions{Groups: groups, Logger: log})}
	})
	return be, dest
}

// backendCallers returns the methods the backend ran, with the callers'
// names and UIDs, and forgets them.
func backendCallers(be *fakeBackend) (methods []string, callers []service.Caller) {
	for _, c := range be.takeCalls() {
		methods = append(methods, c.Method)
		callers = append(callers, c.Caller)
	}
	return methods, callers
}

// mutatingMethods are the backend methods clientCalls' mutating calls run,
// in order.
var mutatingMethods = []string{
	"RegisterController", "UnregisterController", "RevokeController", "AddEndpoint", "RemoveEndpoint", "SetEndpointFlags",
	"FlushEndpoints", "SetLimits", "SetInterfacePreference", "AnnounceAddress", "RemoveAddress", "CreateSubflow", "RemoveSubflow", "SetSubflowBackup",
}

// checkAllowed checks that the backend ran every mutating call of the
// child, for the child.
func checkAllowed(t *testing.T, be *fakeBackend, rep childReport, uid uint32) {
	t.Helper()
	methods, callers := backendCallers(be)
	if !slices.Equal(methods, mutatingMethods) {
		t.Errorf("backend ran %v, want %v", methods, mutatingMethods)
	}
	for _, c := range callers {
		if c.Name != rep.Name || c.UID != uid {
			t.Errorf("backend caller %+v, want %s uid %d", c, rep.Name, uid)
			break
		}
	}
}

// checkNothingRan checks that the backend ran nothing.
func checkNothingRan(t *testing.T, be *fakeBackend) {
	t.Helper()
	if methods, _ := backendCallers(be); len(methods) != 0 {
		t.Errorf("the backend ran %v", methods)
	}
}

// usersGID returns the gid of the group "users" (100 on Debian), skipping
// the test without it.
func usersGID(t *testing.T) uint32 {
	t.Helper()
	g, err := user.LookupGroup("users")
	if err != nil {
		pmtest.Unavailable(t, "needs the group users (gid 100 on Debian): %v", err)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(gid)
}

// syncWriter is an io.Writer for a logger, safe for concurrent use.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestAuthorizationByUser runs clients as other users (setpriv) against
// the daemon's Authorizer on a bus with the project's and the system's
// policy, without polkit: everyone can read everything; root and members
// of an allowed group, primary or supplementary, can call every mutating
// method; anyone else gets PermissionDenied from every one of them, and
// the backend runs nothing.
func TestAuthorizationByUser(t *testing.T) {
	pmtest.RequireRoot(t)
	users := usersGID(t)
	const nobody, nogroup = 65534, 65534
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.Polkit())
	logw := &syncWriter{}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	be, dest := authServer(t, bus, []string{"users", "4242"}, log)

	t.Run("nobody", func(t *testing.T) {
		rep := child{uid: nobody, gid: nogroup}.run(t, bus, dest)
		for _, m := range rep.expect(t, "nobody", ErrorPermissionDenied) {
			if !strings.Contains(m, "polkit could not be asked") {
				t.Errorf("refusal %q does not say polkit could not be asked", m)
			}
		}
		checkNothingRan(t, be)
		// polkit's absence is logged once as a warning, then at debug.
		if n := strings.Count(logw.String(), "level=WARN msg=\"dbusapi: polkit is not available"); n != 1 {
			t.Errorf("polkit's absence warned about %d times, want 1:\n%s", n, logw.String())
		}
		if n := strings.Count(logw.String(), "level=DEBUG msg=\"dbusapi: polkit is not available"); n != len(mutatingMethods)-1 {
			t.Errorf("polkit's absence logged at debug %d times, want %d", n, len(mutatingMethods)-1)
		}
	})
	t.Run("other group", func(t *testing.T) {
		rep := child{uid: nobody, gid: nogroup, groups: []uint32{nogroup, 4243}}.run(t, bus, dest)
		rep.expect(t, "nobody in other groups", ErrorPermissionDenied)
		checkNothingRan(t, be)
	})
	t.Run("root", func(t *testing.T) {
		rep := child{uid: 0, gid: 0}.run(t, bus, dest)
		rep.expect(t, "root", "")
		checkAllowed(t, be, rep, 0)
	})
	t.Run("primary group", func(t *testing.T) {
		rep := child{uid: nobody, gid: users}.run(t, bus, dest)
		rep.expect(t, "nobody with primary group users", "")
		checkAllowed(t, be, rep, nobody)
	})
	t.Run("supplementary group", func(t *testing.T) {
		rep := child{uid: nobody, gid: nogroup, groups: []uint32{4242}}.run(t, bus, dest)
		rep.expect(t, "nobody in group 4242", "")
		checkAllowed(t, be, rep, nobody)
	})
}

// polkitAsk is one CheckAuthorization the fake polkit received.
type polkitAsk struct {
	Subject, Action string
	Flags           uint32
}

// fakePolkit decides for a fake polkit authority: yes for the subjects in
// yes, or for everyone if all is set; for the others, a challenge if
// challenge is set, else no. It records what it is asked.
type fakePolkit struct {
	mu        sync.Mutex
	asks      []polkitAsk
	yes       map[string]bool
	all       bool
	challenge bool
}

func (p *fakePolkit) decide(subject, action string, flags uint32) (bool, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asks = append(p.asks, polkitAsk{subject, action, flags})
	ok := p.all || p.yes[subject]
	return ok, p.challenge && !ok
}

func (p *fakePolkit) set(f func(p *fakePolkit)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *fakePolkit) take() []polkitAsk {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.asks
	p.asks = nil
	return a
}

// TestAuthorizationPolkit runs clients as nobody against the daemon's
// Authorizer with a fake polkit authority on the bus: polkit's yes lets
// every mutating call through and its no refuses every one; polkit is
// asked once per mutating call, never for a read, about the caller's bus
// name, for the action org.mptcp.pathmanager1.control, with user
// interaction allowed exactly when the caller allowed it.
func TestAuthorizationPolkit(t *testing.T) {
	pmtest.RequireRoot(t)
	const nobody = 65534
	bus := dbustest.StartBus(t, dbustest.SystemDefaults(), dbustest.Polkit())
	pk := &fakePolkit{}
	dbustest.StartFakePolkit(t, bus, pk.decide)
	be, dest := authServer(t, bus, nil, nil)

	checkAsks := func(t *testing.T, rep childReport, flags uint32) {
		t.Helper()
		asks := pk.take()
		if len(asks) != len(mutatingMethods) {
			t.Errorf("polkit was asked %d times, want %d (once per mutating call)", len(asks), len(mutatingMethods))
		}
		for _, a := range asks {
			if a != (polkitAsk{rep.Name, PolkitAction, flags}) {
				t.Errorf("polkit asked %+v, want subject %s, action %s, flags %d", a, rep.Name, PolkitAction, flags)
				break
			}
		}
	}
	t.Run("no", func(t *testing.T) {
		rep := child{uid: nobody, gid: nobody}.run(t, bus, dest)
		for _, m := range rep.expect(t, "nobody, polkit says no", ErrorPermissionDenied) {
			if !strings.Contains(m, "polkit does not authorize") {
				t.Errorf("refusal %q does not name polkit", m)
			}
		}
		checkAsks(t, rep, 0)
		checkNothingRan(t, be)
	})
	t.Run("challenge", func(t *testing.T) {
		pk.set(func(p *fakePolkit) { p.challenge = true })
		defer pk.set(func(p *fakePolkit) { p.challenge = false })
		rep := child{uid: nobody, gid: nobody}.run(t, bus, dest)
		// Since item 5 of the control hand-over work: a challenge to a call
		// without ALLOW_INTERACTIVE_AUTHORIZATION is the standard
		// InteractiveAuthorizationRequired (it was PermissionDenied).
		for _, m := range rep.expect(t, "nobody, polkit wants authentication", ErrorInteractiveAuthorizationRequired) {
			if !strings.Contains(m, "allowing interactive authorization") {
				t.Errorf("refusal %q does not suggest interactive authorization", m)
			}
		}
		checkAsks(t, rep, 0)
		checkNothingRan(t, be)
		rep = child{uid: nobody, gid: nobody, interactive: true}.run(t, bus, dest)
		rep.expect(t, "nobody, interactive, authentication failed", ErrorPermissionDenied)
		checkAsks(t, rep, 1)
		checkNothingRan(t, be)
	})
	t.Run("yes", func(t *testing.T) {
		// The child's name is known only once it runs: polkit says yes to
		// everyone (the daemon asks only about its callers).
		pk.set(func(p *fakePolkit) { p.all = true })
		for _, interactive := range []bool{false, true} {
			rep := child{uid: nobody, gid: nobody, interactive: interactive}.run(t, bus, dest)
			rep.expect(t, "nobody, polkit says yes", "")
			var flags uint32
			if interactive {
				flags = 1
			}
			checkAsks(t, rep, flags)
			checkAllowed(t, be, rep, nobody)
		}
	})
}

// TestAuthorizationPolkitd runs the real polkitd on the bus with the
// project's action file and a rule that says yes to nobody, no to daemon
// (uid 1) and asks bin (uid 2) to authenticate as an administrator:
// nobody can call every mutating method, daemon and bin none, and bin is
// told that interactive authorization might help
// (InteractiveAuthorizationRequired).
func TestAuthorizationPolkitd(t *testing.T) {
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
    if (subject.user == "nobody") {
        return polkit.Result.YES;
    }
    if (subject.user == "bin") {
        return polkit.Result.AUTH_ADMIN;
    }
    return polkit.Result.NO;
});
`)
	be, dest := authServer(t, bus, nil, nil)

	rep := child{uid: 65534, gid: 65534}.run(t, bus, dest)
	rep.expect(t, "nobody, polkitd says yes", "")
	checkAllowed(t, be, rep, 65534)

	rep = child{uid: 1, gid: 1}.run(t, bus, dest)
	for _, m := range rep.expect(t, "daemon, polkitd says no", ErrorPermissionDenied) {
		if !strings.Contains(m, "polkit does not authorize") {
			t.Errorf("refusal %q does not name polkit", m)
		}
	}
	checkNothingRan(t, be)

	rep = child{uid: 2, gid: 2}.run(t, bus, dest)
	// A challenge without the interactive flag: InteractiveAuthorizationRequired
	// (PermissionDenied before the contract named the standard error).
	for _, m := range rep.expect(t, "bin, polkitd wants authentication", ErrorInteractiveAuthorizationRequired) {
		if !strings.Contains(m, "allowing interactive authorization") {
			t.Errorf("refusal %q does not suggest interactive authorization", m)
		}
	}
	checkNothingRan(t, be)
}

// TestAuthorizerDirect asks NewAuthorizer's Authorizer about a client of a
// private bus, with a fake polkit. It runs as any user.
func TestAuthorizerDirect(t *testing.T) {
	bus := dbustest.StartBus(t)
	client := bus.Dial(t)
	me := client.Names()[0]
	ctx := context.Background()
	gid := uint32(os.Getgid())

	// Without polkit: root, and the caller's own groups when allowed.
	auth := NewAuthorizer(bus.Dial(t), AuthOptions{Logger: slog.New(slog.DiscardHandler)})
	if err := auth.Authorize(ctx, me, 0, false); err != nil {
		t.Errorf("uid 0: %v", err)
	}
	err := auth.Authorize(ctx, me, 1000, false)
	if !errors.Is(err, service.ErrPermissionDenied) || !strings.Contains(err.Error(), me) {
		t.Errorf("uid 1000 without polkit: %v, want PermissionDenied naming %s", err, me)
	}
	auth = NewAuthorizer(bus.Dial(t), AuthOptions{Groups: []string{"no-such-group-here", strconv.Itoa(int(gid))}, Logger: slog.New(slog.DiscardHandler)})
	if err := auth.Authorize(ctx, me, 1000, false); err != nil {
		t.Errorf("member of the allowed group %d: %v", gid, err)
	}
	// A reload that drops the group takes effect at once, and one that
	// brings it back too.
	auth.SetGroups(nil)
	if err := auth.Authorize(ctx, me, 1000, false); !errors.Is(err, service.ErrPermissionDenied) {
		t.Errorf("after SetGroups(nil): %v, want PermissionDenied", err)
	}
	auth.SetGroups([]string{strconv.Itoa(int(gid))})
	if err := auth.Authorize(ctx, me, 1000, false); err != nil {
		t.Errorf("after SetGroups(%d): %v", gid, err)
	}
	// A name that left the bus has no credentials: no group check, no
	// polkit, refused.
	gone := bus.Dial(t)
	goneName := gone.Names()[0]
	gone.Close()
	if err := auth.Authorize(ctx, goneName, 1000, false); !errors.Is(err, service.ErrPermissionDenied) {
		t.Errorf("a departed caller: %v, want PermissionDenied", err)
	}

	// With a fake polkit that says yes to me only.
	pk := &fakePolkit{yes: map[string]bool{me: true}}
	dbustest.StartFakePolkit(t, bus, pk.decide)
	auth = NewAuthorizer(bus.Dial(t), AuthOptions{Groups: []string{"4242"}})
	for _, interactive := range []bool{false, true} {
		if err := auth.Authorize(ctx, me, 1000, interactive); err != nil {
			t.Errorf("polkit yes (interactive %v): %v", interactive, err)
		}
	}
	other := bus.Dial(t).Names()[0]
	if err := auth.Authorize(ctx, other, 1000, false); !errors.Is(err, service.ErrPermissionDenied) {
		t.Errorf("polkit no: %v, want PermissionDenied", err)
	}
	want := []polkitAsk{{me, PolkitAction, 0}, {me, PolkitAction, 1}, {other, PolkitAction, 0}}
	if got := pk.take(); !slices.Equal(got, want) {
		t.Errorf("polkit was asked %+v, want %+v", got, want)
	}
	// Root needs no polkit.
	if err := auth.Authorize(ctx, other, 0, false); err != nil || len(pk.take()) != 0 {
		t.Errorf("uid 0: %v, or polkit was asked", err)
	}
}

// TestCallerGroups checks the groups of a caller: from the bus's
// credentials when it gives them, else the user's from the group database.
func TestCallerGroups(t *testing.T) {
	gids, err := callerGroups(map[string]dbus.Variant{
		"UnixUserID": dbus.MakeVariant(uint32(5)), "UnixGroupIDs": dbus.MakeVariant([]uint32{5, 100}),
	}, 5)
	if err != nil || !slices.Equal(gids, []uint32{5, 100}) {
		t.Errorf("from credentials: %v, %v", gids, err)
	}
	if _, err := callerGroups(map[string]dbus.Variant{"UnixGroupIDs": dbus.MakeVariant("100")}, 5); err == nil {
		t.Error("UnixGroupIDs of the wrong type accepted")
	}

	me, err := user.Current()
	if err != nil {
		t.Skip(err)
	}
	uid, _ := strconv.ParseUint(me.Uid, 10, 32)
	ids, err := me.GroupIds()
	if err != nil {
		t.Skip(err)
	}
	var want []uint32
	for _, id := range ids {
		g, _ := strconv.ParseUint(id, 10, 32)
		want = append(want, uint32(g))
	}
	gids, err = callerGroups(map[string]dbus.Variant{"UnixUserID": dbus.MakeVariant(uint32(uid))}, uint32(uid))
	if err != nil || !slices.Equal(gids, want) {
		t.Errorf("from the group database: %v, %v; want %v", gids, err, want)
	}
	if _, err := callerGroups(map[string]dbus.Variant{"UnixUserID": dbus.MakeVariant(uint32(uid) + 1)}, uint32(uid)); err == nil {
		t.Error("a uid that contradicts the bus accepted")
	}
}

func TestLookupGroup(t *testing.T) {
	if gid, err := lookupGroup("4242"); err != nil || gid != 4242 {
		t.Errorf("lookupGroup(4242) = %d, %v", gid, err)
	}
	if gid, err := lookupGroup("root"); err != nil || gid != 0 {
		t.Errorf("lookupGroup(root) = %d, %v", gid, err)
	}
	if _, err := lookupGroup("no-such-group-here"); err == nil {
		t.Error("an unknown group resolved")
	}
	if _, err := lookupGroup("4294967296"); err == nil {
		t.Error("a gid beyond 32 bits resolved")
	}
}
