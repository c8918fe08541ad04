package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon"
	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// nmFirstWait bounds how long the start waits for the first word on
// NetworkManager (the watcher's first read: a few milliseconds when it
// answers, nothing to wait for when it is not on the bus).
const nmFirstWait = 3 * time.Second

// watchNM starts following NetworkManager on the daemon's bus connection,
// unless the configuration ignores it, and returns the first state for
// the service's start. The watcher runs until ctx ends; on failure the
// daemon goes on without it.
func (d *pmd) watchNM(ctx context.Context) service.NMState {
	if d.cfg.NetworkManager == service.NetworkManagerIgnore {
		return service.NMState{}
	}
	start := time.Now()
	w, err := nmmon.Watch(ctx, d.conn, d.log.With("component", "networkmanager"))
	if err != nil {
		d.log.Warn("not following NetworkManager", "err", err)
		return service.NMState{}
	}
	d.nm = w
	select {
	case st := <-w.States():
		d.log.Debug("NetworkManager", "state", st.String(), "read_in", time.Since(start).Round(time.Microsecond))
		return nmState(st)
	case <-time.After(nmFirstWait):
		d.log.Warn("NetworkManager did not answer at start: going on without its view until it does", "waited", nmFirstWait)
		return service.NMState{}
	}
}

// followNM hands the service each state the watcher reports, until ctx
// ends.
func followNM(ctx context.Context, w *nmmon.Watcher, svc *service.Service, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-w.States():
			log.Debug("NetworkManager", "state", st.String())
			if err := svc.SetNetworkManager(ctx, nmState(st)); err != nil && ctx.Err() == nil {
				log.Warn("NetworkManager's state not applied", "err", err)
			}
		}
	}
}

// nmState is the service's view of NetworkManager's state: the devices it
// manages, by the name of the interface that carries their IP traffic.
// A managed device is NetworkManager's for endpoints whether a profile is
// active or not: NetworkManager removes the endpoints it did not make on
// its devices when it deactivates or reapplies a profile, so endpoints of
// ours there would only be fought over. Only an active profile can
// disable MPTCP or make a device metered.
func nmState(st nmmon.State) service.NMState {
	out := service.NMState{Running: st.Running}
	for _, dev := range st.Devices {
		if !dev.Managed {
			continue
		}
		name := dev.IPInterface
		if name == "" {
			name = dev.Interface
		}
		if out.Interfaces == nil {
			out.Interfaces = make(map[string]service.NMInterface)
		}
		out.Interfaces[linkName(name)] = service.NMInterface{
			MPTCPDisabled: dev.Activated && dev.MPTCP.Known && dev.MPTCP.Disabled,
			Metered:       dev.Activated && dev.Metered.Expensive(),
		}
	}
	return out
}
