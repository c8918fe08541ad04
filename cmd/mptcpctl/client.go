package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// The D-Bus names of the contract (see introspection/).
const (
	busName      = "org.mptcp.PathManager1"
	managerPath  = dbus.ObjectPath("/org/mptcp/PathManager1")
	managerIface = "org.mptcp.PathManager1.Manager"
	connIface    = "org.mptcp.PathManager1.Connection"
	connPathBase = "/org/mptcp/PathManager1/connection/"
	errorPrefix  = "org.mptcp.PathManager1.Error."
	propsIface   = "org.freedesktop.DBus.Properties"
	objMgrIface  = "org.freedesktop.DBus.ObjectManager"
)

// daemonName is the daemon, as messages name it.
const daemonName = "mptcp-pmd"

// client is mptcpctl's view of the daemon: the bus connection and the
// manager object.
type client struct {
	conn *dbus.Conn
	mgr  dbus.BusObject
	// ctx ends every request at once: mptcpctl got SIGINT or SIGTERM.
	ctx context.Context
	// timeout is the most each request waits for its answer (--timeout).
	timeout time.Duration
}

// dial connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS when set),
// waiting at most timeout for the bus to answer.
func dial(ctx context.Context, timeout time.Duration) (*client, error) {
	where := "the system bus"
	if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
		where += " at " + a
	}
	c := &client{ctx: ctx, timeout: timeout}
	err := c.wait(where, func(ctx context.Context) error {
		conn, err := connect(ctx)
		if err != nil && ctx.Err() == nil {
			return &exitError{code: exitUnavailable, err: fmt.Errorf("cannot reach %s: %w", where, err)}
		}
		c.conn = conn
		return err
	})
	if err != nil {
		return nil, err
	}
	c.mgr = c.conn.Object(busName, managerPath)
	return c, nil
}

