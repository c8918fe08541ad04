package dbusapi

import (
	"encoding/json"
	"encoding/xml"
	"maps"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/mptcp-pmd/mptcp-pmd/introspection"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

var (
	typeMessage = reflect.TypeFor[dbus.Message]()
	typeSender  = reflect.TypeFor[dbus.Sender]()
	typeError   = reflect.TypeFor[*dbus.Error]()
)

// tableSignatures returns the D-Bus signatures ("in->out") of a method
// table as godbus exports it: Message and Sender parameters are not on the
// wire, the trailing *dbus.Error is the error.
func tableSignatures(t *testing.T, table map[string]any) map[string]string {
	t.Helper()
	out := make(map[string]string, len(table))
	for name, fn := range table {
		ft := reflect.TypeOf(fn)
		if ft.Kind() != reflect.Func || ft.NumOut() == 0 || ft.Out(ft.NumOut()-1) != typeError {
			t.Errorf("%s is %v: godbus would not export it", name, ft)
			continue
		}
		var in, res strings.Builder
		for i := range ft.NumIn() {
			if p := ft.In(i); p != typeMessage && p != typeSender {
				in.WriteString(dbus.SignatureOfType(p).String())
			}
		}
		for i := range ft.NumOut() - 1 {
			res.WriteString(dbus.SignatureOfType(ft.Out(i)).String())
		}
		out[name] = in.String() + "->" + res.String()
	}
	return out
}

func xmlMethods(i introspection.Interface) map[string]string {
	out := make(map[string]string, len(i.Methods))
	for _, m := range i.Methods {
		out[m.Name] = m.In() + "->" + m.Out()
	}
	return out
}

func lookup(t *testing.T, name string) introspection.Interface {
	t.Helper()
	i, err := introspection.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// argValue returns a valid value of an argument's type for a call that the
// fake backend accepts.
func argValue(t *testing.T, a introspection.Arg) any {
	t.Helper()
	switch a.Type {
	case "s":
		switch {
		case strings.Contains(a.Name, "address"):
			return "10.55.0.1"
		case a.Name == "interface":
			return "wwan0"
		}
		return ""
	case "o":
		return dbus.ObjectPath("/ctl")
	case "y":
		return uint8(1)
	case "q":
		return uint16(1)
	case "u":
		if a.Name == "token" {
			return conn1.Token
		}
		return uint32(1)
	case "b":
		return false
	case "as":
		return []string{}
	case "a{sv}":
		return map[string]dbus.Variant{}
	}
	t.Fatalf("argument %s: no test value for type %s", a.Name, a.Type)
	return nil
}

// decodedSignature is the signature of a reply of D-Bus type sig as godbus
// decodes it without a target: a struct becomes a []any ("av"). (The
// method tables' signatures, compared exactly, cover the structs' members.)
func decodedSignature(sig string) string {
	var b strings.Builder
	depth := 0
	for _, r := range sig {
		switch {
		case r == '(':
			if depth == 0 {
				b.WriteString("av")
			}
			depth++
		case r == ')':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestIntrospectionDrift fails when what the server exports differs from
// the XML in package introspection: method names and signatures (in the
// method tables and in real calls over the bus), properties and their types
// (GetAll over the bus), signals and their signatures (received over the
// bus), and the Introspect replies.
func TestIntrospectionDrift(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	sigs := h.subscribe(t)
	objects := []struct {
		iface string
		path  dbus.ObjectPath
		table map[string]any
	}{
		{ManagerInterface, ManagerPath, h.srv.managerMethods()},
		{ConnectionInterface, ConnectionPath(1), h.srv.connectionMethods()},
	}
	for _, o := range objects {
		x := lookup(t, o.iface)

		// Methods: the exported tables match the XML.
		if got, want := tableSignatures(t, o.table), xmlMethods(x); !maps.Equal(got, want) {
			t.Errorf("%s methods exported %v, XML %v", o.iface, got, want)
		}
		// ... and calls with the XML's signature work and reply with it.
		for _, m := range x.Methods {
			args := make([]any, 0, len(m.Args))
			for _, a := range m.Args {
				if a.Direction == "in" {
					args = append(args, argValue(t, a))
				}
			}
			if sig := dbus.SignatureOf(args...).String(); sig != m.In() {
				t.Fatalf("test values for %s have signature %s, want %s", m.Name, sig, m.In())
			}
			reply, err := h.call(o.path, o.iface+"."+m.Name, args...)
			if err != nil {
				t.Errorf("%s.%s%v: %v", o.iface, m.Name, args, err)
				continue
			}
			if sig := dbus.SignatureOf(reply...).String(); sig != decodedSignature(m.Out()) {
				t.Errorf("%s.%s replied %s, XML says %s", o.iface, m.Name, sig, m.Out())
			}
		}

		// Properties: GetAll over the bus has the XML's names and types.
		// (The raw body: Store would lose the variants' wire signatures.)
		body, err := h.call(o.path, propertiesInterface+".GetAll", o.iface)
		if err != nil {
			t.Fatal(err)
		}
		all, ok := body[0].(map[string]dbus.Variant)
		if !ok {
			t.Fatalf("GetAll replied %T", body[0])
		}
		got := map[string]string{}
		for name, v := range all {
			got[name] = v.Signature().String()
		}
		want := map[string]string{}
		for _, p := range x.Properties {
			want[p.Name] = p.Type
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s properties on the bus %v, XML %v", o.iface, got, want)
		}

		// Introspect over the bus serves the XML's interface.
		var data string
		if err := h.obj(o.path).Call(introspectableInterface+".Introspect", 0).Store(&data); err != nil {
			t.Fatal(err)
		}
		checkIntrospected(t, o.path, data, x)
	}

	// Signals: publish every kind and compare what arrives with the XML.
	h.be.takeCalls()
	sf := conn1.Subflows[0]
	for _, n := range []service.Notification{
		service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowEstablished, Subflow: sf},
		service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowClosed, Subflow: sf},
		service.SubflowEvent{ConnectionID: 1, Kind: service.SubflowPriorityChanged, Subflow: sf},
		service.AddressAnnounced{ConnectionID: 1, Address: conn1.RemoteAddresses[0]},
		service.AddressRemoved{ConnectionID: 1, RemoteID: 2},
	} {
		h.srv.Publish(n)
	}
	x := lookup(t, ConnectionInterface)
	for _, want := range x.Signals {
		s := next(t, sigs)
		if s.Name != ConnectionInterface+"."+want.Name || dbus.SignatureOf(s.Body...).String() != want.Signature() {
			t.Errorf("signal %s(%s), XML %s(%s)", s.Name, dbus.SignatureOf(s.Body...), want.Name, want.Signature())
		}
	}
	if len(x.Signals) != 5 {
		t.Errorf("the XML has %d signals; this test publishes 5 kinds", len(x.Signals))
	}
	// The Manager's one signal.
	if err := h.srv.EmitCounterIncreased("Blackhole", 3, 1); err != nil {
		t.Fatal(err)
	}
	mx := lookup(t, ManagerInterface)
	if len(mx.Signals) != 1 {
		t.Fatalf("the Manager XML has signals %v; this test sends CounterIncreased", mx.Signals)
	}
	if s := next(t, sigs); s.Name != ManagerInterface+"."+mx.Signals[0].Name || dbus.SignatureOf(s.Body...).String() != mx.Signals[0].Signature() ||
		s.Path != ManagerPath {
		t.Errorf("signal %s %s(%s), XML %s(%s)", s.Path, s.Name, dbus.SignatureOf(s.Body...), mx.Signals[0].Name, mx.Signals[0].Signature())
	}
}

// checkIntrospected compares an Introspect reply with the XML of iface.
func checkIntrospected(t *testing.T, path dbus.ObjectPath, data string, x introspection.Interface) {
	t.Helper()
	var node introspect.Node
	if err := xml.Unmarshal([]byte(data), &node); err != nil {
		t.Fatalf("Introspect(%s) is not valid XML: %v", path, err)
	}
	var names []string
	for _, i := range node.Interfaces {
		names = append(names, i.Name)
		if i.Name != x.Name {
			continue
		}
		var methods, signals, props []string
		for _, m := range i.Methods {
			var sig strings.Builder
			for _, a := range m.Args {
				sig.WriteString(a.Direction + ":" + a.Type + " ")
			}
			methods = append(methods, m.Name+"("+sig.String()+")")
		}
		for _, s := range i.Signals {
			var sig strings.Builder
			for _, a := range s.Args {
				sig.WriteString(a.Type)
			}
			signals = append(signals, s.Name+"("+sig.String()+")")
		}
		for _, p := range i.Properties {
			props = append(props, p.Name+" "+p.Type+" "+p.Access)
		}
		var wm, ws, wp []string
		for _, m := range x.Methods {
			var sig strings.Builder
			for _, a := range m.Args {
				sig.WriteString(a.Direction + ":" + a.Type + " ")
			}
			wm = append(wm, m.Name+"("+sig.String()+")")
		}
		for _, s := range x.Signals {
			ws = append(ws, s.Name+"("+s.Signature()+")")
		}
		for _, p := range x.Properties {
			wp = append(wp, p.Name+" "+p.Type+" "+p.Access)
		}
		if !slices.Equal(methods, wm) || !slices.Equal(signals, ws) || !slices.Equal(props, wp) {
			t.Errorf("Introspect(%s) %s:\n%v %v %v\nXML:\n%v %v %v", path, x.Name, methods, signals, props, wm, ws, wp)
		}
	}
	want := []string{introspectableInterface, peerInterface, propertiesInterface}
	if x.Name == ManagerInterface {
		want = append(want, objectManagerInterface)
	}
	want = append(want, x.Name)
	if !slices.Equal(names, want) {
		t.Errorf("Introspect(%s) lists %v, want %v", path, names, want)
	}
	if !strings.Contains(data, "<!--") {
		t.Errorf("Introspect(%s) has no doc comments", path)
	}
}

// TestIntrospectTree checks that a walk from "/" reaches every connection.
func TestIntrospectTree(t *testing.T) {
	h := newHarness(t, Options{}, withState)
	h.srv.Publish(service.ConnectionAdded{Connection: service.Connection{ID: 10}})
	for path, want := range map[dbus.ObjectPath][]string{
		"/":                {"org"},
		"/org":             {"mptcp"},
		"/org/mptcp":       {"PathManager1"},
		ManagerPath:        {"connection"},
		ConnectionsPath:    {"1", "2", "10"},
		ConnectionPath(10): nil,
	} {
		var data string
		if err := h.obj(path).Call(introspectableInterface+".Introspect", 0).Store(&data); err != nil {
			t.Fatalf("Introspect(%s): %v", path, err)
		}
		var node introspect.Node
		if err := xml.Unmarshal([]byte(data), &node); err != nil {
			t.Fatalf("Introspect(%s): %v", path, err)
		}
		var children []string
		for _, c := range node.Children {
			children = append(children, c.Name)
		}
		if !slices.Equal(children, want) {
			t.Errorf("Introspect(%s) children %v, want %v", path, children, want)
		}
		if len(node.Interfaces) == 0 {
			t.Errorf("Introspect(%s) lists no interfaces", path)
		}
	}
}

// TestBusctl checks the tree and the introspection as busctl shows them.
func TestBusctl(t *testing.T) {
	busctl := pmtest.RequireProgram(t, "busctl")
	h := newHarness(t, Options{}, withState)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(busctl, append([]string{"--address=" + h.bus.Address()}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("busctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tree := run("tree", h.dest)
	for _, p := range []string{"/org/mptcp/PathManager1", "/org/mptcp/PathManager1/connection/1", "/org/mptcp/PathManager1/connection/2"} {
		if !strings.Contains(tree, p+"\n") {
			t.Errorf("busctl tree does not list %s:\n%s", p, tree)
		}
	}
	intro := run("introspect", h.dest, string(ConnectionPath(1)))
	for _, want := range []string{
		"org.mptcp.PathManager1.Connection", ".AnnounceAddress", ".CreateSubflow", ".SubflowClosed",
		".Token", "3735928559", ".Subflows", "a(yysqsqbs)",
	} {
		if !strings.Contains(intro, want) {
			t.Errorf("busctl introspect does not show %q:\n%s", want, intro)
		}
	}
	xmlOut := run("introspect", "--xml-interface", h.dest, string(ManagerPath))
	if !strings.Contains(xmlOut, "RegisterController:") || !strings.Contains(xmlOut, "@controller:") {
		t.Errorf("busctl introspect --xml-interface shows no docs:\n%s", xmlOut)
	}
}

// TestPythonClient checks with python3-dbus, a client of another
// implementation, that GetManagedObjects decodes to the contract's types.
func TestPythonClient(t *testing.T) {
	python := requirePythonDBus(t)
	h := newHarness(t, Options{}, withState)
	const script = `
import dbus, json, sys

def sig(v):
    for cls, code in ((dbus.Boolean, "b"), (dbus.Byte, "y"), (dbus.UInt16, "q"), (dbus.UInt32, "u"),
                      (dbus.ObjectPath, "o"), (dbus.String, "s")):
        if isinstance(v, cls):
            return code
    if isinstance(v, dbus.Struct):
        return "(" + "".join(sig(x) for x in v) + ")"
    if isinstance(v, dbus.Dictionary):
        return "a{" + v.signature + "}"
    if isinstance(v, dbus.Array):
        return "a" + v.signature
    raise TypeError(type(v))

def plain(v):
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, (dbus.Struct, dbus.Array)):
        return [plain(x) for x in v]
    if isinstance(v, dbus.Dictionary):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (dbus.String, dbus.ObjectPath)):
        return str(v)
    return int(v)

bus = dbus.bus.BusConnection(sys.argv[1])
objs = bus.get_object(sys.argv[2], "/org/mptcp/PathManager1").GetManagedObjects(
    dbus_interface="org.freedesktop.DBus.ObjectManager")
out = {}
for path, ifaces in objs.items():
    out[str(path)] = {str(i): {str(k): [sig(v), plain(v)] for k, v in props.items()} for i, props in ifaces.items()}
print(json.dumps(out))
`
	out, err := exec.Command(python, "-c", script, h.bus.Address(), h.dest).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	var got map[string]map[string]map[string][2]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("python printed %s: %v", out, err)
	}
	types := map[string]string{}
	for _, p := range lookup(t, ConnectionInterface).Properties {
		types[p.Name] = p.Type
	}
	for path, wire := range map[string]map[string]any{string(ConnectionPath(1)): conn1Wire, string(ConnectionPath(2)): conn2Wire} {
		ifaces, ok := got[path]
		if !ok {
			t.Errorf("python sees no %s: %s", path, out)
			continue
		}
		if names := slices.Sorted(maps.Keys(ifaces)); !slices.Equal(names, []string{introspectableInterface, peerInterface, propertiesInterface, ConnectionInterface}) {
			t.Errorf("python sees interfaces %v on %s", names, path)
		}
		props := ifaces[ConnectionInterface]
		if len(props) != len(types) {
			t.Errorf("python sees %d properties on %s, want %d", len(props), path, len(types))
		}
		for name, v := range props {
			if v[0] != types[name] {
				t.Errorf("%s %s: python decodes %v, XML says %s", path, name, v[0], types[name])
			}
			if want := jsonRoundTrip(t, wire[name]); !reflect.DeepEqual(v[1], want) {
				t.Errorf("%s %s: python decodes %#v, want %#v", path, name, v[1], want)
			}
		}
	}
}

func jsonRoundTrip(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
