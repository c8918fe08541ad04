// Package dist holds the files a distribution installs with mptcp-pmd: the
// systemd unit, the D-Bus bus policy and activation file, the polkit
// action, the sysusers.d entry, the example configuration and the man
// pages. It has no code; its tests check those files with the tools that
// read them (systemd-analyze, systemd-sysusers, dbus-daemon, groff), the
// project's own configuration parser, and make install.
package dist
