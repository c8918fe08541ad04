package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
)

// Standard D-Bus errors mptcpctl explains.
const (
	dbusServiceUnknown = "org.freedesktop.DBus.Error.ServiceUnknown"
	dbusNameHasNoOwner = "org.freedesktop.DBus.Error.NameHasNoOwner"
	dbusNoReply        = "org.freedesktop.DBus.Error.NoReply"
	dbusTimeout        = "org.freedesktop.DBus.Error.Timeout"
	dbusAccessDenied   = "org.freedesktop.DBus.Error.AccessDenied"
	dbusUnknownObject  = "org.freedesktop.DBus.Error.UnknownObject"
	dbusUnknownMethod  = "org.freedesktop.DBus.Error.UnknownMethod"
	// polkit would ask the caller to authenticate, which mptcpctl does not
	// allow (it sets no ALLOW_INTERACTIVE_AUTHORIZATION flag).
	dbusInteractiveAuth = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
)

// callError turns the error of a D-Bus call into an exitError whose
// message says what went wrong and, where it can, what to do.
func callError(err error) error {
	if err == nil {
		return nil
	}
	if ee := (*exitError)(nil); errors.As(err, &ee) {
		return err // explained already
	}
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
	fail := func(code int, format string, args ...any) error {
		return &exitError{code: code, err: fmt.Errorf(format, args...)}
	}
	switch de.Name {
	case dbusServiceUnknown, dbusNameHasNoOwner:
		return fail(exitUnavailable, "mptcp-pmd is not running: nobody owns %s on the system bus "+
			"(start it with `systemctl start mptcp-pmd`)", busName)
	case dbusNoReply, dbusTimeout:
		// The bus gave up waiting (its own reply timeout), or the daemon
		// left the bus without answering: no answer, as when --timeout
		// runs out.
		return fail(exitTimeout, "mptcp-pmd did not answer: %s (is it stuck? see its log: `journalctl -u mptcp-pmd`)", msg)
	case errorPrefix + "PermissionDenied", dbusAccessDenied:
		return fail(exitPermission, "permission denied: %s (changes need root, a group the daemon's "+
			"configuration allows, or polkit's authorization: try sudo)", msg)
	case dbusInteractiveAuth:
		return fail(exitPermission, "permission denied: %s (polkit would let you in after authenticating, "+
			"which mptcpctl does not ask for: try sudo)", msg)
	case errorPrefix + "NotController":
		return fail(exitFailure, "not the controller: %s (a program has claimed path management, "+
			"see `mptcpctl status`; changes go through it until it lets go, or `mptcpctl revoke` takes control back)", msg)
	case errorPrefix + "NotSupported":
		return fail(exitFailure, "not supported: %s (this needs the userspace path manager: "+
			"net.mptcp.path_manager=userspace in the daemon's network namespace when the connection "+
			"is made; see `mptcpctl status`)", msg)
	case errorPrefix + "NotFound", dbusUnknownObject:
		return fail(exitNotFound, "not found: %s", msg)
	case dbusUnknownMethod:
		return fail(exitFailure, "the daemon does not know this request (is it older than mptcpctl?): %s", msg)
	}
	if name, ok := strings.CutPrefix(de.Name, errorPrefix); ok {
		if words, ok := errorWords[name]; ok {
			name = words
		}
		return fail(exitFailure, "%s: %s", name, msg)
	}
	return fail(exitFailure, "%s: %s", de.Name, msg)
}

// errorWords spell the contract's other error names.
var errorWords = map[string]string{
	"Failed":            "failed",
	"InvalidArguments":  "invalid arguments",
	"AlreadyControlled": "already controlled",
	"Exists":            "already exists",
	"Busy":              "busy",
}
