package introspection

import (
	"encoding/xml"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
)

// contract is the API of docs/dbus-api.md (version 1), with
// its additions: member name to signature ("in->out" for methods). The XML
// must say the same.
var contract = map[string]struct {
	methods, signals, properties map[string]string
}{
	Manager: {
		methods: map[string]string{
			"RegisterController":     "oa{sv}->",
			"UnregisterController":   "o->",
			"RevokeController":       "->", // an addition to version 1 (taking control back)
			"GetConnectionByToken":   "u->o",
			"AddEndpoint":            "sqassy->y",
			"RemoveEndpoint":         "y->",
			"SetEndpointFlags":       "yas->",
			"FlushEndpoints":         "->",
			"SetLimits":              "uu->",
			"ListAddresses":          "->a(ssbs)", // an addition to version 1 (mptcpctl addresses)
			"SetInterfacePreference": "ss->",
			"GetStatistics":          "->a{oa{sv}}",
			"GetCounters":            "->a{st}",
		},
		signals: map[string]string{"CounterIncreased": "stt"},
		properties: map[string]string{
			"Version": "s", "ControlMode": "s", "Controller": "s", "Policy": "s",
			"KernelPathManager": "s", "Endpoints": "a(ysqasss)", "Limits": "(uu)",
			"LocalAddresses": "a(ss)", "SignalsDropped": "t", "Warnings": "as",
			"InterfacePreferences": "a{ss}",
		},
	},
	Connection: {
		methods: map[string]string{
			"AnnounceAddress":  "sqy->y",
			"RemoveAddress":    "y->",
			"CreateSubflow":    "ssqa{sv}->",
			"RemoveSubflow":    "sqsq->",
			"SetSubflowBackup": "sqsqb->",
			"GetStatistics":    "->a{sv}",
		},
		signals: map[string]string{
			"SubflowEstablished":     "yysqsqbs",
			"SubflowClosed":          "yysqsqbsuu",
			"SubflowPriorityChanged": "yysqsqbs",
			"AddressAnnounced":       "ysq",
			"AddressRemoved":         "y",
		},
		properties: map[string]string{
			"Token": "u", "ServerSide": "b", "State": "s", "LocalAddress": "s",
			"LocalPort": "q", "RemoteAddress": "s", "RemotePort": "q",
			"DenyJoinId0": "b", "Subflows": "a(yysqsqbs)",
			"RemoteAddresses": "a(ysq)", "AnnouncedAddresses": "a(ysq)",
		},
	},
	Controller: {
		methods:    map[string]string{"Release": "s->"},
		signals:    map[string]string{},
		properties: map[string]string{},
	},
}

func TestFilesMatchContract(t *testing.T) {
	if got, want := Names(), slices.Sorted(maps.Keys(contract)); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	for name, want := range contract {
		i, err := Lookup(name)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", name, err)
		}
		methods := map[string]string{}
		for _, m := range i.Methods {
			methods[m.Name] = m.In() + "->" + m.Out()
		}
		signals := map[string]string{}
		for _, s := range i.Signals {
			signals[s.Name] = s.Signature()
		}
		props := map[string]string{}
		for _, p := range i.Properties {
			props[p.Name] = p.Type
			if p.Access != "read" {
				t.Errorf("%s.%s: access %q, want read", name, p.Name, p.Access)
			}
		}
		if !maps.Equal(methods, want.methods) {
			t.Errorf("%s methods = %v, want %v", name, methods, want.methods)
		}
		if !maps.Equal(signals, want.signals) {
			t.Errorf("%s signals = %v, want %v", name, signals, want.signals)
		}
		if !maps.Equal(props, want.properties) {
			t.Errorf("%s properties = %v, want %v", name, props, want.properties)
		}
	}
}

