// Package pmtest helps test code that talks to the kernel's MPTCP path
// manager: skip rules for tests that need root, MPTCP or programs, a lab of
// network namespaces joined by veth pairs that carries real MPTCP traffic,
// and a fake kernel for unit tests.
//
// A test that needs something this machine lacks is skipped with the reason;
// when the CI environment variable is set it fails instead, so that CI never
// counts a skipped test as a pass.
package pmtest
