package dbusapi

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// Every method validates its arguments first, then (for a mutating method)
// identifies and authorizes the caller, and only then calls the backend.

func (s *Server) managerMethods() map[string]any {
	return map[string]any{
		"RegisterController":     s.registerController,
		"UnregisterController":   s.unregisterController,
		"RevokeController":       s.revokeController,
		"GetConnectionByToken":   s.getConnectionByToken,
		"AddEndpoint":            s.addEndpoint,
		"RemoveEndpoint":         s.removeEndpoint,
		"SetEndpointFlags":       s.setEndpointFlags,
		"FlushEndpoints":         s.flushEndpoints,
		"SetLimits":              s.setLimits,
		"SetInterfacePreference": s.setInterfacePreference,
		"ListAddresses":          s.listAddresses,
		"GetStatistics":          s.getStatistics,
		"GetCounters":            s.getCounters,
	}
}

func (s *Server) connectionMethods() map[string]any {
	return map[string]any{
		"AnnounceAddress":  s.announceAddress,
		"RemoveAddress":    s.removeAddress,
		"CreateSubflow":    s.createSubflow,
		"RemoveSubflow":    s.removeSubflow,
		"SetSubflowBackup": s.setSubflowBackup,
		"GetStatistics":    s.getConnectionStatistics,
	}
}

// caller identifies the sender of msg: its unique name and UID (from the
// cache the guard filled).
func (s *Server) caller(msg dbus.Message) (service.Caller, *dbus.Error) {
	sender := msgSender(msg)
	if sender == "" {
		return service.Caller{}, dbusError(fmt.Errorf("%w: the call has no sender", service.ErrPermissionDenied))
	}
	uid, err := s.inFlight.uids.lookup(s.ctx, sender)
	if err != nil {
		return service.Caller{}, dbusError(fmt.Errorf("dbusapi: identify caller %s: %w", sender, err))
	}
	return service.Caller{Name: sender, UID: uid}, nil
}

// authorize identifies the sender of msg and asks the Authorizer whether it
// may call a mutating method (the member of msg), once the user's turn
// among its authorization checks has come.
func (s *Server) authorize(msg dbus.Message) (service.Caller, *dbus.Error) {
	c, derr := s.caller(msg)
	if derr != nil {
		return service.Caller{}, derr
	}
	interactive := msg.Flags&dbus.FlagAllowInteractiveAuthorization != 0
	end := s.inFlight.startCheck(s.ctx, c.UID, interactive)
	if end == nil {
		return service.Caller{}, dbusError(fmt.Errorf("%w: too many authorization checks in flight for uid %d", service.ErrBusy, c.UID))
	}
	defer end()
	var err error
	if ma, ok := s.auth.(MethodAuthorizer); ok {
		member, _ := msg.Headers[dbus.FieldMember].Value().(string)
		err = ma.AuthorizeMethod(s.ctx, member, c.Name, c.UID, interactive)
	} else {
		err = s.auth.Authorize(s.ctx, c.Name, c.UID, interactive)
	}
	if err != nil {
		return service.Caller{}, dbusError(err)
	}
	return c, nil
}

func invalid(format string, args ...any) *dbus.Error {
	return dbusError(fmt.Errorf("%w: "+format, append([]any{service.ErrInvalidArguments}, args...)...))
}

// maxAddressText is the length of the longest address text parsed: an IPv6
// address with an interface name as its zone takes at most 45+1+15 bytes.
const maxAddressText = 64

// maxQuoted is how much of an argument an error message repeats.
const maxQuoted = 64

// quote quotes an argument for an error message, cut to maxQuoted bytes.
func quote(text string) string {
	if len(text) <= maxQuoted {
		return strconv.Quote(text)
	}
	return fmt.Sprintf("%q... (%d bytes)", text[:maxQuoted], len(text))
}

