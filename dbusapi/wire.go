package dbusapi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// The D-Bus wire format of the messages the daemon sends most: signals and
// the GetManagedObjects reply. godbus encodes every message twice through
// reflection (once to count file descriptors, once to write it); a
// signal of a new connection cost 30% of the daemon's CPU per kernel event.
// This encoder knows the few Go types the API sends and appends them with
// a type switch, into a buffer that holds several messages, written to
// the socket at once (busconn.go). A value of a type it does not know is
// an error (errWireType): the caller then sends through godbus.
//
// Messages are little-endian whatever the host (the byte order is the
// message's first byte). Alignment is relative to the message's start.

// errWireType: the value has a type the encoder does not know.
var errWireType = errors.New("dbusapi: wire: a type the encoder does not know")

// D-Bus limits (specification, "Valid Signatures" and "Message Format").
const (
	maxArrayBytes   = 1 << 26 // 64 MiB
	maxMessageBytes = 1 << 27 // 128 MiB
	maxSignature    = 255
)

// header is what the encoder puts in a message's header fields.
type header struct {
	typ         dbus.Type
	flags       dbus.Flags
	serial      uint32
	replySerial uint32          // method returns and errors
	path        dbus.ObjectPath // signals and calls
	iface       string          // signals and calls
	member      string          // signals and calls
	destination string          // "" = none
	errorName   string          // errors
}

// Header field codes.
const (
	fieldPath        = 1
	fieldInterface   = 2
	fieldMember      = 3
	fieldErrorName   = 4
	fieldReplySerial = 5
	fieldDestination = 6
	fieldSignature   = 8
)

// appendMessage appends the message with header h and body args to b. On
// error b is returned as it was.
func appendMessage(b []byte, h header, args ...any) ([]byte, error) {
	var sigBuf [64]byte
	sig := sigBuf[:0]
	for _, a := range args {
		s := sigOf(a)
		if s == "" {
			return b, fmt.Errorf("%w: %T", errWireType, a)
		}
		sig = append(sig, s...)
	}
	if len(sig) > maxSignature {
		return b, fmt.Errorf("dbusapi: wire: signature of %d characters", len(sig))
	}
	e := encoder{b: b, base: len(b)}
	e.header(h, sig)
	body := len(e.b)
	for _, a := range args {
		e.value(a)
	}
	if e.err == nil && len(e.b)-e.base > maxMessageBytes {
		e.err = fmt.Errorf("dbusapi: wire: a message of %d bytes", len(e.b)-e.base)
	}
	if e.err != nil {
		return b[:e.base], e.err
	}
	binary.LittleEndian.PutUint32(e.b[e.base+4:], uint32(len(e.b)-body))
	return e.b, nil
}

// propertiesChangedSignature is the signature of a PropertiesChanged
// signal: the interface, the changed properties, the invalidated ones.
var propertiesChangedSignature = []byte("sa{sv}as")

// appendPropertiesChanged appends the PropertiesChanged signal with header
// h of interface iface's changed properties, none invalidated, to b; it
// is appendMessage(b, h, iface, changed, []string{}) without the
// arguments' slice and their boxing. On error b is returned as it was.
func appendPropertiesChanged(b []byte, h header, iface string, changed map[string]dbus.Variant) ([]byte, error) {
	e := encoder{b: b, base: len(b)}
	e.header(h, propertiesChangedSignature)
	body := len(e.b)
	e.str(iface)
	e.props(changed)
	e.u32(0) // as: an empty array, its elements 4-aligned, with no padding
	if e.err == nil && len(e.b)-e.base > maxMessageBytes {
		e.err = fmt.Errorf("dbusapi: wire: a message of %d bytes", len(e.b)-e.base)
	}
	if e.err != nil {
		return b[:e.base], e.err
	}
	binary.LittleEndian.PutUint32(e.b[e.base+4:], uint32(len(e.b)-body))
	return e.b, nil
}

