// Package introspection holds the D-Bus interface descriptions of
// org.mptcp.PathManager1, one documented XML file per interface, and parses
// them. The files are the contract: the D-Bus front end serves them from
// Introspect, and its tests fail when the methods, signals or properties it
// exports drift from them.
//
// Each file is an introspection document with one <interface> element. Every
// interface, method, signal and property is preceded by an XML comment in
// gdbus-codegen style whose first line is its name followed by a colon.
package introspection

import (
	"bytes"
	"embed"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
)

// The interfaces described here.
const (
	Manager    = "org.mptcp.PathManager1.Manager"
	Connection = "org.mptcp.PathManager1.Connection"
	Controller = "org.mptcp.PathManager1.Controller"
)

// ErrUnknownInterface is returned for an interface name without a file here.
var ErrUnknownInterface = errors.New("introspection: unknown interface")

//go:embed *.xml
var files embed.FS

// Interface is the parsed description of one interface.
type Interface struct {
	Name       string
	Doc        string // the comment before the element, trimmed
	Methods    []Method
	Signals    []Signal
	Properties []Property

	xml string // the children of <node>, verbatim: doc comment and <interface>
}

// Method is a method of an interface.
type Method struct {
	Name string
	Doc  string
	Args []Arg // in and out arguments in document order
}

// In returns the method's input signature (the in arguments' types joined).
func (m Method) In() string { return signature(m.Args, "in") }

// Out returns the method's output signature.
func (m Method) Out() string { return signature(m.Args, "out") }

// Signal is a signal of an interface.
type Signal struct {
	Name string
	Doc  string
	Args []Arg
}

// Signature returns the signal's signature (its arguments' types joined).
func (s Signal) Signature() string { return signature(s.Args, "") }

// Property is a property of an interface.
type Property struct {
	Name   string
	Doc    string
	Type   string // a single complete D-Bus type, e.g. "a(ysq)"
	Access string // "read", "write" or "readwrite"
}

// Arg is an argument of a method or signal.
type Arg struct {
	Name      string
	Type      string
	Direction string // "in" or "out" for a method ("" means "in"); "" for a signal
}

// Names returns the names of the interfaces described here, sorted.
func Names() []string {
	return []string{Connection, Controller, Manager}
}

// Lookup returns the parsed description of the named interface.
func Lookup(name string) (Interface, error) {
	all, err := parsedAll()
	if err != nil {
		return Interface{}, err
	}
	i, ok := all[name]
	if !ok {
		return Interface{}, fmt.Errorf("%w %q", ErrUnknownInterface, name)
	}
	return i, nil
}

// XML returns the named interface's <interface> element with its doc
// comments, verbatim from its file, ready to be placed in a <node> of an
// Introspect reply.
func XML(name string) (string, error) {
	i, err := Lookup(name)
	if err != nil {
		return "", err
	}
	return i.xml, nil
}

// File returns the whole introspection document of the named interface.
func File(name string) ([]byte, error) {
	if !slices.Contains(Names(), name) {
		return nil, fmt.Errorf("%w %q", ErrUnknownInterface, name)
	}
	b, err := files.ReadFile(name + ".xml")
	if err != nil {
		return nil, fmt.Errorf("introspection: %w", err)
	}
	return b, nil
}

var parsedAll = sync.OnceValues(func() (map[string]Interface, error) {
	all := make(map[string]Interface)
	for _, name := range Names() {
		b, err := File(name)
		if err != nil {
			return nil, err
		}
		i, err := Parse(b)
		if err != nil {
			return nil, fmt.Errorf("introspection: %s.xml: %w", name, err)
		}
		if i.Name != name {
			return nil, fmt.Errorf("introspection: %s.xml describes %q", name, i.Name)
		}
		all[name] = i
	}
	return all, nil
})

// Parse parses an introspection document that holds exactly one
// <interface> element inside its root <node>.
func Parse(doc []byte) (Interface, error) {
	p := parser{dec: xml.NewDecoder(bytes.NewReader(doc))}
	if err := p.run(); err != nil {
		return Interface{}, err
	}
	if p.count != 1 {
		return Interface{}, fmt.Errorf("introspection: want one interface, found %d", p.count)
	}
	p.iface.xml = strings.TrimSpace(string(doc[p.innerStart:p.innerEnd]))
	return p.iface, nil
}

type parser struct {
	dec        *xml.Decoder
	iface      Interface
	count      int
	depth      int
	innerStart int64 // offset just after <node>
	innerEnd   int64 // offset of </node>
	comment    string
	method     *Method
	signal     *Signal
}

func (p *parser) run() error {
	for {
		before := p.dec.InputOffset()
		tok, err := p.dec.Token()
		if errors.Is(err, io.EOF) {
			if p.innerEnd == 0 {
				return errors.New("introspection: no <node> element")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("introspection: %w", err)
		}
		switch t := tok.(type) {
		case xml.Comment:
			p.comment = strings.TrimSpace(string(t))
		case xml.StartElement:
			p.depth++
			if err := p.start(t); err != nil {
				return err
			}
			p.comment = ""
		case xml.EndElement:
			p.depth--
			p.end(t, before)
			p.comment = ""
		}
	}
}

func (p *parser) start(t xml.StartElement) error {
	attr := func(name string) string {
		for _, a := range t.Attr {
			if a.Name.Local == name {
				return a.Value
			}
		}
		return ""
	}
	switch t.Name.Local {
	case "node":
		if p.depth == 1 {
			p.innerStart = p.dec.InputOffset()
		}
	case "interface":
		if p.depth != 2 {
			return errors.New("introspection: <interface> outside the root <node>")
		}
		p.count++
		p.iface.Name, p.iface.Doc = attr("name"), p.comment
	case "method":
		p.method = &Method{Name: attr("name"), Doc: p.comment}
	case "signal":
		p.signal = &Signal{Name: attr("name"), Doc: p.comment}
	case "property":
		p.iface.Properties = append(p.iface.Properties, Property{
			Name: attr("name"), Doc: p.comment, Type: attr("type"), Access: attr("access"),
		})
	case "arg":
		a := Arg{Name: attr("name"), Type: attr("type"), Direction: attr("direction")}
		switch {
		case p.method != nil:
			if a.Direction == "" {
				a.Direction = "in"
			}
			p.method.Args = append(p.method.Args, a)
		case p.signal != nil:
			a.Direction = ""
			p.signal.Args = append(p.signal.Args, a)
		default:
			return errors.New("introspection: <arg> outside a method or signal")
		}
	}
	return nil
}

func (p *parser) end(t xml.EndElement, before int64) {
	switch t.Name.Local {
	case "node":
		if p.depth == 0 {
			p.innerEnd = before
		}
	case "method":
		if p.method != nil {
			p.iface.Methods = append(p.iface.Methods, *p.method)
			p.method = nil
		}
	case "signal":
		if p.signal != nil {
			p.iface.Signals = append(p.iface.Signals, *p.signal)
			p.signal = nil
		}
	}
}

func signature(args []Arg, direction string) string {
	var b strings.Builder
	for _, a := range args {
		if a.Direction == direction {
			b.WriteString(a.Type)
		}
	}
	return b.String()
}
