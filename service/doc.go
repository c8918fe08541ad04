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
// Policies: the configuration names a built-in policy (package policy),
// which the loop consults after kernel events, network changes, endpoint
// and limit changes, and carries out through the Kernel, while no
// controller is registered and once the local addresses are known (the
// first NetSynced). When a controller's claim ends, and after a reload
// (Reload), the policy reconciles every connection and endpoint. Requested
// subflows are pending until the kernel reports them; failures back off.
// The service keeps the origin of every endpoint and never lets the policy
// touch one it did not make. See policy.go.
package service
