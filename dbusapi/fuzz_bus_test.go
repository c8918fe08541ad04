package dbusapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// serviceEnv is the real service loop on a fake kernel, exported by a
// Server on a private bus: the daemon without its kernel.
type serviceEnv struct {
	k      *pmtest.FakeKernel
	svc    *service.Service
	srv    *Server
	dest   string
	events chan pm.Event // the kernel's events, into the service loop
	pub    *forward
}

// forward lets the service be built before the Server it publishes to.
// It notes when each SubflowEvent is handed over.
type forward struct {
	service.Publisher

	mu        sync.Mutex
	published []time.Time // of the SubflowEvents
}

func (f *forward) Publish(n service.Notification) {
	if _, ok := n.(service.SubflowEvent); ok {
		f.mu.Lock()
		f.published = append(f.published, time.Now())
		f.mu.Unlock()
	}
	f.Publisher.Publish(n)
}

// takePublished returns when the SubflowEvents so far were published, and
// forgets them.
func (f *forward) takePublished() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.published
	f.published = nil
	return p
}

// fakeToken is the token of the connection startService makes.
const fakeToken = 0x1234

// startService starts the service with policy none on a fake kernel with
// two endpoints and one connection under the userspace path manager
// (object 1), and a Server for it, authorizing everyone, with opts.
func startService(t *testing.T, bus *dbustest.Bus, opts Options) *serviceEnv {
	t.Helper()
	e := &serviceEnv{k: pmtest.NewFakeKernel(), events: make(chan pm.Event, 1024)}
	for _, a := range []string{"10.55.1.1", "fd00:55:1::1"} {
		if _, err := e.k.AddEndpoint(pm.Address{Addr: netip.MustParseAddr(a), Flags: pm.FlagSubflow}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := service.DefaultConfig()
	cfg.Policy = service.PolicyNone
	pub := &forward{}
	e.pub = pub
	e.svc = service.New(cfg, service.Deps{
		Kernel:    e.k,
		Publisher: pub,
		Listeners: func(ap netip.AddrPort) (net.Listener, error) {
			t.Errorf("the service opened a listener on %s", ap)
			return nil, errors.New("no listeners in this test")
		},
		PathManager:    func() (string, error) { return "userspace", nil },
		SetPathManager: func(string) error { return errors.New("not in this test") },
		Version:        "test",
	})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- e.svc.Run(ctx, e.events, make(chan service.NetEvent)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("service: %v", err)
		}
	})
	if opts.Authorizer == nil {
		opts.Authorizer = &allowAll{}
	}
	e.srv, e.dest = startServer(t, bus, e.svc, func(*dbus.Conn) Options { return opts })
	pub.Publisher = e.srv // the loop publishes nothing before the first event

	for _, ev := range e.k.AddConnection(fakeToken, true, netip.MustParseAddrPort("10.55.0.2:40000"), netip.MustParseAddrPort("10.55.0.1:80")) {
		e.events <- ev
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		cs, err := e.svc.Connections(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == 1 && cs[0].State == service.StateEstablished {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the connection did not appear: %+v", cs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Its signals are sent from the emitter: out before the test watches.
	if !e.srv.em.flush(10 * time.Second) {
		t.Fatal("the start's signals were not sent within 10 s")
	}
	return e
}

// snapshot is the service's state as its front end sees it, and the kernel
// commands that changed something.
type snapshot struct {
	manager  service.Manager
	conns    []service.Connection
	mutating []string
}

func (e *serviceEnv) snapshot(t *testing.T) snapshot {
	t.Helper()
	ctx := context.Background()
	m, err := e.svc.Manager(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := e.svc.Connections(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var mut []string
	for _, c := range e.k.Calls() {
		if !strings.HasPrefix(c, "Endpoints") && !strings.HasPrefix(c, "Limits") {
			mut = append(mut, c)
		}
	}
	return snapshot{m, cs, mut}
}

// fuzzCase is a call that must fail, and the error it must fail with.
type fuzzCase struct {
	kind   string // what is wrong, for the statistics
	path   dbus.ObjectPath
	iface  string
	method string
	body   []any
	want   string // the D-Bus error name
}

// fuzzMethod is a method the fuzzer calls, with its input signature.
type fuzzMethod struct {
	path          dbus.ObjectPath
	iface, method string
	in            string
}

// fuzzMethods lists every method the server exports, with its signature.
func fuzzMethods(t *testing.T) []fuzzMethod {
	t.Helper()
	c1 := ConnectionPath(1)
	ms := []fuzzMethod{
		{ManagerPath, propertiesInterface, "Get", "ss"},
		{c1, propertiesInterface, "GetAll", "s"},
		{ManagerPath, propertiesInterface, "Set", "ssv"},
		{ManagerPath, introspectableInterface, "Introspect", ""},
		{c1, introspectableInterface, "Introspect", ""},
		{ManagerPath, objectManagerInterface, "GetManagedObjects", ""},
	}
	for _, i := range []struct {
		name string
		path dbus.ObjectPath
	}{{ManagerInterface, ManagerPath}, {ConnectionInterface, c1}} {
		for _, m := range lookup(t, i.name).Methods {
			ms = append(ms, fuzzMethod{i.path, i.name, m.Name, m.In()})
		}
	}
	return ms
}

// fuzzer makes invalid calls.
type fuzzer struct {
	r       *rand.Rand
	methods []fuzzMethod
}

// text returns a random short string of characters that addresses,
// interface names and option keys are made of, and others.
func (f *fuzzer) text() string {
	const alphabets = "0123456789.:abcdef%ABCDEF/ \t-_xyz[]\x01\u00e9\u4e16"
	runes := []rune(alphabets)
	n := f.r.IntN(48)
	var b strings.Builder
	for range n {
		b.WriteRune(runes[f.r.IntN(len(runes))])
	}
	return b.String()
}

// huge returns an ASCII string of 16 KiB to 128 KiB.
func (f *fuzzer) huge() string {
	n := 16<<10 + f.r.IntN(112<<10)
	unit := strconv.FormatUint(f.r.Uint64(), 36) + ".:%/"
	return strings.Repeat(unit, n/len(unit)+1)[:n]
}

// badAddress returns a text that is no unicast address, with or without a
// zone.
func (f *fuzzer) badAddress() string {
	switch f.r.IntN(6) {
	case 0:
		return []string{"0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "::ffff:255.255.255.255",
			"::%eth0", "ff02::1%eth0", "10.0.0.300", "10.0.0", "10.0.0.1/24", "10.0.0.1:80", "[fd00::1]", ""}[f.r.IntN(14)]
	case 1:
		return strings.Repeat("1", maxAddressText+1+f.r.IntN(100))
	case 2:
		return f.huge()
	default:
		for {
			s := f.text()
			if a, err := netip.ParseAddr(s); err != nil || a.IsUnspecified() || a.IsMulticast() {
				return s
			}
		}
	}
}

// goodAddress returns a valid unicast IPv4 address without zone.
func (f *fuzzer) goodAddress() string {
	return netip.AddrFrom4([4]byte{10, byte(f.r.IntN(256)), byte(f.r.IntN(256)), byte(1 + f.r.IntN(254))}).String()
}

// badInterface returns a text that is no interface name.
func (f *fuzzer) badInterface() string {
	switch f.r.IntN(4) {
	case 0:
		return []string{".", "..", "a/b", "eth:0", "eth 0", "tab\t", "nbsp\u00a0", "sixteen-bytes-xx"}[f.r.IntN(8)]
	case 1:
		return f.huge()
	default:
		return "if/" + f.text()
	}
}

// value returns a random D-Bus value of a random type.
func (f *fuzzer) value(depth int) any {
	switch k := f.r.IntN(16); {
	case k == 0:
		return uint8(f.r.Uint32())
	case k == 1:
		return f.r.IntN(2) == 0
	case k == 2:
		return int16(f.r.Uint32())
	case k == 3:
		return uint16(f.r.Uint32())
	case k == 4:
		return int32(f.r.Uint32())
	case k == 5:
		return f.r.Uint32()
	case k == 6:
		return int64(f.r.Uint64())
	case k == 7:
		return f.r.Uint64()
	case k == 8:
		return f.r.Float64() * 1e6
	case k == 9:
		return f.text()
	case k == 10:
		return dbus.ObjectPath("/" + strconv.Itoa(f.r.IntN(1000)))
	case k == 11:
		return []string{f.text(), f.text()}
	case k == 12:
		return []byte(f.text())
	case k == 13 && depth < 2:
		return map[string]dbus.Variant{f.text(): dbus.MakeVariant(f.value(depth + 1))}
	case k == 14 && depth < 2:
		return dbus.MakeVariant(f.value(depth + 1))
	default:
		return struct {
			A int32
			B string
		}{int32(f.r.Uint32()), f.text()}
	}
}

// wrongSignature calls a random method with a body of another signature.
func (f *fuzzer) wrongSignature() fuzzCase {
	m := f.methods[f.r.IntN(len(f.methods))]
	for {
		body := make([]any, f.r.IntN(6))
		for i := range body {
			body[i] = f.value(0)
		}
		if dbus.SignatureOf(body...).String() != m.in {
			return fuzzCase{"signature", m.path, m.iface, m.method, body, errorInvalidArgs}
		}
	}
}

// narrowed calls a method with arguments of types godbus would convert to
// the method's (a uint32 for a byte, a number for a string): the signature
// check must refuse them rather than let the truncated values through.
func (f *fuzzer) narrowed() fuzzCase {
	c1 := ConnectionPath(1)
	cases := []fuzzCase{
		{path: ManagerPath, iface: ManagerInterface, method: "RemoveEndpoint", body: []any{uint32(256 + 3)}},
		{path: ManagerPath, iface: ManagerInterface, method: "SetLimits", body: []any{uint64(1<<32 + 1), uint64(1)}},
		{path: ManagerPath, iface: ManagerInterface, method: "AddEndpoint", body: []any{"10.55.9.1", uint32(1<<16 + 80), []string{}, "", int32(259)}},
		{path: c1, iface: ConnectionInterface, method: "RemoveAddress", body: []any{int64(-255)}},
		{path: c1, iface: ConnectionInterface, method: "AnnounceAddress", body: []any{"10.55.9.1", int32(-1), uint8(1)}},
		{path: c1, iface: ConnectionInterface, method: "SetSubflowBackup", body: []any{"10.55.0.2", uint16(40000), "10.55.0.1", float64(80), true}},
		{path: ManagerPath, iface: ManagerInterface, method: "GetConnectionByToken", body: []any{int64(fakeToken)}},
		{path: ManagerPath, iface: ManagerInterface, method: "RegisterController", body: []any{"/not/typed/as/a/path", map[string]dbus.Variant{}}},
	}
	c := cases[f.r.IntN(len(cases))]
	c.kind, c.want = "narrowed type", errorInvalidArgs
	return c
}

// badValue calls a method with the right signature and an invalid value.
func (f *fuzzer) badValue() fuzzCase {
	c1 := ConnectionPath(1)
	inv := ErrorInvalidArguments
	good := f.goodAddress
	port := func() uint16 { return uint16(1 + f.r.IntN(65535)) }
	subflowOpt := func() map[string]dbus.Variant {
		known := map[string]any{"local_id": uint8(1), "local_port": uint16(1), "backup": true, "interface": "eth0"}
		opts := map[string]dbus.Variant{}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range known {
				if !yield(k) {
					return
				}
			}
		})
		if f.r.IntN(2) == 0 {
			opts[f.text()+"?"] = dbus.MakeVariant(f.value(0)) // an unknown key
		} else {
			k := keys[f.r.IntN(len(keys))]
			for {
				// godbus stores a variant in a variant as the inner one:
				// only the innermost value's type counts.
				v, inner := f.value(0), any(nil)
				for inner = v; ; {
					iv, ok := inner.(dbus.Variant)
					if !ok {
						break
					}
					inner = iv.Value()
				}
				if reflect.TypeOf(inner) != reflect.TypeOf(known[k]) {
					opts[k] = dbus.MakeVariant(v) // a known key of the wrong type
					break
				}
			}
		}
		return opts
	}
	switch f.r.IntN(20) {
	case 0:
		return fuzzCase{"address", ManagerPath, ManagerInterface, "AddEndpoint", []any{f.badAddress(), port(), []string{"subflow"}, "", uint8(0)}, inv}
	case 1:
		zone := []string{"fd00::1%eth0", "10.0.0.1%eth0", "fe80::1%" + f.badInterface(), "fe80::1%eth0"}[f.r.IntN(4)]
		iface := ""
		if strings.HasSuffix(zone, "%eth0") && strings.HasPrefix(zone, "fe80") {
			iface = "eth1" // contradicts the zone
		}
		return fuzzCase{"zone", ManagerPath, ManagerInterface, "AddEndpoint", []any{zone, port(), []string{}, iface, uint8(0)}, inv}
	case 2:
		return fuzzCase{"interface", ManagerPath, ManagerInterface, "AddEndpoint", []any{good(), port(), []string{}, f.badInterface(), uint8(0)}, inv}
	case 3:
		// Syntactically a name, but no such link: the service refuses it.
		return fuzzCase{"unknown interface", ManagerPath, ManagerInterface, "AddEndpoint", []any{good(), port(), []string{}, "nosuch" + strconv.Itoa(f.r.IntN(1000)), uint8(0)}, inv}
	case 4:
		flags := []string{"subflow", f.text() + "!"}
		switch f.r.IntN(3) {
		case 0:
			flags = make([]string, maxFlagWords+1+f.r.IntN(10000))
			for i := range flags {
				flags[i] = "backup"
			}
		case 1:
			flags = []string{f.huge()}
		}
		if f.r.IntN(2) == 0 {
			return fuzzCase{"flags", ManagerPath, ManagerInterface, "AddEndpoint", []any{good(), port(), flags, "", uint8(0)}, inv}
		}
		return fuzzCase{"flags", ManagerPath, ManagerInterface, "SetEndpointFlags", []any{uint8(1 + f.r.IntN(255)), flags}, inv}
	case 5:
		if f.r.IntN(2) == 0 {
			return fuzzCase{"id 0", ManagerPath, ManagerInterface, "RemoveEndpoint", []any{uint8(0)}, inv}
		}
		return fuzzCase{"id 0", ManagerPath, ManagerInterface, "SetEndpointFlags", []any{uint8(0), []string{"backup"}}, inv}
	case 6:
		opts := map[string]dbus.Variant{f.text(): dbus.MakeVariant(f.value(0))}
		return fuzzCase{"options", ManagerPath, ManagerInterface, "RegisterController", []any{dbus.ObjectPath("/ctl"), opts}, inv}
	case 7:
		return fuzzCase{"not controller", ManagerPath, ManagerInterface, "UnregisterController", []any{dbus.ObjectPath("/" + strconv.Itoa(f.r.IntN(100)))}, ErrorNotController}
	case 8:
		return fuzzCase{"address", c1, ConnectionInterface, "AnnounceAddress", []any{f.badAddress(), port(), uint8(f.r.IntN(256))}, inv}
	case 9:
		return fuzzCase{"zone", c1, ConnectionInterface, "AnnounceAddress", []any{"fe80::1%eth0", port(), uint8(0)}, inv}
	case 10:
		if f.r.IntN(2) == 0 {
			return fuzzCase{"address", c1, ConnectionInterface, "CreateSubflow", []any{f.badAddress(), good(), port(), map[string]dbus.Variant{}}, inv}
		}
		return fuzzCase{"address", c1, ConnectionInterface, "CreateSubflow", []any{good(), f.badAddress(), port(), map[string]dbus.Variant{}}, inv}
	case 11:
		return fuzzCase{"options", c1, ConnectionInterface, "CreateSubflow", []any{good(), good(), port(), subflowOpt()}, inv}
	case 12:
		opts := map[string]dbus.Variant{"interface": dbus.MakeVariant(f.badInterface())}
		return fuzzCase{"interface", c1, ConnectionInterface, "CreateSubflow", []any{good(), good(), port(), opts}, inv}
	case 13:
		if f.r.IntN(2) == 0 {
			return fuzzCase{"port 0", c1, ConnectionInterface, "CreateSubflow", []any{good(), good(), uint16(0), map[string]dbus.Variant{}}, inv}
		}
		return fuzzCase{"families", c1, ConnectionInterface, "CreateSubflow", []any{good(), "fd00::1", port(), map[string]dbus.Variant{}}, inv}
	case 14:
		method := []string{"RemoveSubflow", "SetSubflowBackup"}[f.r.IntN(2)]
		body := []any{f.badAddress(), port(), good(), port()}
		if f.r.IntN(2) == 0 {
			body[0], body[2] = good(), f.badAddress()
		}
		if method == "SetSubflowBackup" {
			body = append(body, true)
		}
		return fuzzCase{"address", c1, ConnectionInterface, method, body, inv}
	case 15:
		method := []string{"RemoveSubflow", "SetSubflowBackup"}[f.r.IntN(2)]
		body := []any{good(), port(), good(), uint16(0)}
		if method == "SetSubflowBackup" {
			body = append(body, false)
		}
		return fuzzCase{"port 0", c1, ConnectionInterface, method, body, inv}
	case 16:
		// A connection object that does not exist, by any method.
		path := []dbus.ObjectPath{ConnectionPath(uint64(2 + f.r.IntN(1000))), ConnectionsPath + "/01", ConnectionsPath + "/x", ConnectionsPath}[f.r.IntN(4)]
		return fuzzCase{"object", path, ConnectionInterface, "RemoveAddress", []any{uint8(1 + f.r.IntN(255))}, ErrorNotFound}
	case 17:
		return fuzzCase{"property", ManagerPath, propertiesInterface, "Get", []any{ManagerInterface, f.text() + "?"}, errorUnknownProperty}
	case 18:
		if f.r.IntN(2) == 0 {
			return fuzzCase{"read-only", c1, propertiesInterface, "Set", []any{ConnectionInterface, "Token", dbus.MakeVariant(f.value(0))}, errorReadOnly}
		}
		return fuzzCase{"interface", c1, propertiesInterface, "GetAll", []any{f.text() + ".X"}, errorUnknownInterface}
	default:
		return fuzzCase{"token", ManagerPath, ManagerInterface, "GetConnectionByToken", []any{f.r.Uint32() | 1<<31}, ErrorNotFound}
	}
}

func (f *fuzzer) next() fuzzCase {
	switch n := f.r.IntN(10); {
	case n < 3:
		return f.wrongSignature()
	case n < 4:
		return f.narrowed()
	default:
		return f.badValue()
	}
}

// TestFuzzMethodsOverBus throws thousands of malformed calls at every
// method of the server over a real bus connection, from several clients
// at once: wrong signatures, values godbus would narrow, malformed
// addresses and interface names, random option dictionaries, huge strings,
// unknown objects. Every call must answer the error its fault calls for;
// afterwards the server still answers, and the service's state, the
// kernel's and the signals show that nothing changed.
func TestFuzzMethodsOverBus(t *testing.T) {
	bus := dbustest.StartBus(t)
	e := startService(t, bus, Options{})
	watcher := bus.Dial(t)
	if err := watcher.AddMatchSignal(dbus.WithMatchSender(e.dest)); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *dbus.Signal, 64)
	watcher.Signal(sigs)
	before := e.snapshot(t)

	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("DBUSAPI_FUZZ_SEED"), 10, 64); err == nil {
		seed = s
	}
	const clients, perClient = 4, 1500
	t.Logf("seed %d (set DBUSAPI_FUZZ_SEED to repeat), %d calls", seed, clients*perClient)
	var (
		mu    sync.Mutex
		kinds = map[string]int{}
		names = map[string]int{}
		bad   int
		wg    sync.WaitGroup
		start = time.Now()
	)
	methods := fuzzMethods(t)
	for c := range clients {
		conn := bus.Dial(t)
		f := &fuzzer{r: rand.New(rand.NewPCG(seed, uint64(c))), methods: methods}
		wg.Go(func() {
			for range perClient {
				fc := f.next()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				call := callRaw(ctx, conn, e.dest, fc.path, fc.iface, fc.method, 0, fc.body...)
				cancel()
				got, msg := errName(call.Err), ""
				if call.Err != nil {
					msg = call.Err.Error()
				}
				mu.Lock()
				kinds[fc.kind]++
				names[got]++
				if got != fc.want || len(msg) > 1024 {
					bad++
					if bad <= 20 {
						t.Errorf("%s %s.%s %s (%s) %.200v: %q %.300q, want %s with a short message",
							fc.path, fc.iface, fc.method, dbus.SignatureOf(fc.body...), fc.kind, fc.body, got, msg, fc.want)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d calls in %v (%.0f calls/s); by fault: %v; by answer: %v",
		clients*perClient, elapsed.Round(time.Millisecond), float64(clients*perClient)/elapsed.Seconds(), kinds, names)

	// The server still answers, and nothing changed.
	var v string
	if err := watcher.Object(e.dest, ManagerPath).StoreProperty(ManagerInterface+".Version", &v); err != nil || v != "test" {
		t.Errorf("after the fuzzing: Version = %q, %v", v, err)
	}
	after := e.snapshot(t)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("the state changed:\nbefore %+v\nafter  %+v", before, after)
	}
	select {
	case s := <-sigs:
		t.Errorf("a signal was emitted: %s %v", s.Name, s.Body)
	default:
	}
}

// TestInvalidUTF8 checks what becomes of a string that is not UTF-8: godbus
// refuses to send it, and dbus-daemon drops a client that sends it anyway,
// so the server never sees one; it keeps answering.
func TestInvalidUTF8(t *testing.T) {
	bus := dbustest.StartBus(t)
	e := startService(t, bus, Options{})
	before := e.snapshot(t)
	conn := bus.Dial(t)
	call := callRaw(context.Background(), conn, e.dest, ManagerPath, ManagerInterface, "AddEndpoint", 0,
		"10.55.9.\xff", uint16(0), []string{}, "", uint8(0))
	var fe dbus.FormatError
	if !errors.As(call.Err, &fe) {
		t.Errorf("godbus sent a string that is not UTF-8: %v", call.Err)
	}

	// The same call, written to the bus's socket by hand.
	path, ok := strings.CutPrefix(strings.Split(bus.Address(), ",")[0], "unix:path=")
	if !ok {
		t.Fatalf("bus address %s is no unix path", bus.Address())
	}
	raw, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	rd := bufio.NewReader(raw)
	uid := hex.EncodeToString([]byte(strconv.Itoa(os.Getuid())))
	if _, err := io.WriteString(raw, "\x00AUTH EXTERNAL "+uid+"\r\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("AUTH: %q, %v", line, err)
	}
	io.WriteString(raw, "BEGIN\r\n")
	hello := rawMessage(t, 1, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
	const placeholder = "10.55.9.X"
	bad := rawMessage(t, 2, e.dest, ManagerPath, ManagerInterface, "AddEndpoint", placeholder, uint16(0), []string{}, "", uint8(0))
	i := bytes.Index(bad, []byte(placeholder))
	bad[i+len(placeholder)-1] = 0xff
	if _, err := raw.Write(append(hello, bad...)); err != nil {
		t.Fatal(err)
	}
	// The bus answers Hello, then drops the connection.
	if _, err := io.ReadAll(rd); err != nil {
		t.Errorf("the bus did not close the connection: %v", err)
	}

	if got := e.snapshot(t); !reflect.DeepEqual(before, got) {
		t.Errorf("the state changed: %+v", got)
	}
	var v string
	if err := conn.Object(e.dest, ManagerPath).StoreProperty(ManagerInterface+".Version", &v); err != nil {
		t.Errorf("the server no longer answers: %v", err)
	}
}

// rawMessage encodes a method call with the serial (godbus sets serials
// only on messages it sends itself).
func rawMessage(t *testing.T, serial uint32, dest string, path dbus.ObjectPath, iface, method string, body ...any) []byte {
	t.Helper()
	msg := &dbus.Message{Type: dbus.TypeMethodCall, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldDestination: dbus.MakeVariant(dest),
		dbus.FieldPath:        dbus.MakeVariant(path),
		dbus.FieldInterface:   dbus.MakeVariant(iface),
		dbus.FieldMember:      dbus.MakeVariant(method),
	}, Body: body}
	if len(body) > 0 {
		msg.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
	}
	var b bytes.Buffer
	if err := msg.EncodeTo(&b, binary.LittleEndian); err != nil {
		t.Fatal(err)
	}
	out := b.Bytes()
	binary.LittleEndian.PutUint32(out[8:12], serial)
	return out
}

// TestGuardSignature checks the signatures the guard expects, from the
// Go types of the methods.
func TestGuardSignature(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	for _, tc := range []struct {
		method string
		body   []any
		want   string
	}{
		{"SetLimits", []any{uint32(1), uint32(2)}, ""},
		{"SetLimits", []any{int32(1), uint32(2)}, errorInvalidArgs},
		{"SetLimits", []any{uint32(1)}, errorInvalidArgs},
		{"FlushEndpoints", nil, ""},
		{"FlushEndpoints", []any{true}, errorInvalidArgs},
		{"SetInterfacePreference", []any{"wwan0", "expensive"}, ""},
		{"SetInterfacePreference", []any{"wwan0", "default"}, ""},
		{"SetInterfacePreference", []any{"wwan0", "pricey"}, ErrorInvalidArguments},
		{"SetInterfacePreference", []any{"a/b", "cheap"}, ErrorInvalidArguments},
		{"SetInterfacePreference", []any{"", "cheap"}, ErrorInvalidArguments},
		{"SetInterfacePreference", []any{"wwan0"}, errorInvalidArgs},
		{"RemoveEndpoint", []any{uint32(259)}, errorInvalidArgs},
		{"RemoveEndpoint", []any{uint8(3)}, ""},
		{"GetConnectionByToken", []any{uint64(conn1.Token)}, errorInvalidArgs},
		{"GetConnectionByToken", []any{conn1.Token}, ""},
		{"RegisterController", []any{"/ctl", map[string]dbus.Variant{}}, errorInvalidArgs},
	} {
		call := callRaw(context.Background(), h.client, h.dest, ManagerPath, ManagerInterface, tc.method, 0, tc.body...)
		if got := errName(call.Err); got != tc.want {
			t.Errorf("%s%v: %q (%v), want %q", tc.method, tc.body, got, call.Err, tc.want)
		}
	}
	var got []string
	for _, c := range h.be.takeCalls() {
		got = append(got, fmt.Sprint(c.Method, c.Args))
	}
	if want := []string{"SetLimits[{1 2}]", "FlushEndpoints[]", "SetInterfacePreference[wwan0 expensive]",
		"SetInterfacePreference[wwan0 default]", "RemoveEndpoint[3]"}; !slices.Equal(got, want) {
		t.Errorf("backend calls %q, want %q", got, want)
	}
}
