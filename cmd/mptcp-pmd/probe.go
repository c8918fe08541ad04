package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// probeIdle is how often the prober looks whether the service wants
// probes while it does not (the handover policy has no connection).
const probeIdle = 250 * time.Millisecond

// probeSubflows reads the established subflows' TCP state with sock_diag
// as often as the service asks (ProbeInterval) and hands it over
// (ProbeSubflows), until ctx ends. It runs while the policy is handover,
// on a sock_diag socket of its own.
func probeSubflows(ctx context.Context, svc *service.Service, log *slog.Logger) {
	dc, err := diag.Dial(nil)
	if err != nil {
		log.Error("handover: cannot probe the subflows: stalled paths are found only when the kernel closes them", "err", err)
		return
	}
	defer dc.Close()
	var sfs []diag.Subflow
	var keys []diag.SubflowKey
	var probes []service.SubflowProbe
	t := time.NewTimer(0)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		every := svc.ProbeInterval()
		if every == 0 {
			t.Reset(probeIdle)
			continue
		}
		t.Reset(every)
		targets, err := svc.ProbeTargets(ctx)
		if err != nil {
			continue // stopping
		}
		keys, sfs, err = probe(dc, targets, keys, sfs[:0])
		if err != nil {
			if !failing {
				log.Warn("handover: probing the subflows failed", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		probes = probes[:0]
		for _, sf := range sfs {
			if sf.Token == 0 || sf.State != diag.StateEstablished {
				continue
			}
			probes = append(probes, service.SubflowProbe{
				Token: sf.Token, Local: pm.CanonicalAddrPort(sf.Local), Remote: pm.CanonicalAddrPort(sf.Remote),
				Unacked: sf.TCP.Unacked, LastAckRecv: sf.TCP.LastAckRecv, RTT: sf.TCP.RTT,
			})
		}
		if err := svc.ProbeSubflows(ctx, probes); err != nil && ctx.Err() == nil {
			log.Warn("handover: probes not applied", "err", err)
		}
	}
}

// probeLookupMax is how many subflows the prober looks up one by one at
// most; with more it lists them all. A sock_diag dump walks the host's
// whole TCP table whatever it finds: 2.4 ms of kernel time on the test VM
// with no connection at all, every stall_timeout/3 (67 ms by default) as
// long as one connection is under the handover policy; a lookup is a hash
// probe and a round trip, about 10 µs.
const probeLookupMax = 64

// probe appends the TCP state of the targets to sfs: looked up one by one
// (the requests in one datagram) when they are few, else listed with every
// established subflow. A target not found (it closed as it was looked up,
// or its socket is bound to another interface than the one the service
// knows) makes it list them all, this once.
func probe(dc *diag.Client, targets []service.ProbeTarget, keys []diag.SubflowKey, sfs []diag.Subflow) ([]diag.SubflowKey, []diag.Subflow, error) {
	if len(targets) > probeLookupMax {
		sfs, err := dc.ListSubflows(sfs, diag.States(diag.StateEstablished))
		return keys, sfs, err
	}
	keys = keys[:0]
	for _, t := range targets {
		keys = append(keys, diag.SubflowKey{Local: t.Local, Remote: t.Remote, Ifindex: t.Ifindex})
	}
	n := len(sfs)
	sfs, missing, err := dc.LookupSubflows(sfs, keys)
	if err == nil && missing > 0 {
		sfs, err = dc.ListSubflows(sfs[:n], diag.States(diag.StateEstablished))
	}
	return keys, sfs, err
}

// startProber starts the prober once the policy, or a rule's, is
// handover. It runs
// until the daemon stops (idle while another policy is in force).
func (d *pmd) startProber(ctx context.Context) {
	uses := d.cfg.Policy == service.PolicyHandover
	for _, r := range d.cfg.Rules {
		uses = uses || r.Policy == service.PolicyHandover
	}
	if d.probing || !uses {
		return
	}
	d.probing = true
	go probeSubflows(ctx, d.svc, d.log)
}