// appendConnChanged is appendPropertiesChanged of the Connection
// interface's properties of c in mask, encoded straight from c.
func appendConnChanged(b []byte, h header, c *service.Connection, mask connPropMask) ([]byte, error) {
	e := encoder{b: b, base: len(b)}
	e.header(h, propertiesChangedSignature)
	body := len(e.b)
	e.str(ConnectionInterface)
	e.connProps(c, mask)
	e.u32(0) // as: an empty array, its elements 4-aligned, with no padding
	if e.err != nil {
		return b[:e.base], e.err
	}
	binary.LittleEndian.PutUint32(e.b[e.base+4:], uint32(len(e.b)-body))
	return e.b, nil
}

// subflowSig is the body of a subflow signal (SubflowEstablished,
// SubflowClosed, SubflowPriorityChanged), queued and encoded without
// boxing its values.
type subflowSig struct {
	sf            service.Subflow
	closed        bool   // SubflowClosed: errno and reason follow
	errno, reason uint32 // SubflowClosed
}

// Signatures of the subflow signals.
var (
	subflowSignature       = []byte("yysqsqbs")
	subflowClosedSignature = []byte("yysqsqbsuu")
)

// args returns x as the arguments godbus sends.
func (x *subflowSig) args() []any {
	sf := &x.sf
	args := []any{sf.LocalID, sf.RemoteID, addrString(sf.LocalAddress), sf.LocalPort,
		addrString(sf.RemoteAddress), sf.RemotePort, sf.Backup, sf.Interface}
	if x.closed {
		args = append(args, x.errno, x.reason)
	}
	return args
}

// appendSubflowSignal appends the signal with header h and body x to b,
// as appendMessage(b, h, x.args()...) would.
func appendSubflowSignal(b []byte, h header, x *subflowSig) ([]byte, error) {
	e := encoder{b: b, base: len(b)}
	if x.closed {
		e.header(h, subflowClosedSignature)
	} else {
		e.header(h, subflowSignature)
	}
	body := len(e.b)
	sf := &x.sf
	e.u8(sf.LocalID)
	e.u8(sf.RemoteID)
	e.addr(sf.LocalAddress)
	e.u16(sf.LocalPort)
	e.addr(sf.RemoteAddress)
	e.u16(sf.RemotePort)
	e.boolean(sf.Backup)
	e.str(sf.Interface)
	if x.closed {
		e.u32(x.errno)
		e.u32(x.reason)
	}
	if e.err != nil {
		return b[:e.base], e.err
	}
	binary.LittleEndian.PutUint32(e.b[e.base+4:], uint32(len(e.b)-body))
	return e.b, nil
}

// header appends a message's header with signature sig and a body
// length of 0, which the caller sets (setBodyLength), and the padding to
// the body.
func (e *encoder) header(h header, sig []byte) {
	e.b = append(e.b, 'l', byte(h.typ), byte(h.flags), 1)
	e.b = binary.LittleEndian.AppendUint32(e.b, 0) // body length
	e.b = binary.LittleEndian.AppendUint32(e.b, h.serial)
	at, start := e.beginArray(8)
	if h.path != "" {
		e.fieldHeader(fieldPath, "o")
		e.path(h.path)
	}
	if h.iface != "" {
		e.fieldHeader(fieldInterface, "s")
		e.str(h.iface)
	}
	if h.member != "" {
		e.fieldHeader(fieldMember, "s")
		e.str(h.member)
	}
	if h.errorName != "" {
		e.fieldHeader(fieldErrorName, "s")
		e.str(h.errorName)
	}
	if h.replySerial != 0 {
		e.fieldHeader(fieldReplySerial, "u")
		e.u32(h.replySerial)
	}
	if h.destination != "" {
		e.fieldHeader(fieldDestination, "s")
		e.str(h.destination)
	}
	if len(sig) > 0 {
		e.fieldHeader(fieldSignature, "g")
		e.sigBytes(sig)
	}
	e.endArray(at, start)
	e.align(8)
}

