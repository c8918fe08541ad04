package dbusapi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/godbus/dbus/v5"
)

// ConnectSystemBus opens a private connection to the system bus, at
// DBUS_SYSTEM_BUS_ADDRESS when that is set (tests point it at a private
// bus), else at the standard socket.
func ConnectSystemBus() (*dbus.Conn, error) {
	addr := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS")
	if addr == "" {
		addr = "unix:path=/run/dbus/system_bus_socket"
		if _, err := os.Stat("/run/dbus/system_bus_socket"); err != nil {
			addr = "unix:path=/var/run/dbus/system_bus_socket"
		}
	}
	conn, err := Connect(addr)
	if err != nil {
		return nil, fmt.Errorf("dbusapi: connect to the system bus: %w", err)
	}
	return conn, nil
}

// Connect opens a private connection to the bus at address, authenticated
// and registered (Hello). On a Unix socket the server made on it (New)
// writes its signals and large replies itself (wire.go), on the same
// socket and with serials from the same sequence as godbus's; other
// transports go through godbus alone.
func Connect(address string, opts ...dbus.ConnOption) (*dbus.Conn, error) {
	uc, err := dialUnix(address)
	if errors.Is(err, errNotUnix) {
		return dbus.Connect(address, opts...)
	}
	if err != nil {
		return nil, err
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, err
	}
	w := &wireConn{uc: uc, raw: raw}
	conn, err := dbus.ConnectUnix(uc, append(opts, dbus.WithSerialGenerator(&w.serials), dbus.WithIncomingInterceptor(w.intercept))...)
	if err != nil {
		uc.Close()
		return nil, err
	}
	wires.Store(conn, w)
	go func() {
		<-conn.Context().Done()
		wires.Delete(conn)
	}()
	return conn, nil
}

// wires holds the sockets of the connections Connect made, for the
// servers made on them.
var wires sync.Map // *dbus.Conn -> *wireConn

// wireOf returns conn's socket, or nil when Connect did not make conn.
func wireOf(conn *dbus.Conn) *wireConn {
	if w, ok := wires.Load(conn); ok {
		return w.(*wireConn)
	}
	return nil
}

// wireConn is a bus connection's socket, shared with godbus. A Write on a
// net.UnixConn is whole: it holds the socket's write lock until every
// byte is written, so messages written here never interleave with
// godbus's.
type wireConn struct {
	uc      *net.UnixConn
	raw     syscall.RawConn
	serials serials

	// Replies the server writes itself (rawReplyMethods): intercept
	// marks such a call as wanting no reply, so that godbus makes none,
	// and notes here that the server owes one.
	rawReplies atomic.Bool // a server on this connection writes them
	mu         sync.Mutex
	owed       map[replyKey]time.Time

	// write's state, so that a write allocates nothing (a closure given
	// to RawConn.Write escapes): the bytes left and the error of the
	// callback bound once.
	wmu     sync.Mutex
	wpend   []byte
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

// replyKey identifies a call: its sender and serial.
type replyKey struct {
	sender string
	serial uint32
}

// intercept runs in godbus's reader for every incoming message, before
// the call is handled: a call of the manager object's rawReplyMethods
// that wants a reply is marked as wanting none (godbus then makes none) and
// noted as owed, for the server to answer itself (takeOwed). A call with
// arguments is left to godbus, which refuses it.
func (w *wireConn) intercept(msg *dbus.Message) {
	if msg.Type != dbus.TypeMethodCall || msg.Flags&dbus.FlagNoReplyExpected != 0 || len(msg.Body) != 0 || !w.rawReplies.Load() {
		return
	}
	if path, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath); path != ManagerPath {
		return
	}
	member, _ := msg.Headers[dbus.FieldMember].Value().(string)
	owner, ok := rawReplyMethods[member]
	if !ok {
		return
	}
	if iface, ok := msg.Headers[dbus.FieldInterface].Value().(string); ok && iface != owner {
		return
	}
	sender, _ := msg.Headers[dbus.FieldSender].Value().(string)
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.owed == nil {
		w.owed = make(map[replyKey]time.Time)
	}
	if len(w.owed) >= maxOwed {
		// Calls refused before the method ran (the bound on calls in
		// flight) leave their entry: forget those of a minute ago.
		for k, t := range w.owed {
			if now.Sub(t) > time.Minute {
				delete(w.owed, k)
			}
		}
		if len(w.owed) >= maxOwed {
			return // godbus answers this one
		}
	}
	msg.Flags |= dbus.FlagNoReplyExpected
	w.owed[replyKey{sender, msg.Serial()}] = now
}