// broadcast4 is the IPv4 limited broadcast address.
var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// parseUnicast parses an address argument naming one end of a path: an
// address a host can have, not unspecified (0.0.0.0, ::), multicast or the
// IPv4 broadcast address. It may have a zone.
func parseUnicast(field, text string) (netip.Addr, *dbus.Error) {
	if len(text) > maxAddressText {
		return netip.Addr{}, invalid("%s %s: too long for an IP address", field, quote(text))
	}
	a, err := netip.ParseAddr(text)
	if err != nil {
		return netip.Addr{}, invalid("%s: %v", field, err)
	}
	if a.IsUnspecified() || a.IsMulticast() || a.Unmap() == broadcast4 {
		return netip.Addr{}, invalid("%s %q: not a unicast address", field, text)
	}
	return a, nil
}

// parseAddr parses an address argument with parseUnicast. A zone is
// refused: only AddEndpoint has a use for one, and handles it itself.
func parseAddr(field, text string) (netip.Addr, *dbus.Error) {
	a, derr := parseUnicast(field, text)
	if derr != nil {
		return netip.Addr{}, derr
	}
	if a.Zone() != "" {
		return netip.Addr{}, invalid("%s %q: a zone is not accepted here", field, text)
	}
	return a, nil
}

// checkInterface checks an interface name argument the way Linux checks a
// new link's name (dev_valid_name): "" (none), or 1 to 15 bytes, not "."
// or "..", without '/', ':', NUL or white space.
func checkInterface(field, name string) *dbus.Error {
	if name == "" {
		return nil
	}
	if len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\v\f\r\x00") ||
		strings.IndexByte(name, 0xa0) >= 0 {
		return invalid("%s %s: not an interface name", field, quote(name))
	}
	return nil
}

// Bounds of a flag list: the words are pm's (six, of up to eight letters);
// the bounds keep a list from being unreasonably long.
const (
	maxFlagWords   = 16
	maxFlagWordLen = 16
)

// parseFlagWords parses a bounded list of endpoint flag words; an unknown
// word is InvalidArguments naming it.
func parseFlagWords(words []string) (pm.Flags, *dbus.Error) {
	if len(words) > maxFlagWords {
		return 0, invalid("flags: %d words, at most %d", len(words), maxFlagWords)
	}
	var f pm.Flags
	for _, w := range words {
		b, err := pm.ParseFlags([]string{w})
		if len(w) > maxFlagWordLen || err != nil {
			return 0, invalid("flags: unknown flag %s", quote(w))
		}
		f |= b
	}
	return f, nil
}

// checkObjectPath checks an object path argument. The bus checks the paths
// it passes on; a peer-to-peer connection might not.
func checkObjectPath(field string, p dbus.ObjectPath) *dbus.Error {
	if !p.IsValid() {
		return invalid("%s %s: not an object path", field, quote(string(p)))
	}
	return nil
}

// noOptions refuses every key of an options dictionary that has none.
func noOptions(opts map[string]dbus.Variant) *dbus.Error {
	if len(opts) == 0 {
		return nil
	}
	return invalid("unknown option %s", quote(slices.Sorted(maps.Keys(opts))[0]))
}

func (s *Server) registerController(msg dbus.Message, path dbus.ObjectPath, opts map[string]dbus.Variant) *dbus.Error {
	if err := checkObjectPath("controller", path); err != nil {
		return err
	}
	if err := noOptions(opts); err != nil {
		return err
	}
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.ctl.register(c, string(path)))
}

// unregisterController ends the caller's claim. The name that holds the
// claim is not authorized again: it was when it registered, giving control
// back needs no privilege, and its authorization may since have lapsed
// (polkit's temporary authorization expires). Anyone else is authorized
// first, as for every mutating method, and then refused by the backend
// (NotController).
func (s *Server) unregisterController(msg dbus.Message, path dbus.ObjectPath) *dbus.Error {
	if err := checkObjectPath("controller", path); err != nil {
		return err
	}
	var (
		c    service.Caller
		derr *dbus.Error
	)
	if s.holdsClaim(msgSender(msg), string(path)) {
		c, derr = s.caller(msg)
	} else {
		c, derr = s.authorize(msg)
	}
	if derr != nil {
		return derr
	}
	return dbusError(s.ctl.unregister(c, string(path)))
}