// encoder appends D-Bus values to b. The first error sticks.
type encoder struct {
	b    []byte
	base int // where the message starts
	err  error
}

func (e *encoder) fail(err error) {
	if e.err == nil {
		e.err = err
	}
}

func (e *encoder) align(n int) {
	if pad := (n - (len(e.b)-e.base)%n) % n; pad > 0 {
		e.b = append(e.b, make([]byte, pad)...)
	}
}

func (e *encoder) u8(v uint8) { e.b = append(e.b, v) }

func (e *encoder) u16(v uint16) {
	e.align(2)
	e.b = binary.LittleEndian.AppendUint16(e.b, v)
}

func (e *encoder) u32(v uint32) {
	e.align(4)
	e.b = binary.LittleEndian.AppendUint32(e.b, v)
}

func (e *encoder) u64(v uint64) {
	e.align(8)
	e.b = binary.LittleEndian.AppendUint64(e.b, v)
}

func (e *encoder) boolean(v bool) {
	if v {
		e.u32(1)
	} else {
		e.u32(0)
	}
}

// str appends a string; D-Bus strings are UTF-8 without NUL (the bus
// drops a connection that sends another).
func (e *encoder) str(s string) {
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		e.fail(fmt.Errorf("dbusapi: wire: string %q is not UTF-8 without NUL", s))
		return
	}
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
}

func (e *encoder) path(p dbus.ObjectPath) {
	if !validPath(string(p)) {
		e.fail(fmt.Errorf("dbusapi: wire: invalid object path %q", p))
		return
	}
	e.str(string(p))
}

// validPath reports whether p is a valid object path ("/", or elements
// of [A-Za-z0-9_] each after a '/'); it is dbus.ObjectPath.IsValid, which
// allocates (it splits the path), for every signal's header.
func validPath(p string) bool {
	if p == "/" {
		return true
	}
	if len(p) < 2 || p[0] != '/' || p[len(p)-1] == '/' {
		return false
	}
	for i := 1; i < len(p); i++ {
		switch c := p[i]; {
		case c == '/':
			if p[i-1] == '/' {
				return false // an empty element
			}
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
		default:
			return false
		}
	}
	return true
}

// sig appends a signature the encoder made (sigOf): no check needed.
func (e *encoder) sig(s string) {
	e.b = append(e.b, byte(len(s)))
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
}

func (e *encoder) sigBytes(s []byte) {
	e.b = append(e.b, byte(len(s)))
	e.b = append(e.b, s...)
	e.b = append(e.b, 0)
}

// fieldHeader starts a header field (a struct (yv)) up to its variant's
// value.
func (e *encoder) fieldHeader(code byte, sig string) {
	e.align(8)
	e.u8(code)
	e.sig(sig)
}

// beginArray appends an array's length, to be set by endArray, and the
// padding to its first element; it returns where both are.
func (e *encoder) beginArray(elemAlign int) (at, start int) {
	e.u32(0)
	at = len(e.b) - 4
	e.align(elemAlign)
	return at, len(e.b)
}

func (e *encoder) endArray(at, start int) {
	n := len(e.b) - start
	if n > maxArrayBytes {
		e.fail(fmt.Errorf("dbusapi: wire: an array of %d bytes", n))
		return
	}
	binary.LittleEndian.PutUint32(e.b[at:], uint32(n))
}

// variant appends v as a variant. The signature is that of v's value, as
// godbus's MakeVariant makes it.
func (e *encoder) variant(v dbus.Variant) {
	val := v.Value()
	s := sigOf(val)
	if s == "" {
		e.fail(fmt.Errorf("%w: %T in a variant", errWireType, val))
		return
	}
	e.sig(s)
	e.value(val)
}