// rawReplyMethods are the methods of the manager object whose replies
// the server writes itself, by member, with their interface: replies
// that grow with the number of connections.
var rawReplyMethods = map[string]string{
	"GetManagedObjects": objectManagerInterface,
	"GetStatistics":     ManagerInterface,
}

// maxOwed bounds the replies owed at once.
const maxOwed = 4096

// takeOwed reports whether the server owes the call a reply it writes
// itself, and forgets it.
func (w *wireConn) takeOwed(sender string, serial uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := replyKey{sender, serial}
	_, ok := w.owed[k]
	delete(w.owed, k)
	return ok
}

// write writes whole messages, as writeStream does with one piece; the
// emitter calls it for every batch of signals, and it allocates nothing.
func (w *wireConn) write(b []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if w.writeFn == nil {
		w.writeFn = w.sendPending
	}
	w.wpend, w.werrno = b, 0
	err := w.raw.Write(w.writeFn)
	w.wpend = nil
	if err == nil && w.werrno != 0 {
		err = os.NewSyscallError("sendto", w.werrno)
	}
	return err
}

// sendPending is write's callback of RawConn.Write: it sends w.wpend
// without blocking, and returns false to wait when the socket is full.
func (w *wireConn) sendPending(fd uintptr) bool {
	for len(w.wpend) > 0 {
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&w.wpend[0])), uintptr(len(w.wpend)),
			syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			w.wpend = w.wpend[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			w.werrno = e
			return true
		}
	}
	return true
}

