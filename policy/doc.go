// Package policy holds mptcp-pmd's built-in path-management policies and the
// local-address filter. Everything here is a pure decision: no netlink, no
// sockets, no clocks, no goroutines.
//
// A policy is level-triggered. The service hands it a read-only View of what
// exists now (usable local addresses, in-kernel endpoints, one connection
// with its subflows and addresses) and gets back the Actions that bring the
// world to the state the policy wants. The service calls it after every
// relevant change and again when control comes back from a controller; it
// carries out the actions and updates its state from the kernel's answers
// and events. Because the result depends on the view only, a second call
// after the actions took effect returns nothing: the policies converge.
//
// The built-in policies are
//
//   - "endpoints" (in-kernel path manager): every usable address is an
//     in-kernel endpoint with its configured flags.
//   - "subflow-per-interface" (userspace path manager): one subflow from every
//     other usable interface on client-side connections; announcements of the
//     other local addresses on server-side ones.
//   - "fullmesh" (userspace path manager): a subflow for every pair of usable
//     local address and known peer address, up to the subflow limit.
//   - "none": observe only.
//
// New looks a policy up by name; a new policy is one file that calls Register
// from its init function.
package policy