// connect connects to the system bus (connecting, authenticating, Hello)
// unless ctx ends first. godbus's connecting takes no context: it goes on
// in the background, and a connection made too late is closed.
func connect(ctx context.Context) (*dbus.Conn, error) {
	type result struct {
		conn *dbus.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		conn, err := dbus.ConnectSystemBus()
		ch <- result{conn, err}
	}()
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.err == nil {
				r.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// wait makes one request of who (the daemon or the bus), f, with a
// context that ends when the answer is overdue (c.timeout from now) or
// when mptcpctl is interrupted, and explains f's error: a timeoutError
// when the answer was overdue, the context's cause when interrupted,
// otherwise callError's explanation. Every request mptcpctl makes goes
// through wait: this is where its deadline is set.
func (c *client) wait(who string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(c.ctx, c.timeout)
	defer cancel()
	err := f(ctx)
	switch {
	case err == nil:
		return nil
	case c.ctx.Err() != nil:
		return context.Cause(c.ctx)
	case errors.Is(err, context.DeadlineExceeded):
		return timeoutError(who, c.timeout)
	}
	return callError(err)
}

// call calls a method of obj, one of the daemon's objects, through wait.
// The Call's Err is explained (an *exitError, or the cause of the
// interruption).
func (c *client) call(obj dbus.BusObject, method string, args ...any) *dbus.Call {
	var call *dbus.Call
	err := c.wait(daemonName, func(ctx context.Context) error {
		call = obj.CallWithContext(ctx, method, 0, args...)
		return call.Err
	})
	call.Err = err
	return call
}

// addMatch subscribes to the signals that match, through wait.
func (c *client) addMatch(options ...dbus.MatchOption) error {
	return c.wait("the system bus", func(ctx context.Context) error {
		return c.conn.AddMatchSignalContext(ctx, options...)
	})
}

func (c *client) close() { c.conn.Close() }

// manager holds the manager object's properties.
type manager struct {
	Version           string            `json:"version"`
	ControlMode       string            `json:"control_mode"`
	Controller        string            `json:"controller"`
	Policy            string            `json:"policy"`
	KernelPathManager string            `json:"kernel_path_manager"`
	Endpoints         []endpoint        `json:"endpoints"`
	Limits            limits            `json:"limits"`
	LocalAddresses    []localAddress    `json:"local_addresses"`
	SignalsDropped    uint64            `json:"signals_dropped"`
	Warnings          []string          `json:"warnings"`
	Preferences       map[string]string `json:"interface_preferences"`
	Connections       int               `json:"connections"`
}

type endpoint struct {
	ID        uint8    `json:"id"`
	Address   string   `json:"address"`
	Port      uint16   `json:"port"`
	Flags     []string `json:"flags"`
	Interface string   `json:"interface"`
	Origin    string   `json:"origin"`
}

type limits struct {
	Subflows        uint32 `json:"subflows"`
	AddAddrAccepted uint32 `json:"add_addr_accepted"`
}

type localAddress struct {
	Interface string `json:"interface"`
	Address   string `json:"address"`
}

// addressInfo is one entry of Manager.ListAddresses.
type addressInfo struct {
	Interface string `json:"interface"`
	Address   string `json:"address"`
	Usable    bool   `json:"usable"`
	Reason    string `json:"reason"` // why it is not usable; "" when usable
}

// connection holds one connection object's properties.
type connection struct {
	Number             uint64      `json:"number"`
	Path               string      `json:"path"`
	Token              hexToken    `json:"token"`
	ServerSide         bool        `json:"server_side"`
	State              string      `json:"state"`
	LocalAddress       string      `json:"local_address"`
	LocalPort          uint16      `json:"local_port"`
	RemoteAddress      string      `json:"remote_address"`
	RemotePort         uint16      `json:"remote_port"`
	DenyJoinID0        bool        `json:"deny_join_id0"`
	Subflows           []subflow   `json:"subflows"`
	RemoteAddresses    []announced `json:"remote_addresses"`
	AnnouncedAddresses []announced `json:"announced_addresses"`
}

// hexToken is a connection token, printed as mptcpctl prints it everywhere
// (and as the daemon's journal fields have it): eight hex digits, also in
// JSON, where it is a string.
type hexToken uint32

// String returns the eight hex digits.
func (t hexToken) String() string { return fmt.Sprintf("%08x", uint32(t)) }

// MarshalJSON returns the token as a JSON string of eight hex digits.
func (t hexToken) MarshalJSON() ([]byte, error) { return []byte(`"` + t.String() + `"`), nil }

// UnmarshalJSON reads what MarshalJSON writes.
func (t *hexToken) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil || len(s) != 8 {
		return fmt.Errorf("token: %q is not eight hex digits", s)
	}
	*t = hexToken(v)
	return nil
}

type subflow struct {
	LocalID       uint8  `json:"local_id"`
	RemoteID      uint8  `json:"remote_id"`
	LocalAddress  string `json:"local_address"`
	LocalPort     uint16 `json:"local_port"`
	RemoteAddress string `json:"remote_address"`
	RemotePort    uint16 `json:"remote_port"`
	Backup        bool   `json:"backup"`
	Interface     string `json:"interface"`
}

type announced struct {
	ID      uint8  `json:"id"`
	Address string `json:"address"`
	Port    uint16 `json:"port"`
}

// storeProps copies the variants of props into the fields pointed to by
// dest, by property name. A missing property leaves its field alone.
func storeProps(props map[string]dbus.Variant, dest map[string]any) error {
	for name, ptr := range dest {
		v, ok := props[name]
		if !ok {
			continue
		}
		if err := dbus.Store([]any{v.Value()}, ptr); err != nil {
			return fmt.Errorf("property %s: %w", name, err)
		}
	}
	return nil
}

// managerFields points at the fields of m by property name.
func managerFields(m *manager) map[string]any {
	return map[string]any{
		"Version": &m.Version, "ControlMode": &m.ControlMode, "Controller": &m.Controller,
		"Policy": &m.Policy, "KernelPathManager": &m.KernelPathManager, "Endpoints": &m.Endpoints,
		"Limits": &m.Limits, "LocalAddresses": &m.LocalAddresses, "SignalsDropped": &m.SignalsDropped,
		"Warnings": &m.Warnings, "InterfacePreferences": &m.Preferences,
	}
}

func (c *client) manager() (manager, error) {
	var props map[string]dbus.Variant
	if err := c.call(c.mgr, propsIface+".GetAll", managerIface).Store(&props); err != nil {
		return manager{}, callError(err)
	}
	var m manager
	err := storeProps(props, managerFields(&m))
	if m.Endpoints == nil {
		m.Endpoints = []endpoint{}
	}
	if m.LocalAddresses == nil {
		m.LocalAddresses = []localAddress{}
	}
	if m.Warnings == nil {
		m.Warnings = []string{}
	}
	if m.Preferences == nil {
		m.Preferences = map[string]string{}
	}
	return m, err
}

// addresses lists the local addresses with the filters' verdict.
func (c *client) addresses() ([]addressInfo, error) {
	out := []addressInfo{}
	if err := c.call(c.mgr, managerIface+".ListAddresses").Store(&out); err != nil {
		return nil, callError(err)
	}
	return out, nil
}

// connections lists every connection object, by number.
func (c *client) connections() ([]connection, error) {
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := c.call(c.mgr, objMgrIface+".GetManagedObjects").Store(&objs); err != nil {
		return nil, callError(err)
	}
	conns := []connection{}
	for path, ifaces := range objs {
		props, ok := ifaces[connIface]
		if !ok {
			continue
		}
		cn, err := decodeConnection(path, props)
		if err != nil {
			return nil, err
		}
		conns = append(conns, cn)
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].Number < conns[j].Number })
	return conns, nil
}

