// Package service is the core of mptcp-pmd: one goroutine that owns all the
// daemon's state and serialises everything that changes it.
//
// Its inputs are the kernel's path-manager events (pm.Event), the host's
// link, address and route changes (NetEvent, adapted from the network
// monitor by the daemon's main), a notice that kernel events were lost
// (Overflow), and requests from front ends (the Service methods, which hand
// the request to the loop and wait for its answer). Its outputs are kernel
// commands (through the Kernel interface), listening sockets behind
// announced addresses (ListenerFactory), and Notifications, published in the
// order the changes happened.
//
// State: the live connections by token and by object number (a counter from
// 1, never reused), their subflows and the addresses each side announced;
// the in-kernel endpoints and limits; the usable local addresses; the id of
// every local address used with the userspace path manager; the listeners;
// and the controller's claim. Closed connections leave nothing behind but
// their token in a bounded memory of recent closings.
//
// For an event about a subflow or an address, the event's own notification
// (SubflowEvent, AddressAnnounced, AddressRemoved) is published before the
// ConnectionChanged it causes.
//
// Requests fail with errors that match exactly one of the sentinels of
// api.go (ErrNotFound, ErrInvalidArguments, ...) with errors.Is; a kernel
// refusal keeps the kernel's words in the message.
//
// Policies: the configuration names a built-in policy, but only "none"
// (observe and publish) exists yet. A policy will be consulted after each
// kernel event and network change while no controller is registered, and
// reconcile when a controller's claim ends (see handleNet and
// releaseController).
package service
