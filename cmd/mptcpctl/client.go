package main

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

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

// client is mptcpctl's view of the daemon: the bus connection and the
// manager object.
type client struct {
	conn *dbus.Conn
	mgr  dbus.BusObject
}

// dial connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS when set).
func dial() (*client, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		where := "the system bus"
		if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
			where += " at " + a
		}
		return nil, &exitError{code: exitUnavailable, err: fmt.Errorf("cannot reach %s: %w", where, err)}
	}
	return &client{conn: conn, mgr: conn.Object(busName, managerPath)}, nil
}

func (c *client) close() { c.conn.Close() }

// manager holds the manager object's properties.
type manager struct {
	Version           string         `json:"version"`
	ControlMode       string         `json:"control_mode"`
	Controller        string         `json:"controller"`
	Policy            string         `json:"policy"`
	KernelPathManager string         `json:"kernel_path_manager"`
	Endpoints         []endpoint     `json:"endpoints"`
	Limits            limits         `json:"limits"`
	LocalAddresses    []localAddress `json:"local_addresses"`
	Connections       int            `json:"connections"`
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
	Token              uint32      `json:"token"`
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
		"Limits": &m.Limits, "LocalAddresses": &m.LocalAddresses,
	}
}

func (c *client) manager() (manager, error) {
	var props map[string]dbus.Variant
	if err := c.mgr.Call(propsIface+".GetAll", 0, managerIface).Store(&props); err != nil {
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
	return m, err
}

// addresses lists the local addresses with the filters' verdict.
func (c *client) addresses() ([]addressInfo, error) {
	out := []addressInfo{}
	if err := c.mgr.Call(managerIface+".ListAddresses", 0).Store(&out); err != nil {
		return nil, callError(err)
	}
	return out, nil
}

// connections lists every connection object, by number.
func (c *client) connections() ([]connection, error) {
	var objs map[dbus.ObjectPath]map[string]map[string]dbus.Variant
	if err := c.mgr.Call(objMgrIface+".GetManagedObjects", 0).Store(&objs); err != nil {
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
	if err := c.conn.Object(busName, path).Call(propsIface+".GetAll", 0, connIface).Store(&props); err != nil {
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
	return c.mgr.Call(managerIface+"."+method, 0, args...)
}

func (c *client) callConn(path dbus.ObjectPath, method string, args ...any) *dbus.Call {
	return c.conn.Object(busName, path).Call(connIface+"."+method, 0, args...)
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