// writeStream writes the pieces next returns, in order, until it returns
// nil, under one hold of the socket's write lock (RawConn.Write, like
// Conn.Write, holds it until the callback is done), so that they never
// interleave with godbus's messages; it waits for the socket to take more
// when it is full. The writes are raw system calls with MSG_DONTWAIT: they
// never block, and a Syscall would wake the Go runtime's monitor thread
// at each burst of signals.
func (w *wireConn) writeStream(next func() []byte) error {
	var errno syscall.Errno
	var pend []byte
	err := w.raw.Write(func(fd uintptr) bool {
		for {
			for len(pend) == 0 {
				if pend = next(); pend == nil {
					return true
				}
			}
			n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&pend[0])), uintptr(len(pend)),
				syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
			switch e {
			case 0:
				pend = pend[n:]
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("sendto", errno)
	}
	return err
}

// replyError writes the error org.freedesktop.DBus.Error.Failed with err's
// text to the call (sender, serial), and returns err.
func (w *wireConn) replyError(sender string, serial uint32, err error) error {
	b, _ := appendMessage(nil, header{typ: dbus.TypeError, flags: dbus.FlagNoReplyExpected, serial: w.serials.GetSerial(),
		replySerial: serial, destination: sender, errorName: "org.freedesktop.DBus.Error.Failed"}, err.Error())
	if werr := w.write(b); werr != nil {
		return werr
	}
	return err
}

// replyArray writes a method reply whose body is one array of n entries
// (signature sig) to the call (sender, serial), or an error reply if an
// entry cannot be encoded. entry appends the i-th entry, which starts at
// an 8-aligned offset (a dict entry or struct), so that its bytes do not
// depend on where it is. The reply is encoded in pieces of about
// writeBatch bytes, each as the socket has taken the last, under one hold
// of the socket's write lock: the GetManagedObjects reply of 10,000
// connections is 9 MB, which a buffer of its own would add to the
// daemon's memory at every call. A first pass finds the body's length,
// which the header gives, keeping nothing.
func (w *wireConn) replyArray(sender string, serial uint32, sig []byte, n int, entry func(e *encoder, i int)) error {
	var size int // bytes of the array's elements
	var scratch []byte
	for i := range n {
		e := encoder{b: scratch[:0]}
		entry(&e, i)
		if e.err != nil {
			return w.replyError(sender, serial, e.err)
		}
		size = (size+7)&^7 + len(e.b)
		scratch = e.b
	}
	if size > maxArrayBytes {
		return w.replyError(sender, serial, fmt.Errorf("dbusapi: wire: an array of %d bytes", size))
	}
	e := encoder{b: make([]byte, 0, writeBatch+len(scratch))}
	e.header(header{typ: dbus.TypeMethodReply, flags: dbus.FlagNoReplyExpected, serial: w.serials.GetSerial(),
		replySerial: serial, destination: sender}, sig)
	if e.err != nil {
		return e.err
	}
	bodyAt := len(e.b)
	e.u32(uint32(size))
	e.align(8)
	binary.LittleEndian.PutUint32(e.b[4:], uint32(len(e.b)-bodyAt+size))

	header := true
	off := 0  // the message's bytes before e.b
	next := 0 // the next entry to encode
	return w.writeStream(func() []byte {
		if header {
			header = false
			return e.b
		}
		if next == n {
			return nil
		}
		off += len(e.b)
		e.b, e.base = e.b[:0], -(off & 7) // aligned as in the message
		for next < n && len(e.b) < writeBatch {
			e.align(8)
			entry(&e, next)
			next++
		}
		return e.b
	})
}

// managedSignature is the signature of a GetManagedObjects reply.
var managedSignature = []byte("a{oa{sa{sv}}}")

// replyManaged writes the GetManagedObjects reply of cs to the call
// (sender, serial), as replyArray does.
func (w *wireConn) replyManaged(sender string, serial uint32, cs managedObjects) error {
	var path []byte
	return w.replyArray(sender, serial, managedSignature, len(cs), func(e *encoder, i int) {
		path = e.managedEntry(&cs[i], path)
	})
}

// serials is the connection's one sequence of message serials, for godbus
// (dbus.SerialGenerator) and for the messages the server writes itself.
// It skips 0, which is not a serial.
type serials struct{ n atomic.Uint32 }

// GetSerial returns the next serial.
func (s *serials) GetSerial() uint32 {
	for {
		if v := s.n.Add(1); v != 0 {
			return v
		}
	}
}

// RetireSerial does nothing: serials are not reused before 2³² messages.
func (s *serials) RetireSerial(uint32) {}

// errNotUnix: the address has no Unix-socket entry this package dials.
var errNotUnix = errors.New("dbusapi: not a unix:path or unix:abstract address")

// dialUnix connects to the first entry of a D-Bus address list
// ("unix:path=/run/dbus/system_bus_socket;...") that is a Unix socket
// path or abstract name.
func dialUnix(address string) (*net.UnixConn, error) {
	var lastErr error = errNotUnix
	for _, entry := range strings.Split(address, ";") {
		transport, params, ok := strings.Cut(entry, ":")
		if !ok || transport != "unix" {
			continue
		}
		var name string
		for _, kv := range strings.Split(params, ",") {
			k, v, _ := strings.Cut(kv, "=")
			v, err := unescapeAddress(v)
			if err != nil {
				return nil, fmt.Errorf("dbusapi: bus address %q: %w", address, err)
			}
			switch k {
			case "path":
				name = v
			case "abstract":
				name = "@" + v
			}
		}
		if name == "" {
			continue
		}
		uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: name, Net: "unix"})
		if err == nil {
			return uc, nil
		}
		lastErr = fmt.Errorf("dbusapi: connect to %s: %w", name, err)
	}
	return nil, lastErr
}

// unescapeAddress undoes the %XX escapes of a D-Bus address value.
func unescapeAddress(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+2 >= len(v) {
			return "", fmt.Errorf("truncated escape in %q", v)
		}
		c, err := strconv.ParseUint(v[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", v)
		}
		b.WriteByte(byte(c))
		i += 2
	}
	return b.String(), nil
}
