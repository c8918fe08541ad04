package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// TestProbeLooksUp: the prober looks a few subflows up one by one, the
// joins bound to their interface included, and gets what a listing of all
// gives; a target that is not there (closed) makes it list them all.
func TestProbeLooksUp(t *testing.T) {
	lab := pmtest.NewLab(t, pmtest.LabOptions{Paths: 2})
	cli, srv := lab.Client, lab.Server
	cli.Run(t, "ip", "mptcp", "endpoint", "add", cli.Addrs4[1].String(), "dev", cli.Ifaces[1], "subflow")
	server := srv.StartServer(t, netip.AddrPortFrom(srv.Addrs4[0], 0))
	c := dial(t, cli, cli.Addrs4[0], server)
	defer c.Close()
	var dc *diag.Client
	if err := cli.Do(func() (err error) { dc, err = diag.Dial(nil); return err }); err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	var all []diag.Subflow
	eventually(t, 5*time.Second, "two established subflows", func() bool {
		var err error
		all, err = dc.ListSubflows(nil, diag.States(diag.StateEstablished))
		return err == nil && len(all) == 2
	})
	var targets []service.ProbeTarget
	for _, sf := range all {
		targets = append(targets, service.ProbeTarget{Token: sf.Token, Local: sf.Local, Remote: sf.Remote, Ifindex: int32(sf.Ifindex)})
	}
	for _, tg := range targets { // so that probe does not fall back to a listing
		if _, err := dc.Subflow(diag.SubflowKey{Local: tg.Local, Remote: tg.Remote, Ifindex: tg.Ifindex}); err != nil {
			t.Fatalf("lookup of %+v: %v", tg, err)
		}
	}
	_, got, err := probe(dc, targets, nil, nil)
	if err != nil || len(got) != 2 {
		t.Fatalf("probe = %+v, %v", got, err)
	}
	for i := range got {
		if got[i].Local != all[i].Local || got[i].Remote != all[i].Remote || got[i].Token != all[i].Token {
			t.Errorf("looked up %+v, listed %+v", got[i], all[i])
		}
	}
	gone := append(targets, service.ProbeTarget{Token: targets[0].Token, Local: netip.AddrPortFrom(cli.Addrs4[0], 1), Remote: server})
	if _, got, err := probe(dc, gone, nil, nil); err != nil || len(got) != 2 {
		t.Errorf("probe with a target that is gone = %+v, %v; want the two listed", got, err)
	}
}
