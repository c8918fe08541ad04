package main

import (
	"cmp"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// topRow is one connection in `mptcpctl top`: its rates over the last
// interval and its subflows'.
type topRow struct {
	Number     uint64       `json:"number"`
	Owner      string       `json:"owner"`
	SentPerS   float64      `json:"sent_bytes_per_s"`
	RecvPerS   float64      `json:"received_bytes_per_s"`
	Retrans    uint64       `json:"bytes_retransmitted"`
	Subflows   []topSubflow `json:"subflows"`
	totalBytes uint64
}

type topSubflow struct {
	Local     string  `json:"local"`
	Remote    string  `json:"remote"`
	Interface string  `json:"interface"`
	Standby   bool    `json:"standby"`
	SentPerS  float64 `json:"sent_bytes_per_s"`
	RecvPerS  float64 `json:"received_bytes_per_s"`
	RTTus     uint32  `json:"rtt_us"`
}

func cmdTop(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	interval := fs.Duration("interval", time.Second, "")
	iterations := fs.Int("count", 0, "")
	if _, err := x.parse("top", fs, args, 0); err != nil {
		return err
	}
	if *interval < 100*time.Millisecond {
		return usageErrorf("--interval must be at least 100ms")
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	prev, at, err := topSample(c)
	if err != nil {
		return err
	}
	for n := 0; *iterations == 0 || n < *iterations; n++ {
		select {
		case <-x.ctx.Done():
			return nil // SIGINT or SIGTERM: top's normal end
		case <-time.After(*interval):
		}
		cur, now, err := topSample(c)
		if err != nil {
			return err
		}
		rows := topRows(prev, cur, now.Sub(at).Seconds())
		prev, at = cur, now
		if x.json {
			printJSON(x.out, struct {
				Time        string   `json:"time"`
				Connections []topRow `json:"connections"`
			}{now.Format(time.RFC3339Nano), rows})
			continue
		}
		x.printTop(now, rows)
	}
	return nil
}

// topSample reads every connection's statistics.
func topSample(c *client) (map[dbus.ObjectPath]map[string]dbus.Variant, time.Time, error) {
	var all map[dbus.ObjectPath]map[string]dbus.Variant
	err := c.callManager("GetStatistics").Store(&all)
	return all, time.Now(), callError(err)
}

// topRows computes the rates between two samples secs apart, busiest
// connection first.
func topRows(prev, cur map[dbus.ObjectPath]map[string]dbus.Variant, secs float64) []topRow {
	u64 := func(m map[string]dbus.Variant, k string) uint64 { v, _ := m[k].Value().(uint64); return v }
	str := func(m map[string]dbus.Variant, k string) string { v, _ := m[k].Value().(string); return v }
	rate := func(now, was uint64) float64 {
		if now < was || secs <= 0 {
			return 0
		}
		return float64(now-was) / secs
	}
	subflows := func(m map[string]dbus.Variant) []map[string]dbus.Variant {
		v, _ := m["subflows"].Value().([]map[string]dbus.Variant)
		return v
	}
	var rows []topRow
	for path, st := range cur {
		was := prev[path] // nil for a new connection: its rates count from 0
		r := topRow{Number: connNumber(path), Owner: ownerShort(st), Retrans: u64(st, "bytes_retransmitted")}
		r.SentPerS = rate(u64(st, "bytes_sent"), u64(was, "bytes_sent"))
		r.RecvPerS = rate(u64(st, "bytes_received"), u64(was, "bytes_received"))
		r.totalBytes = u64(st, "bytes_sent") + u64(st, "bytes_received")
		for _, sf := range subflows(st) {
			local := hostPort(str(sf, "local_address"), port(sf, "local_port"))
			remote := hostPort(str(sf, "remote_address"), port(sf, "remote_port"))
			var old map[string]dbus.Variant
			for _, o := range subflows(was) {
				if hostPort(str(o, "local_address"), port(o, "local_port")) == local && hostPort(str(o, "remote_address"), port(o, "remote_port")) == remote {
					old = o
				}
			}
			backup, _ := sf["backup"].Value().(bool)
			rtt, _ := sf["rtt_us"].Value().(uint32)
			r.Subflows = append(r.Subflows, topSubflow{
				Local: local, Remote: remote, Interface: str(sf, "interface"), Standby: backup, RTTus: rtt,
				SentPerS: rate(u64(sf, "bytes_sent"), u64(old, "bytes_sent")),
				RecvPerS: rate(u64(sf, "bytes_received"), u64(old, "bytes_received")),
			})
		}
		if r.Subflows == nil {
			r.Subflows = []topSubflow{}
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b topRow) int {
		return cmp.Or(cmp.Compare(b.SentPerS+b.RecvPerS, a.SentPerS+a.RecvPerS), cmp.Compare(b.totalBytes, a.totalBytes),
			cmp.Compare(a.Number, b.Number))
	})
	return rows
}

func port(m map[string]dbus.Variant, k string) uint16 { v, _ := m[k].Value().(uint16); return v }

// ownerShort names a connection's owner in a few characters: its systemd
// unit, else the last element of its cgroup, else its uid.
func ownerShort(st map[string]dbus.Variant) string {
	if u, _ := st["unit"].Value().(string); u != "" {
		return u
	}
	if cg, _ := st["cgroup"].Value().(string); cg != "" && cg != "/" {
		return cg[strings.LastIndexByte(cg, '/')+1:]
	}
	uid, _ := st["uid"].Value().(uint32)
	return fmt.Sprintf("uid %d", uid)
}

// printTop prints one refresh: a header, then each connection and its
// subflows. Plain lines, one refresh after the other, so that it works
// over ssh and into a file; on a terminal each refresh starts at the top
// of a cleared screen.
func (x *cmdCtx) printTop(now time.Time, rows []topRow) {
	if x.terminal {
		fmt.Fprint(x.out, "\033[H\033[2J")
	}
	fmt.Fprintf(x.out, "mptcpctl top: %s, %s\n", now.Format("15:04:05"), count(len(rows), "connection"))
	tw := table(x.out)
	fmt.Fprintln(tw, "#\tOWNER\tSENT/s\tRECV/s\tRETRANS\tSUBFLOWS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", r.Number, r.Owner, bytesStr(uint64(r.SentPerS)), bytesStr(uint64(r.RecvPerS)),
			bytesStr(r.Retrans), len(r.Subflows))
		for _, s := range r.Subflows {
			role := "active"
			if s.Standby {
				role = "standby"
			}
			fmt.Fprintf(tw, "\t  %s -> %s %s %s\t%s\t%s\trtt %.2f ms\t\n", s.Local, s.Remote, dash(s.Interface), role,
				bytesStr(uint64(s.SentPerS)), bytesStr(uint64(s.RecvPerS)), float64(s.RTTus)/1000)
		}
	}
	tw.Flush()
	fmt.Fprintln(x.out)
}