// sigOf returns the D-Bus signature of a value of a type the encoder
// knows, or "".
func sigOf(v any) string {
	switch v.(type) {
	case uint8:
		return "y"
	case bool:
		return "b"
	case int16:
		return "n"
	case uint16:
		return "q"
	case int32:
		return "i"
	case uint32:
		return "u"
	case int64:
		return "x"
	case uint64:
		return "t"
	case float64:
		return "d"
	case string:
		return "s"
	case dbus.ObjectPath:
		return "o"
	case dbus.Variant:
		return "v"
	case []string:
		return "as"
	case []dbus.ObjectPath:
		return "ao"
	case map[string]string:
		return "a{ss}"
	case map[string]dbus.Variant:
		return "a{sv}"
	case statsReply:
		return "a{oa{sv}}"
	case map[string]map[string]dbus.Variant:
		return "a{sa{sv}}"
	case map[dbus.ObjectPath]map[string]map[string]dbus.Variant, managedObjects:
		return "a{oa{sa{sv}}}"
	case connObject:
		return "a{sa{sv}}"
	case endpointWire:
		return "(ysqasss)"
	case []endpointWire:
		return "a(ysqasss)"
	case limitsWire:
		return "(uu)"
	case localAddressWire:
		return "(ss)"
	case []localAddressWire:
		return "a(ss)"
	case subflowWire:
		return "(yysqsqbs)"
	case []subflowWire:
		return "a(yysqsqbs)"
	case addressWire:
		return "(ysq)"
	case []addressWire:
		return "a(ysq)"
	}
	return ""
}

// value appends v, of a type sigOf knows.
func (e *encoder) value(v any) {
	switch v := v.(type) {
	case uint8:
		e.u8(v)
	case bool:
		e.boolean(v)
	case int16:
		e.u16(uint16(v))
	case uint16:
		e.u16(v)
	case int32:
		e.u32(uint32(v))
	case uint32:
		e.u32(v)
	case int64:
		e.u64(uint64(v))
	case uint64:
		e.u64(v)
	case float64:
		e.u64(math.Float64bits(v))
	case string:
		e.str(v)
	case dbus.ObjectPath:
		e.path(v)
	case dbus.Variant:
		e.variant(v)
	case []string:
		at, start := e.beginArray(4)
		for _, s := range v {
			e.str(s)
		}
		e.endArray(at, start)
	case []dbus.ObjectPath:
		at, start := e.beginArray(4)
		for _, p := range v {
			e.path(p)
		}
		e.endArray(at, start)
	case map[string]string:
		at, start := e.beginArray(8)
		for k, s := range v {
			e.align(8)
			e.str(k)
			e.str(s)
		}
		e.endArray(at, start)
	case map[string]dbus.Variant:
		e.props(v)
	case map[string]map[string]dbus.Variant:
		e.interfaces(v)
	case map[dbus.ObjectPath]map[string]map[string]dbus.Variant:
		at, start := e.beginArray(8)
		for p, ifaces := range v {
			e.align(8)
			e.path(p)
			e.interfaces(ifaces)
		}
		e.endArray(at, start)
	case connObject:
		e.connObject(v.c)
	case managedObjects:
		e.managedObjects(v)
	case statsReply:
		at, start := e.beginArray(8)
		var path []byte
		for i := range v {
			e.align(8)
			path = e.statsEntry(&v[i], path)
		}
		e.endArray(at, start)
	case endpointWire:
		e.endpoint(v)
	case []endpointWire:
		at, start := e.beginArray(8)
		for _, x := range v {
			e.endpoint(x)
		}
		e.endArray(at, start)
	case limitsWire:
		e.align(8)
		e.u32(v.Subflows)
		e.u32(v.AddAddrAccepted)
	case localAddressWire:
		e.localAddress(v)
	case []localAddressWire:
		at, start := e.beginArray(8)
		for _, x := range v {
			e.localAddress(x)
		}
		e.endArray(at, start)
	case subflowWire:
		e.subflow(v)
	case []subflowWire:
		at, start := e.beginArray(8)
		for _, x := range v {
			e.subflow(x)
		}
		e.endArray(at, start)
	case addressWire:
		e.address(v)
	case []addressWire:
		at, start := e.beginArray(8)
		for _, x := range v {
			e.address(x)
		}
		e.endArray(at, start)
	default:
		e.fail(fmt.Errorf("%w: %T", errWireType, v))
	}
}

