package diag

import (
	"os"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// TestMain lets the lab benchmark run its server in a process of its own
// (pmtest.Host.StartServer), so that the client's and the server's sockets
// do not share this process's open-file limit.
func TestMain(m *testing.M) {
	pmtest.HelperMain()
	os.Exit(m.Run())
}
