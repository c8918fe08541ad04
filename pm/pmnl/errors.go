package pmnl

import "errors"

// Family and multicast group names of the kernel's path-manager interface.
const (
	FamilyName  = "mptcp_pm"
	GroupEvents = "mptcp_pm_events"
	GroupCmds   = "mptcp_pm_cmds"
)

// Errors of the netlink transport itself (kernel refusals are *pm.Error).
var (
	// ErrOverflow is returned by EventListener.Receive when the kernel
	// dropped events because the socket's receive buffer was full (ENOBUFS).
	// The listener stays usable; the caller must resynchronise its state.
	ErrOverflow = errors.New("pm: event socket overflow, events were lost")

	// ErrFamilyNotFound means the kernel has no "mptcp_pm" family: MPTCP is
	// not built or not loaded.
	ErrFamilyNotFound = errors.New("pm: generic netlink family mptcp_pm not found (is MPTCP enabled in this kernel?)")
)