// props appends an a{sv}.
func (e *encoder) props(m map[string]dbus.Variant) {
	at, start := e.beginArray(8)
	for k, v := range m {
		e.align(8)
		e.str(k)
		e.variant(v)
	}
	e.endArray(at, start)
}

// interfaces appends an a{sa{sv}}.
func (e *encoder) interfaces(m map[string]map[string]dbus.Variant) {
	at, start := e.beginArray(8)
	for k, props := range m {
		e.align(8)
		e.str(k)
		e.props(props)
	}
	e.endArray(at, start)
}

func (e *encoder) endpoint(v endpointWire) {
	e.align(8)
	e.u8(v.ID)
	e.str(v.Address)
	e.u16(v.Port)
	e.value(v.Flags)
	e.str(v.Interface)
	e.str(v.Origin)
}

func (e *encoder) localAddress(v localAddressWire) {
	e.align(8)
	e.str(v.Interface)
	e.str(v.Address)
}

func (e *encoder) subflow(v subflowWire) {
	e.align(8)
	e.u8(v.LocalID)
	e.u8(v.RemoteID)
	e.str(v.LocalAddress)
	e.u16(v.LocalPort)
	e.str(v.RemoteAddress)
	e.u16(v.RemotePort)
	e.boolean(v.Backup)
	e.str(v.Interface)
}

func (e *encoder) address(v addressWire) {
	e.align(8)
	e.u8(v.ID)
	e.str(v.Address)
	e.u16(v.Port)
}

// connObject is a connection object's entry of InterfacesAdded and
// GetManagedObjects, its interfaces and their properties (a{sa{sv}}),
// encoded straight from the connection, without the maps of
// connectionObject. godbus does not know it: toGodbus turns it into them.
type connObject struct{ c *service.Connection }

// managedObjects is a GetManagedObjects reply's body (a{oa{sa{sv}}}),
// encoded straight from the connections.
type managedObjects []service.Connection

// toGodbus returns args with the values only this encoder knows turned
// into the maps and slices godbus encodes.
func toGodbus(args []any) []any {
	out := args
	for i, a := range args {
		var v any
		switch a := a.(type) {
		case connObject:
			v = connectionObject(*a.c)
		case managedObjects:
			m := make(map[dbus.ObjectPath]map[string]map[string]dbus.Variant, len(a))
			for _, c := range a {
				m[ConnectionPath(c.ID)] = connectionObject(c)
			}
			v = m
		case statsReply:
			m := make(map[dbus.ObjectPath]map[string]dbus.Variant, len(a))
			for _, x := range a {
				m[ConnectionPath(x.id)] = statsWire(x.st)
			}
			v = m
		default:
			continue
		}
		if &out[0] == &args[0] {
			out = append([]any(nil), args...)
		}
		out[i] = v
	}
	return out
}

// addr appends an address as a string, as addrString makes it, without
// making the string.
func (e *encoder) addr(a netip.Addr) {
	e.align(4)
	at := len(e.b)
	e.b = append(e.b, 0, 0, 0, 0)
	if a.IsValid() {
		e.b = a.AppendTo(e.b)
	}
	binary.LittleEndian.PutUint32(e.b[at:], uint32(len(e.b)-at-4))
	e.b = append(e.b, 0)
}

