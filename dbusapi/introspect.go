package dbusapi

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/introspection"
)

const introspectHeader = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
`

// The standard interfaces, as every object here implements them.
const (
	introspectableXML = ` <interface name="org.freedesktop.DBus.Introspectable">
  <method name="Introspect">
   <arg name="xml_data" type="s" direction="out"/>
  </method>
 </interface>
`
	peerXML = ` <interface name="org.freedesktop.DBus.Peer">
  <method name="Ping"/>
  <method name="GetMachineId">
   <arg name="machine_uuid" type="s" direction="out"/>
  </method>
 </interface>
`
	propertiesXML = ` <interface name="org.freedesktop.DBus.Properties">
  <method name="Get">
   <arg name="interface_name" type="s" direction="in"/>
   <arg name="property_name" type="s" direction="in"/>
   <arg name="value" type="v" direction="out"/>
  </method>
  <method name="GetAll">
   <arg name="interface_name" type="s" direction="in"/>
   <arg name="props" type="a{sv}" direction="out"/>
  </method>
  <method name="Set">
   <arg name="interface_name" type="s" direction="in"/>
   <arg name="property_name" type="s" direction="in"/>
   <arg name="value" type="v" direction="in"/>
  </method>
  <signal name="PropertiesChanged">
   <arg name="interface_name" type="s"/>
   <arg name="changed_properties" type="a{sv}"/>
   <arg name="invalidated_properties" type="as"/>
  </signal>
 </interface>
`
	objectManagerXML = ` <interface name="org.freedesktop.DBus.ObjectManager">
  <method name="GetManagedObjects">
   <arg name="objpath_interfaces_and_properties" type="a{oa{sa{sv}}}" direction="out"/>
  </method>
  <signal name="InterfacesAdded">
   <arg name="object_path" type="o"/>
   <arg name="interfaces_and_properties" type="a{sa{sv}}"/>
  </signal>
  <signal name="InterfacesRemoved">
   <arg name="object_path" type="o"/>
   <arg name="interfaces" type="as"/>
  </signal>
 </interface>
`
)

// objectXML returns the interfaces part of the Introspect reply of an object
// implementing iface (from the introspection package, with its docs) and the
// standard interfaces, ObjectManager too if asked.
func objectXML(iface string, objectManager bool) (string, error) {
	own, err := introspection.XML(iface)
	if err != nil {
		return "", fmt.Errorf("dbusapi: %w", err)
	}
	var b strings.Builder
	b.WriteString(introspectableXML)
	b.WriteString(peerXML)
	b.WriteString(propertiesXML)
	if objectManager {
		b.WriteString(objectManagerXML)
	}
	b.WriteString(" " + own + "\n")
	return b.String(), nil
}

func (s *Server) introspectMethods() map[string]any {
	return map[string]any{
		"Introspect": func(msg dbus.Message) (string, *dbus.Error) {
			return s.introspect(msgPath(msg))
		},
	}
}

// introspect returns the Introspect reply for path: the interfaces of the
// object there and its children, so that a tree walk from "/" finds every
// connection object.
func (s *Server) introspect(path dbus.ObjectPath) (string, *dbus.Error) {
	var body string
	var children []string
	switch path {
	case "/":
		body, children = introspectableXML+peerXML, []string{"org"}
	case "/org":
		body, children = introspectableXML+peerXML, []string{"mptcp"}
	case "/org/mptcp":
		body, children = introspectableXML+peerXML, []string{"PathManager1"}
	case ManagerPath:
		body, children = s.managerXML, []string{"connection"}
	case ConnectionsPath:
		body = introspectableXML + peerXML
		s.mu.RLock()
		ids := make([]uint64, 0, len(s.conns))
		for id := range s.conns {
			ids = append(ids, id)
		}
		s.mu.RUnlock()
		slices.SortFunc(ids, cmp.Compare)
		for _, id := range ids {
			children = append(children, strconv.FormatUint(id, 10))
		}
	default:
		if _, err := s.connection(path); err != nil {
			return "", err
		}
		body = s.connectionXML
	}
	var b strings.Builder
	b.WriteString(introspectHeader)
	b.WriteString(body)
	for _, c := range children {
		b.WriteString(` <node name="` + c + `"/>` + "\n")
	}
	b.WriteString("</node>\n")
	return b.String(), nil
}
