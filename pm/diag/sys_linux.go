package diag

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sendRaw writes one request to the netlink socket; an unconnected
// netlink socket sends to the kernel.
func sendRaw(fd uintptr, b []byte) error {
	_, err := unix.Write(int(fd), b)
	return err
}

// recvRaw reads one datagram into b without waiting. With MSG_TRUNC the
// kernel returns the datagram's real length, so a result above len(b)
// means the datagram was cut. It neither allocates (unlike unix.Recvfrom,
// which returns the sender's address) nor blocks.
func recvRaw(fd uintptr, b []byte) (int, error) {
	n, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, syscall.Errno(e)
	}
	return int(n), nil
}
