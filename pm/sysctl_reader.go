package pm

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// PathManagerReader reads the path manager like PathManagerType, from the
// sysctl file it opened once: each Read is one pread(2), where
// PathManagerType opens, reads and closes the file. The file shows the
// network namespace of the thread that opened it, whichever thread reads.
// It is safe for concurrent use.
type PathManagerReader struct {
	mu     sync.Mutex
	f      *os.File
	legacy bool     // f is net.mptcp.pm_type (0 or 1), not net.mptcp.path_manager
	buf    [64]byte // the value read
}

// OpenPathManagerReader opens net.mptcp.path_manager, or on kernels
// without it net.mptcp.pm_type, of the calling thread's network namespace.
func OpenPathManagerReader() (*PathManagerReader, error) {
	f, err := os.Open(sysctlPathManager)
	legacy := false
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.Open(sysctlPMType)
		legacy = true
	}
	if err != nil {
		return nil, fmt.Errorf("pm: path manager type: %w", err)
	}
	return &PathManagerReader{f: f, legacy: legacy}, nil
}

// Read returns the path manager new MPTCP connections get now: "kernel",
// "userspace", or the name a newer kernel gives another one.
func (r *PathManagerReader) Read() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := r.pread()
	if err != nil {
		return "", fmt.Errorf("pm: path manager type: %w", err)
	}
	v := bytes.TrimSpace(r.buf[:n])
	switch {
	case r.legacy && string(v) == "0", !r.legacy && string(v) == "kernel":
		return "kernel", nil
	case r.legacy && string(v) == "1", !r.legacy && string(v) == "userspace":
		return "userspace", nil
	case r.legacy || len(v) == 0:
		return "", fmt.Errorf("pm: read %s: unknown value %q: %w", r.f.Name(), v, ErrInvalid)
	}
	return string(v), nil
}

// pread reads the file from its start into r.buf. A sysctl read never
// waits, so it is a raw system call: a Syscall (os.File.ReadAt) tells the
// Go scheduler the thread may block, which wakes the runtime's monitor
// thread when the process was idle; the service reads this at every new
// connection.
//
// The RawConn is taken at each call on purpose: kept in a field (an
// interface), its Control makes the closure escape, 2 allocations a read.
func (r *PathManagerReader) pread() (int, error) {
	fd, err := r.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n uintptr
	var errno syscall.Errno
	if err := fd.Control(func(fd uintptr) {
		for {
			n, _, errno = syscall.RawSyscall6(syscall.SYS_PREAD64, fd, uintptr(unsafe.Pointer(&r.buf[0])), uintptr(len(r.buf)), 0, 0, 0)
			if errno != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, &os.PathError{Op: "pread", Path: r.f.Name(), Err: errno}
	}
	return int(n), nil
}

// Close closes the file.
func (r *PathManagerReader) Close() error { return r.f.Close() }
