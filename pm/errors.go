package pm

import "errors"

// Sentinel errors. A kernel refusal is an *Error that matches one of these
// with errors.Is, so callers can map it without looking at errno values.
var (
	ErrNotFound     = errors.New("not found")        // ENOENT, ESRCH; the kernel's "invalid token"
	ErrPermission   = errors.New("not permitted")    // EPERM, EACCES
	ErrNotSupported = errors.New("not supported")    // EOPNOTSUPP; "userspace PM not selected"
	ErrExists       = errors.New("already exists")   // EEXIST
	ErrInvalid      = errors.New("invalid argument") // EINVAL and bad input caught before sending
	ErrBusy         = errors.New("busy")             // EBUSY

	// ErrUnknownToken is the kernel's "invalid token": no MPTCP connection
	// with the token lives in the namespace (it closed). Such a refusal
	// matches ErrNotFound too.
	ErrUnknownToken = errors.New("no connection with this token")
)
