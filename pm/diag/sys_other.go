//go:build !linux

package diag

import "syscall"

// sock_diag exists on Linux only; Dial fails before these are reached.

func sendRaw(fd uintptr, b []byte) error { return syscall.ENOSYS }

func recvRaw(fd uintptr, b []byte) (int, error) { return 0, syscall.ENOSYS }
