// Package pm is a client for the Linux kernel's Multipath TCP path manager,
// the "mptcp_pm" generic-netlink family.
//
// A Client issues commands over one netlink socket: the in-kernel path
// manager's endpoints and limits, and the userspace path manager's
// per-connection commands (announce, remove, subflow create and destroy,
// backup flag). An EventListener joins the "mptcp_pm_events" multicast group
// on a second socket and decodes the kernel's connection, subflow, address and
// listener events into Event values.
//
// Addresses are net/netip values; ports are in host byte order everywhere in
// this package, whatever order the kernel uses on the wire.
//
// Errors returned by the kernel are *Error values that carry the kernel's
// extended-acknowledgement message and match the sentinel errors of this
// package (ErrNotFound, ErrPermission, ...) with errors.Is.
package pm