// holdsClaim reports whether sender holds the claim with path: the
// service's published state names it the controller, and it registered
// that path through this server. The backend checks again as it ends the
// claim.
func (s *Server) holdsClaim(sender, path string) bool {
	if sender == "" {
		return false
	}
	s.mu.RLock()
	controller := s.manager.Controller
	s.mu.RUnlock()
	return controller == sender && s.ctl.holds(sender, path)
}

// revokeController ends the claim of whoever holds it, at an authorized
// caller's request: the backend tells the controller (Release "revoked")
// and resumes the built-in policy. Without a claim it is NotController.
func (s *Server) revokeController(msg dbus.Message) *dbus.Error {
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	r, ok := s.b.(ControllerRevoker)
	if !ok {
		return dbusError(fmt.Errorf("%w: revoke controller: this backend cannot", service.ErrNotSupported))
	}
	return dbusError(r.RevokeController(s.ctx, c))
}

func (s *Server) getConnectionByToken(token uint32) (dbus.ObjectPath, *dbus.Error) {
	id, err := s.b.ConnectionByToken(s.ctx, token)
	if err != nil {
		return "", dbusError(err)
	}
	return ConnectionPath(id), nil
}

func (s *Server) addEndpoint(msg dbus.Message, address string, port uint16, flags []string, iface string, id uint8) (uint8, *dbus.Error) {
	a, derr := parseUnicast("address", address)
	if derr != nil {
		return 0, derr
	}
	f, derr := parseFlagWords(flags)
	if derr != nil {
		return 0, derr
	}
	if derr := checkInterface("interface", iface); derr != nil {
		return 0, derr
	}
	// A zone names the interface of a link-local address; it goes into the
	// interface argument, and must not contradict it.
	if zone := a.Zone(); zone != "" {
		if !a.Is6() || !a.IsLinkLocalUnicast() {
			return 0, invalid("address %q: a zone is only accepted on an IPv6 link-local address", address)
		}
		if derr := checkInterface("zone of address", zone); derr != nil {
			return 0, derr
		}
		if iface != "" && iface != zone {
			return 0, invalid("address %q: the zone contradicts interface %q", address, iface)
		}
		iface, a = zone, a.WithZone("")
	}
	c, derr := s.authorize(msg)
	if derr != nil {
		return 0, derr
	}
	e := policy.Endpoint{Address: pm.Address{ID: id, Addr: a, Port: port, Flags: f}, Interface: iface}
	got, err := s.b.AddEndpoint(s.ctx, c, e)
	if err != nil {
		return 0, dbusError(err)
	}
	return got, nil
}

func (s *Server) removeEndpoint(msg dbus.Message, id uint8) *dbus.Error {
	if id == 0 {
		return invalid("endpoint id 0")
	}
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.RemoveEndpoint(s.ctx, c, id))
}

func (s *Server) setEndpointFlags(msg dbus.Message, id uint8, flags []string) *dbus.Error {
	if id == 0 {
		return invalid("endpoint id 0")
	}
	f, derr := parseFlagWords(flags)
	if derr != nil {
		return derr
	}
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.SetEndpointFlags(s.ctx, c, id, f))
}

func (s *Server) flushEndpoints(msg dbus.Message) *dbus.Error {
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.FlushEndpoints(s.ctx, c))
}

func (s *Server) setLimits(msg dbus.Message, subflows, addAddrAccepted uint32) *dbus.Error {
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.SetLimits(s.ctx, c, service.Limits{Subflows: subflows, AddAddrAccepted: addAddrAccepted}))
}

func (s *Server) setInterfacePreference(msg dbus.Message, name, pref string) *dbus.Error {
	if _, err := policy.ParsePreference(pref); err != nil && pref != "default" {
		return dbusError(fmt.Errorf("%w: %q is not a preference (cheap, expensive, backup, off, or \"\" for the default)",
			service.ErrInvalidArguments, pref))
	}
	if !service.ValidInterfaceName(name) {
		return dbusError(fmt.Errorf("%w: %q is not an interface name", service.ErrInvalidArguments, name))
	}
	c, derr := s.authorize(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.SetInterfacePreference(s.ctx, c, name, pref))
}

