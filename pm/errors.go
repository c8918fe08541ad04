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

	// ErrOverflow is returned by EventListener.Receive when the kernel
	// dropped events because the socket's receive buffer was full (ENOBUFS).
	// The listener stays usable; the caller must resynchronise its state.
	ErrOverflow = errors.New("pm: event socket overflow, events were lost")

	// ErrFamilyNotFound means the kernel has no "mptcp_pm" family: MPTCP is
	// not built or not loaded.
	ErrFamilyNotFound = errors.New("pm: generic netlink family mptcp_pm not found (is MPTCP enabled in this kernel?)")
)