// connection reads the connection object at path.
func (c *client) connection(path dbus.ObjectPath) (connection, error) {
	var props map[string]dbus.Variant
	if err := c.call(c.conn.Object(busName, path), propsIface+".GetAll", connIface).Store(&props); err != nil {
		return connection{}, callError(err)
	}
	return decodeConnection(path, props)
}

func decodeConnection(path dbus.ObjectPath, props map[string]dbus.Variant) (connection, error) {
	cn := connection{Path: string(path), Number: connNumber(path)}
	err := storeProps(props, map[string]any{
		"Token": &cn.Token, "ServerSide": &cn.ServerSide, "State": &cn.State,
		"LocalAddress": &cn.LocalAddress, "LocalPort": &cn.LocalPort,
		"RemoteAddress": &cn.RemoteAddress, "RemotePort": &cn.RemotePort,
		"DenyJoinId0": &cn.DenyJoinID0, "Subflows": &cn.Subflows,
		"RemoteAddresses": &cn.RemoteAddresses, "AnnouncedAddresses": &cn.AnnouncedAddresses,
	})
	if cn.Subflows == nil {
		cn.Subflows = []subflow{}
	}
	if cn.RemoteAddresses == nil {
		cn.RemoteAddresses = []announced{}
	}
	if cn.AnnouncedAddresses == nil {
		cn.AnnouncedAddresses = []announced{}
	}
	return cn, err
}

// connNumber is the number n of a connection object path, 0 if the path is
// not one.
func connNumber(p dbus.ObjectPath) uint64 {
	n, _ := strconv.ParseUint(strings.TrimPrefix(string(p), connPathBase), 10, 64)
	return n
}

// connRef is a connection as the command line names it: its object path,
// or its token.
type connRef struct {
	path    dbus.ObjectPath
	token   uint32
	byToken bool
}

// parseConn parses a connection argument: a number as the connections
// table shows it ("3" or "#3"), a token in hex as `ip mptcp monitor`
// prints it ("0x8fa8e6a2" or eight hex digits), or an object path.
func parseConn(arg string) (connRef, error) {
	switch {
	case strings.HasPrefix(arg, connPathBase) && dbus.ObjectPath(arg).IsValid():
		return connRef{path: dbus.ObjectPath(arg)}, nil
	case strings.HasPrefix(arg, "0x") || strings.HasPrefix(arg, "0X") || len(arg) == 8:
		tok, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(arg), "0x"), 16, 32)
		if err != nil {
			return connRef{}, usageErrorf("%q is not a token (8 hex digits, as `mptcpctl connections` shows)", arg)
		}
		return connRef{token: uint32(tok), byToken: true}, nil
	default:
		n, err := strconv.ParseUint(strings.TrimPrefix(arg, "#"), 10, 64)
		if err != nil || n == 0 {
			return connRef{}, usageErrorf("%q is neither a connection number nor a token", arg)
		}
		return connRef{path: dbus.ObjectPath(fmt.Sprintf("%s%d", connPathBase, n))}, nil
	}
}

// resolve returns the object path of a connection.
func (c *client) resolve(r connRef) (dbus.ObjectPath, error) {
	if !r.byToken {
		return r.path, nil
	}
	var p dbus.ObjectPath
	if err := c.callManager("GetConnectionByToken", r.token).Store(&p); err != nil {
		return "", callError(err)
	}
	return p, nil
}

// callManager calls a method of the manager object.
func (c *client) callManager(method string, args ...any) *dbus.Call {
	return c.call(c.mgr, managerIface+"."+method, args...)
}

func (c *client) callConn(path dbus.ObjectPath, method string, args ...any) *dbus.Call {
	return c.call(c.conn.Object(busName, path), connIface+"."+method, args...)
}

// parseAddrPort parses "10.0.0.1:80", "[fd00::1]:80", or with allowBare an
// address alone (port 0).
func parseAddrPort(s string, allowBare bool) (netip.Addr, uint16, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), ap.Port(), nil
	}
	if allowBare {
		if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			return a, 0, nil
		}
	}
	want := "ADDRESS:PORT"
	if allowBare {
		want = "ADDRESS[:PORT]"
	}
	return netip.Addr{}, 0, usageErrorf("%q is not %s (IPv6 as [ADDRESS]:PORT)", s, want)
}
