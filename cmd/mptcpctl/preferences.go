package main

import (
	"flag"
	"fmt"
	"maps"
	"slices"
)

func cmdPreferences(x *cmdCtx, args []string) error {
	c, err := x.noArgs("preferences", args)
	if err != nil {
		return err
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	if x.json {
		return printJSON(x.out, m.Preferences)
	}
	tw := table(x.out)
	fmt.Fprintln(tw, "INTERFACE\tPREFERENCE")
	for _, name := range slices.Sorted(maps.Keys(m.Preferences)) {
		fmt.Fprintf(tw, "%s\t%s\n", name, m.Preferences[name])
	}
	return tw.Flush()
}

func cmdPreferenceSet(x *cmdCtx, args []string) error {
	pos, err := x.parse("preference set", nil, args, 2)
	if err != nil {
		return err
	}
	switch pos[1] {
	case "cheap", "expensive", "backup", "off", "default":
	default:
		return usageErrorf("%q is not a preference (cheap, expensive, backup, off or default)", pos[1])
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	return callError(c.callManager("SetInterfacePreference", pos[0], pos[1]).Err)
}

func cmdCounters(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("counters", flag.ContinueOnError)
	all := fs.Bool("all", false, "")
	if _, err := x.parse("counters", fs, args, 0); err != nil {
		return err
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	var m map[string]uint64
	if err := c.callManager("GetCounters").Store(&m); err != nil {
		return callError(err)
	}
	if x.json {
		return printJSON(x.out, m)
	}
	tw := table(x.out)
	for _, name := range slices.Sorted(maps.Keys(m)) {
		if m[name] != 0 || *all {
			fmt.Fprintf(tw, "MPTcpExt%s\t%d\n", name, m[name])
		}
	}
	return tw.Flush()
}
