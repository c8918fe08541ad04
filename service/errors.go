package service

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// requestError is what a request returns: a readable message, the one
// service sentinel it matches, and the cause (a kernel refusal, a context
// error), which errors.Is and errors.As also see.
type requestError struct {
	kind  error // one of the sentinels of api.go
	msg   string
	cause error // may be nil
}

func (e *requestError) Error() string { return e.msg }

func (e *requestError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

// reqErrorf returns an error of the given kind with a formatted message and
// no cause.
func reqErrorf(kind error, format string, args ...any) error {
	return &requestError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// invalidf returns an ErrInvalidArguments error.
func invalidf(format string, args ...any) error {
	return reqErrorf(ErrInvalidArguments, format, args...)
}

// wrapErr maps err, from the kernel or elsewhere, to the matching service
// sentinel, keeping its text after op: "announce: <the kernel's words>".
// A kernel refusal keeps only its own text, which names the command; text
// that starts with op already is kept as is.
func wrapErr(op string, err error) error {
	msg := err.Error()
	var ke *pm.Error
	if errors.As(err, &ke) {
		msg = ke.Error() // without pm's own "pm: " prefix
	}
	if !strings.HasPrefix(msg, op+": ") {
		msg = op + ": " + msg
	}
	return &requestError{kind: kindOf(err), msg: msg, cause: err}
}

// kindOf maps pm's sentinels to the service's; anything else is ErrFailed.
func kindOf(err error) error {
	switch {
	case errors.Is(err, pm.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, pm.ErrPermission):
		return ErrPermissionDenied
	case errors.Is(err, pm.ErrNotSupported):
		return ErrNotSupported
	case errors.Is(err, pm.ErrExists):
		return ErrExists
	case errors.Is(err, pm.ErrInvalid):
		return ErrInvalidArguments
	case errors.Is(err, pm.ErrBusy):
		return ErrBusy
	}
	return ErrFailed
}