// propHeader starts an entry of an a{sv}, up to its variant's value.
func (e *encoder) propHeader(name, sig string) {
	e.align(8)
	e.str(name)
	e.sig(sig)
}

// connObject appends what connectionObject(*c) would be: the same
// properties, in the order of connectionPropNames.
func (e *encoder) connObject(c *service.Connection) {
	at, start := e.beginArray(8)
	e.align(8)
	e.str(ConnectionInterface)
	e.connProps(c, allConnProps)
	for _, iface := range [...]string{propertiesInterface, introspectableInterface, peerInterface} {
		e.align(8)
		e.str(iface)
		a, s := e.beginArray(8)
		e.endArray(a, s)
	}
	e.endArray(at, start)
}

// connProps appends the properties of c in mask as an a{sv}, in the order
// of connectionPropNames: what connectionPropsNamed(*c, mask.names())
// would be.
func (e *encoder) connProps(c *service.Connection, mask connPropMask) {
	at, start := e.beginArray(8)
	for i := range connectionPropNames {
		if mask&(1<<i) == 0 {
			continue
		}
		switch i {
		case 0:
			e.propHeader("Token", "u")
			e.u32(c.Token)
		case 1:
			e.propHeader("ServerSide", "b")
			e.boolean(c.ServerSide)
		case 2:
			e.propHeader("State", "s")
			e.str(c.State)
		case 3:
			e.propHeader("LocalAddress", "s")
			e.addr(c.LocalAddress)
		case 4:
			e.propHeader("LocalPort", "q")
			e.u16(c.LocalPort)
		case 5:
			e.propHeader("RemoteAddress", "s")
			e.addr(c.RemoteAddress)
		case 6:
			e.propHeader("RemotePort", "q")
			e.u16(c.RemotePort)
		case 7:
			e.propHeader("DenyJoinId0", "b")
			e.boolean(c.DenyJoinID0)
		case 8:
			e.propHeader("Subflows", "a(yysqsqbs)")
			sat, sstart := e.beginArray(8)
			for i := range c.Subflows {
				s := &c.Subflows[i]
				e.align(8)
				e.u8(s.LocalID)
				e.u8(s.RemoteID)
				e.addr(s.LocalAddress)
				e.u16(s.LocalPort)
				e.addr(s.RemoteAddress)
				e.u16(s.RemotePort)
				e.boolean(s.Backup)
				e.str(s.Interface)
			}
			e.endArray(sat, sstart)
		case 9:
			e.propHeader("RemoteAddresses", "a(ysq)")
			e.announced(c.RemoteAddresses)
		case 10:
			e.propHeader("AnnouncedAddresses", "a(ysq)")
			e.announced(c.AnnouncedAddresses)
		}
	}
	e.endArray(at, start)
}

func (e *encoder) announced(as []service.AnnouncedAddress) {
	at, start := e.beginArray(8)
	for i := range as {
		e.align(8)
		e.u8(as[i].ID)
		e.addr(as[i].Address)
		e.u16(as[i].Port)
	}
	e.endArray(at, start)
}

// managedObjects appends a{oa{sa{sv}}}.
func (e *encoder) managedObjects(cs managedObjects) {
	at, start := e.beginArray(8)
	var path []byte
	for i := range cs {
		e.align(8)
		path = e.managedEntry(&cs[i], path)
	}
	e.endArray(at, start)
}

// managedEntry appends the dict entry {oa{sa{sv}}} of c, which starts at
// an 8-aligned offset, so that its bytes do not depend on where. scratch
// is for the path; managedEntry returns it for reuse.
func (e *encoder) managedEntry(c *service.Connection, scratch []byte) []byte {
	scratch = strconv.AppendUint(append(scratch[:0], ConnectionsPath+"/"...), c.ID, 10)
	e.u32(uint32(len(scratch)))
	e.b = append(e.b, scratch...)
	e.b = append(e.b, 0)
	e.connObject(c)
	return scratch
}
