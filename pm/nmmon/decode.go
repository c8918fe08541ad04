package nmmon

import (
	"fmt"
	"maps"
	"slices"

	"github.com/godbus/dbus/v5"
)

// deviceInfo is what one device's properties say.
type deviceInfo struct {
	dev Device
	// active is the device's active connection object, "" when it has
	// none (NetworkManager says "/") or the property is odd.
	active dbus.ObjectPath
}

// decodeDevice reads the properties of org.freedesktop.NetworkManager.Device
// that the watcher uses. A missing property or one of another type leaves
// its field at the zero value and adds a problem to the list; the caller
// leaves out a device without an Interface.
func decodeDevice(props map[string]dbus.Variant) (deviceInfo, []string) {
	var (
		info     deviceInfo
		problems []string
	)
	str := func(name string, optional bool) string {
		s, p := prop[string](props, name, optional)
		problems = appendProblem(problems, p)
		return s
	}
	info.dev.Interface = str("Interface", false)
	info.dev.IPInterface = str("IpInterface", true)
	managed, p := prop[bool](props, "Managed", false)
	problems = appendProblem(problems, p)
	info.dev.Managed = managed
	state, p := prop[uint32](props, "State", false)
	problems = appendProblem(problems, p)
	info.dev.Activated = state == StateActivated
	metered, p := prop[uint32](props, "Metered", false)
	problems = appendProblem(problems, p)
	info.dev.Metered = Metered(metered)
	active, p := prop[dbus.ObjectPath](props, "ActiveConnection", false)
	problems = appendProblem(problems, p)
	switch {
	case p != "" || active == "/":
	case !active.IsValid():
		problems = append(problems, fmt.Sprintf("property ActiveConnection %q is not an object path", string(active)))
	default:
		info.active = active
	}
	return info, problems
}

// prop returns the property name of type T. Missing (unless optional) or of
// another type, it returns the zero value and says why.
func prop[T any](props map[string]dbus.Variant, name string, optional bool) (T, string) {
	var zero T
	v, ok := props[name]
	if !ok {
		if optional {
			return zero, ""
		}
		return zero, "no property " + name
	}
	t, ok := v.Value().(T)
	if !ok {
		return zero, fmt.Sprintf("property %s has type %s, want %s", name, v.Signature(), dbus.SignatureOf(zero))
	}
	return t, ""
}

func appendProblem(problems []string, p string) []string {
	if p == "" {
		return problems
	}
	return append(problems, p)
}

// decodeConnectionPath reads the Connection property of an active
// connection: the object path of its profile.
func decodeConnectionPath(v dbus.Variant) (dbus.ObjectPath, string) {
	p, ok := v.Value().(dbus.ObjectPath)
	if !ok {
		return "", fmt.Sprintf("property Connection has type %s, want o", v.Signature())
	}
	if !p.IsValid() || p == "/" {
		return "", fmt.Sprintf("property Connection is %q", string(p))
	}
	return p, ""
}

// decodeMPTCP reads connection.mptcp-flags from a profile's settings (the
// reply of GetSettings). Absent flags are 0, the default. Without a
// "connection" setting, or with flags of another type, the setting is
// unknown and the problem says why.
func decodeMPTCP(settings map[string]map[string]dbus.Variant) (MPTCPSetting, string) {
	conn, ok := settings["connection"]
	if !ok {
		return MPTCPSetting{}, fmt.Sprintf("no connection setting (settings: %v)", slices.Sorted(maps.Keys(settings)))
	}
	v, ok := conn["mptcp-flags"]
	if !ok {
		return MPTCPSetting{Known: true}, ""
	}
	f, ok := v.Value().(uint32)
	if !ok {
		return MPTCPSetting{}, fmt.Sprintf("connection.mptcp-flags has type %s, want u", v.Signature())
	}
	flags := MPTCPFlags(f)
	return MPTCPSetting{Known: true, Disabled: flags&MPTCPDisabled != 0, Flags: flags}, ""
}