func TestEverythingDocumented(t *testing.T) {
	for _, name := range Names() {
		i, err := Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		check := func(member, doc string) {
			if !strings.HasPrefix(doc, member+":") || len(strings.TrimSpace(strings.TrimPrefix(doc, member+":"))) == 0 {
				t.Errorf("%s: %s has no doc comment starting %q: %q", name, member, member+":", doc)
			}
		}
		check(name, i.Doc)
		for _, m := range i.Methods {
			check(m.Name, m.Doc)
			for _, a := range m.Args {
				if !strings.Contains(m.Doc, "@"+a.Name+":") {
					t.Errorf("%s.%s: argument %s is not documented", name, m.Name, a.Name)
				}
			}
		}
		for _, s := range i.Signals {
			check(s.Name, s.Doc)
			for _, a := range s.Args {
				if !strings.Contains(s.Doc, "@"+a.Name+":") {
					t.Errorf("%s.%s: argument %s is not documented", name, s.Name, a.Name)
				}
			}
		}
		for _, p := range i.Properties {
			check(p.Name, p.Doc)
		}
	}
}

func TestArgumentNamesUnique(t *testing.T) {
	for _, name := range Names() {
		i, _ := Lookup(name)
		for _, m := range i.Methods {
			seen := map[string]bool{}
			for _, a := range m.Args {
				if a.Name == "" || seen[a.Name] {
					t.Errorf("%s.%s: argument name %q empty or repeated", name, m.Name, a.Name)
				}
				seen[a.Name] = true
			}
		}
	}
}

// TestXMLFragment checks that the fragment served in Introspect replies is
// the interface with its docs and nothing else, and parses back to the same
// description.
func TestXMLFragment(t *testing.T) {
	for _, name := range Names() {
		frag, err := XML(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(frag, "<!--") || !strings.HasSuffix(frag, "</interface>") {
			t.Errorf("%s: fragment does not run from the doc comment to </interface>:\n%s", name, frag)
		}
		again, err := Parse([]byte("<node>" + frag + "</node>"))
		if err != nil {
			t.Fatalf("%s: fragment does not parse: %v", name, err)
		}
		orig, _ := Lookup(name)
		if again.Name != orig.Name || !slices.EqualFunc(again.Methods, orig.Methods, func(a, b Method) bool {
			return a.Name == b.Name && a.In() == b.In() && a.Out() == b.Out()
		}) || len(again.Signals) != len(orig.Signals) || len(again.Properties) != len(orig.Properties) {
			t.Errorf("%s: fragment parses to %+v, want %+v", name, again, orig)
		}
		var n struct{}
		if err := xml.Unmarshal([]byte("<node>"+frag+"</node>"), &n); err != nil {
			t.Errorf("%s: fragment is not well-formed: %v", name, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, doc := range []string{
		"",
		"<node>",
		"<node></node>",
		`<node><interface name="a"/><interface name="b"/></node>`,
		`<node><arg name="x" type="s"/></node>`,
		`<node><node><interface name="a"/></node></node>`,
		`<node><interface name="a"><method name="M"><arg type="s"></method></interface></node>`,
	} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("Parse(%q) succeeded", doc)
		}
	}
}

func TestLookupUnknown(t *testing.T) {
	if _, err := Lookup("org.example.Nope"); !errors.Is(err, ErrUnknownInterface) {
		t.Errorf("Lookup: %v, want ErrUnknownInterface", err)
	}
	if _, err := XML("org.example.Nope"); !errors.Is(err, ErrUnknownInterface) {
		t.Errorf("XML: %v, want ErrUnknownInterface", err)
	}
	if _, err := File("../go.mod"); !errors.Is(err, ErrUnknownInterface) {
		t.Errorf("File: %v, want ErrUnknownInterface", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range Names() {
		b, _ := File(name)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		i, err := Parse(doc)
		if err != nil {
			return
		}
		// What Parse accepts, it serves back as a fragment that parses to
		// the same interface.
		again, err := Parse([]byte("<node>" + i.xml + "</node>"))
		if err != nil {
			t.Fatalf("fragment %q of %q does not parse: %v", i.xml, doc, err)
		}
		if again.Name != i.Name || len(again.Methods) != len(i.Methods) ||
			len(again.Signals) != len(i.Signals) || len(again.Properties) != len(i.Properties) {
			t.Fatalf("fragment parses to %+v, want %+v", again, i)
		}
	})
}