// connectionCall checks that msg was sent to a known connection object and
// authorizes its sender.
func (s *Server) connectionCall(msg dbus.Message) (uint64, service.Caller, *dbus.Error) {
	conn, derr := s.connection(msgPath(msg))
	if derr != nil {
		return 0, service.Caller{}, derr
	}
	c, derr := s.authorize(msg)
	if derr != nil {
		return 0, service.Caller{}, derr
	}
	return conn.ID, c, nil
}

func (s *Server) announceAddress(msg dbus.Message, address string, port uint16, id uint8) (uint8, *dbus.Error) {
	a, derr := parseAddr("address", address)
	if derr != nil {
		return 0, derr
	}
	conn, c, derr := s.connectionCall(msg)
	if derr != nil {
		return 0, derr
	}
	got, err := s.b.AnnounceAddress(s.ctx, c, conn, a, port, id)
	if err != nil {
		return 0, dbusError(err)
	}
	return got, nil
}

func (s *Server) removeAddress(msg dbus.Message, id uint8) *dbus.Error {
	// The kernel would take id 0 as the initial subflow's address and close
	// that subflow; 0 means "the daemon picks" in AnnounceAddress, so it is
	// refused here rather than doing something no caller meant.
	if id == 0 {
		return invalid("address id 0 (AnnounceAddress returns the id to remove)")
	}
	conn, c, derr := s.connectionCall(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.RemoveAddress(s.ctx, c, conn, id))
}

func (s *Server) createSubflow(msg dbus.Message, local, remote string, remotePort uint16, opts map[string]dbus.Variant) *dbus.Error {
	r := service.SubflowRequest{RemotePort: remotePort}
	var derr *dbus.Error
	if r.LocalAddress, derr = parseAddr("local_address", local); derr != nil {
		return derr
	}
	if r.RemoteAddress, derr = parseAddr("remote_address", remote); derr != nil {
		return derr
	}
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		var ok bool
		switch v := opts[k].Value(); k {
		case "local_id":
			r.LocalID, ok = v.(uint8)
		case "local_port":
			r.LocalPort, ok = v.(uint16)
		case "backup":
			r.Backup, ok = v.(bool)
		case "interface":
			r.Interface, ok = v.(string)
		default:
			return invalid("unknown option %s", quote(k))
		}
		if !ok {
			return invalid("option %q has type %s, want %s", k, opts[k].Signature(), subflowOptionTypes[k])
		}
	}
	if derr := checkInterface("option interface", r.Interface); derr != nil {
		return derr
	}
	conn, c, derr := s.connectionCall(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.CreateSubflow(s.ctx, c, conn, r))
}

// subflowOptionTypes are the D-Bus types of CreateSubflow's options.
var subflowOptionTypes = map[string]string{"local_id": "y", "local_port": "q", "backup": "b", "interface": "s"}

// parseSubflow parses the 4-tuple naming a subflow.
func parseSubflow(local string, localPort uint16, remote string, remotePort uint16) (l, r netip.AddrPort, derr *dbus.Error) {
	la, derr := parseAddr("local_address", local)
	if derr != nil {
		return l, r, derr
	}
	ra, derr := parseAddr("remote_address", remote)
	if derr != nil {
		return l, r, derr
	}
	return netip.AddrPortFrom(la, localPort), netip.AddrPortFrom(ra, remotePort), nil
}

func (s *Server) removeSubflow(msg dbus.Message, local string, localPort uint16, remote string, remotePort uint16) *dbus.Error {
	l, r, derr := parseSubflow(local, localPort, remote, remotePort)
	if derr != nil {
		return derr
	}
	conn, c, derr := s.connectionCall(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.RemoveSubflow(s.ctx, c, conn, l, r))
}

func (s *Server) setSubflowBackup(msg dbus.Message, local string, localPort uint16, remote string, remotePort uint16, backup bool) *dbus.Error {
	l, r, derr := parseSubflow(local, localPort, remote, remotePort)
	if derr != nil {
		return derr
	}
	conn, c, derr := s.connectionCall(msg)
	if derr != nil {
		return derr
	}
	return dbusError(s.b.SetSubflowBackup(s.ctx, c, conn, l, r, backup))
}
