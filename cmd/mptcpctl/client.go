package main

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"
)

// The D-Bus names of the contract (see introspection/).
const (
	busName       = "org.mptcp.PathManager1"
	managerPath   = dbus.ObjectPath("/org/mptcp/PathManager1")
	managerIface  = "org.mptcp.PathManager1.Manager"
	connIface     = "org.mptcp.PathManager1.Connection"
	connPathBase  = "/org/mptcp/PathManager1/connection/"
	errorPrefix   = "org.mptcp.PathManager1.Error."
	propsIface    = "org.freedesktop.DBus.Properties"
	objMgrIface   = "org.freedesktop.DBus.ObjectManager"
	dbusNoService = "org.freedesktop.DBus.Error.ServiceUnknown"
)

// client is mptcpctl's view of the daemon: the bus connection and the
// manager object.
type client struct {
	conn *dbus.Conn
	mgr  dbus.BusObject
}

func dial() (*client, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, &exitError{code: exitUnavailable, err: fmt.Errorf("cannot reach the system bus: %w", err)}
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

func (c *client) manager() (manager, error) {
	var props map[string]dbus.Variant
	if err := c.mgr.Call(propsIface+".GetAll", 0, managerIface).Store(&props); err != nil {
		return manager{}, callError(err)
	}
	var m manager
	err := storeProps(props, map[string]any{
		"Version": &m.Version, "ControlMode": &m.ControlMode, "Controller": &m.Controller,
		"Policy": &m.Policy, "KernelPathManager": &m.KernelPathManager, "Endpoints": &m.Endpoints,
		"Limits": &m.Limits, "LocalAddresses": &m.LocalAddresses,
	})
	if m.Endpoints == nil {
		m.Endpoints = []endpoint{}
	}
	if m.LocalAddresses == nil {
		m.LocalAddresses = []localAddress{}
	}
	return m, err
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

func decodeConnection(path dbus.ObjectPath, props map[string]dbus.Variant) (connection, error) {
	cn := connection{Path: string(path)}
	cn.Number, _ = strconv.ParseUint(strings.TrimPrefix(string(path), connPathBase), 10, 64)
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

// resolve turns a connection argument into its object path: a number as
// the connections table shows it ("3" or "#3"), a token in hex as
// `ip mptcp monitor` prints it ("0x8fa8e6a2" or eight hex digits), or an
// object path.
func (c *client) resolve(arg string) (dbus.ObjectPath, error) {
	switch {
	case strings.HasPrefix(arg, connPathBase):
		return dbus.ObjectPath(arg), nil
	case strings.HasPrefix(arg, "0x") || strings.HasPrefix(arg, "0X") || len(arg) == 8:
		tok, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(arg), "0x"), 16, 32)
		if err != nil {
			return "", usageErrorf("%q is not a token (8 hex digits, as `mptcpctl connections` shows)", arg)
		}
		var p dbus.ObjectPath
		if err := c.mgr.Call(managerIface+".GetConnectionByToken", 0, uint32(tok)).Store(&p); err != nil {
			return "", callError(err)
		}
		return p, nil
	default:
		n, err := strconv.ParseUint(strings.TrimPrefix(arg, "#"), 10, 64)
		if err != nil || n == 0 {
			return "", usageErrorf("%q is neither a connection number nor a token", arg)
		}
		return dbus.ObjectPath(fmt.Sprintf("%s%d", connPathBase, n)), nil
	}
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

// callError turns a D-Bus error into an exitError with a message that says
// what went wrong and, where it can, what to do.
func callError(err error) error {
	var de dbus.Error
	if !errors.As(err, &de) {
		var dep *dbus.Error
		if !errors.As(err, &dep) {
			return &exitError{code: exitFailure, err: err}
		}
		de = *dep
	}
	msg := ""
	if len(de.Body) > 0 {
		msg, _ = de.Body[0].(string)
	}
	name := strings.TrimPrefix(de.Name, errorPrefix)
	switch de.Name {
	case dbusNoService, "org.freedesktop.DBus.Error.NameHasNoOwner":
		return &exitError{code: exitUnavailable, err: errors.New("mptcp-pmd is not running (no owner of " + busName + " on the system bus); start it with `systemctl start mptcp-pmd`")}
	case errorPrefix + "PermissionDenied", "org.freedesktop.DBus.Error.AccessDenied":
		return &exitError{code: exitPermission, err: fmt.Errorf("permission denied: %s (run as root, as a member of an allowed group, or with polkit authorization)", msg)}
	case errorPrefix + "NotController":
		return &exitError{code: exitFailure, err: fmt.Errorf("not the controller: %s (a controller has claimed path management; see `mptcpctl status`)", msg)}
	case errorPrefix + "NotSupported":
		return &exitError{code: exitFailure, err: fmt.Errorf("not supported: %s (userspace commands need net.mptcp.path_manager=userspace when the connection was made)", msg)}
	case errorPrefix + "NotFound":
		return &exitError{code: exitNotFound, err: fmt.Errorf("not found: %s", msg)}
	case "org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod":
		return &exitError{code: exitNotFound, err: fmt.Errorf("not found: %s", msg)}
	}
	if strings.HasPrefix(de.Name, errorPrefix) {
		return &exitError{code: exitFailure, err: fmt.Errorf("%s: %s", name, msg)}
	}
	return &exitError{code: exitFailure, err: fmt.Errorf("%s: %s", de.Name, msg)}
}
