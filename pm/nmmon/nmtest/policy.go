package nmtest

import (
	"html"
	"os"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
)

// policyPaths are where distributions install NetworkManager's bus policy,
// newest first.
var policyPaths = []string{
	"/usr/share/dbus-1/system.d/org.freedesktop.NetworkManager.conf",
	"/etc/dbus-1/system.d/org.freedesktop.NetworkManager.conf",
}

// PolicyFile returns the path of NetworkManager's bus policy on this
// machine, or "" when it has none.
func PolicyFile() string {
	for _, p := range policyPaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Policy includes NetworkManager's own bus policy in a bus's configuration:
// root may own org.freedesktop.NetworkManager and call it, everyone may read
// its properties. A bus started with dbustest.SystemDefaults needs it, or
// NetworkManager cannot take its name. On a machine without the policy file
// it adds nothing (Start then skips the test for want of NetworkManager, or
// fails when NetworkManager is there but cannot own its name).
func Policy() dbustest.Option {
	p := PolicyFile()
	if p == "" {
		return dbustest.ExtraConfig("")
	}
	return dbustest.ExtraConfig(`  <include ignore_missing="yes">` + html.EscapeString(p) + `</include>`)
}
