package dbusapi

import (
	"errors"
	"fmt"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// D-Bus error names of the service.
const (
	ErrorPrefix            = "org.mptcp.PathManager1.Error."
	ErrorFailed            = ErrorPrefix + "Failed"
	ErrorInvalidArguments  = ErrorPrefix + "InvalidArguments"
	ErrorPermissionDenied  = ErrorPrefix + "PermissionDenied"
	ErrorAlreadyControlled = ErrorPrefix + "AlreadyControlled"
	ErrorNotController     = ErrorPrefix + "NotController"
	ErrorNotFound          = ErrorPrefix + "NotFound"
	ErrorNotSupported      = ErrorPrefix + "NotSupported"
	ErrorExists            = ErrorPrefix + "Exists"
	ErrorBusy              = ErrorPrefix + "Busy"
)

// ErrorInteractiveAuthorizationRequired is the standard D-Bus error for a
// call that would be authorized after the caller authenticates, when the
// call did not allow interactive authorization (the message flag
// ALLOW_INTERACTIVE_AUTHORIZATION).
const ErrorInteractiveAuthorizationRequired = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"

// ErrInteractiveAuthorizationRequired is wrapped by an Authorizer's refusal
// of a caller that could be authorized interactively (polkit's challenge)
// when the call did not allow it. It wraps service.ErrPermissionDenied, so
// it is a refusal like any other, but the caller is answered
// ErrorInteractiveAuthorizationRequired: it may call again with the flag.
var ErrInteractiveAuthorizationRequired = fmt.Errorf("%w: interactive authorization required", service.ErrPermissionDenied)

// Standard D-Bus error names used by the Properties implementation.
const (
	errorUnknownInterface = "org.freedesktop.DBus.Error.UnknownInterface"
	errorUnknownProperty  = "org.freedesktop.DBus.Error.UnknownProperty"
	errorReadOnly         = "org.freedesktop.DBus.Error.PropertyReadOnly"
)

var errorNames = []struct {
	err  error
	name string
}{
	{ErrInteractiveAuthorizationRequired, ErrorInteractiveAuthorizationRequired}, // before ErrPermissionDenied, which it wraps
	{service.ErrInvalidArguments, ErrorInvalidArguments},
	{service.ErrPermissionDenied, ErrorPermissionDenied},
	{service.ErrAlreadyControlled, ErrorAlreadyControlled},
	{service.ErrNotController, ErrorNotController},
	{service.ErrNotFound, ErrorNotFound},
	{service.ErrNotSupported, ErrorNotSupported},
	{service.ErrExists, ErrorExists},
	{service.ErrBusy, ErrorBusy},
	{service.ErrFailed, ErrorFailed},
}

// ErrorName returns the D-Bus error name for err: the name of the service
// sentinel (or ErrInteractiveAuthorizationRequired) it matches, or
// ErrorFailed.
func ErrorName(err error) string {
	for _, e := range errorNames {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	return ErrorFailed
}

// dbusError turns an error of a request into the D-Bus error sent back, with
// the error's text (which keeps the kernel's message) as its message.
func dbusError(err error) *dbus.Error {
	if err == nil {
		return nil
	}
	return dbus.NewError(ErrorName(err), []any{err.Error()})
}
