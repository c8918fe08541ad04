package pm

import (
	"strings"
	"syscall"
)

// errnoENOTSUPP is the kernel-internal ENOTSUPP (524), which some kernel
// paths return instead of EOPNOTSUPP. It has no name in package syscall.
const errnoENOTSUPP syscall.Errno = 524

// Extended-acknowledgement messages of the 6.18 kernel that give an EINVAL a
// more precise meaning (net/mptcp/pm_netlink.c, pm_userspace.c).
const (
	msgInvalidToken     = "invalid token"             // no connection with this token in the namespace
	msgUserspaceNotSel  = "userspace PM not selected" // the connection uses the in-kernel PM
	msgNotFoundSuffix   = " not found"                // "address not found", "subflow not found", "address with id 3 not found"
	errnoENOTSUPPString = "operation not supported"
)

// Error is a refusal by the kernel of one path-manager command. It matches
// the package's sentinel errors with errors.Is (see Is) and unwraps to its
// Errno, so errors.Is(err, syscall.EINVAL) works too.
type Error struct {
	Op      string        // the command, as "announce" or "add endpoint"
	Errno   syscall.Errno // the kernel's error number
	Message string        // the kernel's extended-acknowledgement message; may be ""
}

// Error returns the operation, the kernel's message and the errno text, as
// "announce: invalid token (invalid argument)", or "op: errno text" when the
// kernel sent no message.
func (e *Error) Error() string {
	text := e.Errno.Error()
	if e.Errno == errnoENOTSUPP {
		text = errnoENOTSUPPString
	}
	if e.Message == "" {
		return e.Op + ": " + text
	}
	return e.Op + ": " + e.Message + " (" + text + ")"
}

// Unwrap returns the errno.
func (e *Error) Unwrap() error { return e.Errno }

// Is reports whether the refusal is of the kind target names:
//
//	ENOENT, ESRCH                          ErrNotFound
//	EPERM, EACCES                          ErrPermission
//	EOPNOTSUPP, ENOTSUPP (524)             ErrNotSupported
//	EEXIST                                 ErrExists
//	EBUSY                                  ErrBusy
//	EINVAL                                 ErrInvalid, except:
//	  "invalid token", "... not found"     ErrNotFound
//	  "userspace PM not selected"          ErrNotSupported
//
// "invalid token" also matches ErrUnknownToken. Every other errno matches
// no sentinel.
func (e *Error) Is(target error) bool {
	if target == ErrUnknownToken {
		return e.Errno == syscall.EINVAL && e.Message == msgInvalidToken
	}
	return target != nil && target == e.sentinel()
}

// sentinel returns the sentinel error the refusal matches, or nil.
func (e *Error) sentinel() error {
	switch e.Errno {
	case syscall.ENOENT, syscall.ESRCH:
		return ErrNotFound
	case syscall.EPERM, syscall.EACCES:
		return ErrPermission
	case syscall.EOPNOTSUPP, errnoENOTSUPP:
		return ErrNotSupported
	case syscall.EEXIST:
		return ErrExists
	case syscall.EBUSY:
		return ErrBusy
	case syscall.EINVAL:
		switch {
		case e.Message == msgInvalidToken, strings.HasSuffix(e.Message, msgNotFoundSuffix):
			return ErrNotFound
		case e.Message == msgUserspaceNotSel:
			return ErrNotSupported
		}
		return ErrInvalid
	}
	return nil
}
