package dbusapi

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/introspection"
)

// Names of the service on the bus (the contract in docs/dbus-api.md).
const (
	BusName                         = "org.mptcp.PathManager1"
	ManagerPath     dbus.ObjectPath = "/org/mptcp/PathManager1"
	ConnectionsPath                 = ManagerPath + "/connection" // parent of the connection objects

	ManagerInterface    = introspection.Manager
	ConnectionInterface = introspection.Connection
	ControllerInterface = introspection.Controller
)

// Standard interfaces.
const (
	propertiesInterface     = "org.freedesktop.DBus.Properties"
	introspectableInterface = "org.freedesktop.DBus.Introspectable"
	peerInterface           = "org.freedesktop.DBus.Peer"
	objectManagerInterface  = "org.freedesktop.DBus.ObjectManager"
)

// ErrNameTaken is wrapped by the error of Server.RequestName when another
// connection owns the service name.
var ErrNameTaken = errors.New("dbusapi: the service name is already owned")

// ConnectionPath returns the object path of the connection with the given id.
func ConnectionPath(id uint64) dbus.ObjectPath {
	return ConnectionsPath + "/" + dbus.ObjectPath(strconv.FormatUint(id, 10))
}

// connectionID parses a connection object path. It accepts only the form
// ConnectionPath prints.
func connectionID(p dbus.ObjectPath) (uint64, bool) {
	s, ok := strings.CutPrefix(string(p), string(ConnectionsPath)+"/")
	if !ok || s == "" || (s[0] == '0') {
		return 0, false
	}
	id, err := strconv.ParseUint(s, 10, 64)
	return id, err == nil
}

// addrString is how an address goes on the bus: "" when unset.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
