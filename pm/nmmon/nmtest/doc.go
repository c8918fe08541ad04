// Package nmtest runs a real NetworkManager for tests: inside a network
// namespace of a pmtest lab, connected to a private bus of dbustest, with
// private state, configuration and connection profiles, so that neither
// the machine's network nor its files are touched.
//
// NetworkManager runs in a mount namespace of its own (unshare -m) in which
// a tmpfs covers /run and /etc/NetworkManager, the test's directories are
// bound over /run/NetworkManager and /var/lib/NetworkManager, and /sys is
// read-only. The last is needed: NetworkManager uses udev exactly when /sys
// is writable, and without a udev daemon (none runs in a test) every link
// stays "not initialized", every device unmanaged and start-up never ends.
// With /sys read-only it runs as in a container, without udev.
//
// A bus started with dbustest.SystemDefaults must also be given Policy, the
// bus policy NetworkManager installs, or NetworkManager may not own its
// name; a bus with dbustest's permissive default policy needs nothing more.
//
// A test that needs something this machine lacks (root, NetworkManager,
// nmcli, unshare, mount) is skipped with the reason, or fails when the CI
// environment variable is set (see pmtest.Unavailable).
package nmtest
