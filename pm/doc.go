// Package pm is the vocabulary of the Linux kernel's Multipath TCP path
// manager, shared by every part of the daemon: addresses and their flags,
// limits, connection and subflow events, the kernel's refusals and the
// sentinel errors they match, and the MPTCP sysctls.
//
// It depends on the standard library only. The netlink client that speaks
// these types to the kernel is package pm/pmnl; package service and package
// policy use pm without linking any netlink code.
//
// Addresses are net/netip values; ports are in host byte order everywhere,
// whatever order the kernel uses on the wire. CanonicalAddr gives an
// address the one form the daemon compares and keys addresses by.
//
// A refusal by the kernel is an *Error that carries the kernel's
// extended-acknowledgement message and matches the sentinel errors of this
// package (ErrNotFound, ErrPermission, ...) with errors.Is.
package pm
