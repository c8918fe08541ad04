package dbusapi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

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
	w := &wireConn{uc: uc}
	conn, err := dbus.ConnectUnix(uc, append(opts, dbus.WithSerialGenerator(&w.serials))...)
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
	serials serials
}

// write writes whole messages.
func (w *wireConn) write(b []byte) error {
	_, err := w.uc.Write(b)
	return err
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
