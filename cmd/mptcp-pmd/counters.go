package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm"
)

// How the trouble counters are watched: read every counterInterval
// (--counter-interval), each signalled at most once per counterQuiet.
const (
	counterInterval = 5 * time.Second
	counterQuiet    = time.Minute
)

// counterEmitter sends Manager.CounterIncreased (*dbusapi.Server).
type counterEmitter interface {
	EmitCounterIncreased(name string, value, increase uint64) error
}

// counterBaseline reads the counters the watcher compares with, before the
// daemon takes its bus name: growth from then on is signalled, growth
// before is not. It returns nil, having said why, when they cannot be read.
func counterBaseline(log *slog.Logger) map[string]uint64 {
	last, err := pm.Counters()
	if err != nil {
		if !errors.Is(err, pm.ErrNotSupported) {
			log.Warn("the kernel's MPTCP counters cannot be read: no CounterIncreased signals", "err", err)
		}
		return nil
	}
	return last
}

// watchCounters reads the MPTcpExt counters every interval and, when one
// of pm.TroubleCounters grew from last (counterBaseline) on, logs it and
// signals it, each counter at most once per quiet (the growth meanwhile is
// carried to the next signal), until ctx ends. A nil last does nothing.
func watchCounters(ctx context.Context, em counterEmitter, log *slog.Logger, interval, quiet time.Duration, last map[string]uint64) {
	if last == nil {
		return
	}
	pending := map[string]uint64{}
	sent := map[string]time.Time{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, err := pm.Counters()
		if err != nil {
			continue
		}
		for _, name := range pm.TroubleCounters {
			if v := now[name]; v > last[name] {
				pending[name] += v - last[name]
			}
			if pending[name] == 0 || time.Since(sent[name]) < quiet {
				continue
			}
			log.Warn("an MPTCP counter that means trouble increased", "counter", "MPTcpExt"+name, "value", now[name], "increase", pending[name])
			if err := em.EmitCounterIncreased(name, now[name], pending[name]); err != nil {
				log.Warn("signal not sent", "err", err)
			}
			sent[name], pending[name] = time.Now(), 0
		}
		last = now
	}
}
