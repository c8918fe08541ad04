// Package pmnl is the netlink backend of package pm: a client for the
// kernel's "mptcp_pm" generic-netlink family.
//
// A Client issues commands over one netlink socket: the in-kernel path
// manager's endpoints and limits, and the userspace path manager's
// per-connection commands (announce, remove, subflow create and destroy,
// backup flag). An EventListener joins the "mptcp_pm_events" multicast group
// on a second socket and decodes the kernel's connection, subflow, address and
// listener events into pm.Event values.
//
// Kernel refusals come back as *pm.Error values with the kernel's
// extended-acknowledgement message; errors of the socket itself are returned
// as they are.
package pmnl
