package main

// --import-mptcpd-conf: migration from mptcpd. mptcpd reads a key file
// (/etc/mptcpd/mptcpd.conf: "key=value" lines in a [core] group, "#"
// comments) with six keys; this file turns them into the equivalent TOML
// for mptcp-pmd and names what has no equivalent.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// mptcpdEntry is one key=value line of an mptcpd.conf.
type mptcpdEntry struct {
	key, value string
	line       int
}

// parseMptcpdConf reads the [core] group of an mptcpd key file. Keys of
// other groups are returned as notes (mptcpd ignores them); a line that is
// neither a comment, a group header nor key=value is an error naming it. A
// key given twice keeps its last value, as in mptcpd.
func parseMptcpdConf(name string, r io.Reader) (core map[string]mptcpdEntry, notes []string, err error) {
	core = map[string]mptcpdEntry{}
	group := ""
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#':
			continue
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") || len(line) < 3 {
				return nil, nil, fmt.Errorf("%s:%d: malformed group header %q", name, n, line)
			}
			group = line[1 : len(line)-1]
			if group != "core" {
				notes = append(notes, fmt.Sprintf("%s:%d: group [%s] is not read by mptcpd: ignored", name, n, group))
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch {
		case !ok || key == "":
			return nil, nil, fmt.Errorf("%s:%d: want key=value, not %q", name, n, line)
		case group == "":
			return nil, nil, fmt.Errorf("%s:%d: key %q before the [core] group", name, n, key)
		case group == "core":
			core[key] = mptcpdEntry{key: key, value: value, line: n}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return core, notes, nil
}

// mptcpdPlugins maps mptcpd's path-management plugins to mptcp-pmd's
// built-in policies.
var mptcpdPlugins = map[string]string{
	"addr_adv": "endpoints",             // in-kernel endpoints for the local addresses
	"sspi":     "subflow-per-interface", // one subflow per interface
}

// mptcpdAddrFlags are the addr-flags words, all of which mptcp-pmd's
// [endpoints] flags know under the same name.
var mptcpdAddrFlags = []string{"subflow", "signal", "backup", "fullmesh", "laminar"}

// translateMptcpdConf returns the TOML equivalent of an mptcpd [core]
// group, and one line for each setting that has no equivalent (which the
// TOML also names, in comments).
func translateMptcpdConf(source string, core map[string]mptcpdEntry) (toml string, lost []string) {
	var top, filter, endpoints, none []string
	noEquivalent := func(e mptcpdEntry, why string) {
		none = append(none, wrapComment(fmt.Sprintf("%s=%s: %s", e.key, e.value, why)))
		where := source
		if e.line > 0 { // 0: a key the file does not set
			where += ":" + strconv.Itoa(e.line)
		}
		lost = append(lost, fmt.Sprintf("%s: %s=%s has no equivalent: %s", where, e.key, e.value, why))
	}
	comment := func(to *[]string, e mptcpdEntry) {
		*to = append(*to, fmt.Sprintf("# from %s=%s", e.key, e.value))
	}

	// The policy: mptcpd's default plugin, else the plugins it loads.
	pmEntry, hasPM := core["path-manager"]
	loadEntry, hasLoad := core["load-plugins"]
	var loaded []string
	if hasLoad {
		loaded = splitList(loadEntry.value)
		for _, p := range loaded {
			if _, ok := mptcpdPlugins[p]; !ok {
				noEquivalent(mptcpdEntry{"load-plugins", p, loadEntry.line},
					"mptcp-pmd has no such built-in policy (it has endpoints, subflow-per-interface, fullmesh, none)")
			}
		}
	}
	plugin := ""
	switch {
	case hasPM:
		plugin = pmEntry.value
		comment(&top, pmEntry)
		if hasLoad {
			comment(&top, loadEntry)
		}
		if _, ok := mptcpdPlugins[plugin]; !ok {
			noEquivalent(pmEntry, "mptcp-pmd has no such built-in policy; the policy stays mptcp-pmd's default")
			plugin = ""
		}
	case hasLoad:
		comment(&top, loadEntry)
		known := slices.DeleteFunc(slices.Clone(loaded), func(p string) bool { return mptcpdPlugins[p] == "" })
		if len(known) > 0 {
			plugin = known[0]
		}
		if len(known) > 1 {
			top = append(top, fmt.Sprintf("# mptcp-pmd runs one policy: the first plugin, %s, is used", plugin))
			lost = append(lost, fmt.Sprintf("%s:%d: load-plugins: mptcp-pmd runs one policy; %s was chosen, the others are dropped",
				source, loadEntry.line, plugin))
		}
	}
	if plugin != "" {
		top = append(top, "policy = "+strconv.Quote(mptcpdPlugins[plugin]))
		if plugin == "sspi" {
			top = append(top,
				"# subflow-per-interface needs the userspace path manager (net.mptcp.path_manager=userspace);",
				"# to let mptcp-pmd set it, uncomment:",
				"# set_path_manager = true")
		}
	}

	if e, ok := core["addr-flags"]; ok {
		var flags []string
		for _, w := range splitList(e.value) {
			if slices.Contains(mptcpdAddrFlags, w) {
				flags = append(flags, strconv.Quote(w))
			} else {
				noEquivalent(mptcpdEntry{e.key, w, e.line}, "not an endpoint flag of mptcp-pmd")
			}
		}
		comment(&endpoints, e)
		endpoints = append(endpoints, "flags = ["+strings.Join(flags, ", ")+"]")
	}

	// notify-flags: mptcpd skips nothing unless told to, so each filter it
	// names is set to whether it is listed; mptcp-pmd's defaults differ.
	if e, ok := core["notify-flags"]; ok {
		words := splitList(e.value)
		comment(&filter, e)
		for _, f := range []struct{ word, key string }{
			{"skip_loopback", "skip_loopback"},
			{"skip_link_local", "skip_link_local"},
			{"check_route", "require_default_route"},
		} {
			filter = append(filter, fmt.Sprintf("%s = %t", f.key, slices.Contains(words, f.word)))
		}
		if !slices.Contains(words, "existing") {
			noEquivalent(mptcpdEntry{e.key, "(without existing)", e.line},
				"mptcpd ignored the addresses present at its start; mptcp-pmd always uses them")
		}
		for _, w := range words {
			if !slices.Contains([]string{"existing", "skip_loopback", "skip_link_local", "check_route"}, w) {
				noEquivalent(mptcpdEntry{e.key, w, e.line}, "not a notify flag mptcp-pmd knows")
			}
		}
	}

	if _, ok := core["notify-flags"]; !ok {
		noEquivalent(mptcpdEntry{"notify-flags", "(not set)", 0}, "mptcpd then filtered no address, and ignored "+
			"those present at its start; mptcp-pmd uses those too, through its default [filter] "+
			"(loopback, link-local and tentative addresses and container interfaces skipped)")
	}
	if e, ok := core["log"]; ok {
		noEquivalent(e, "mptcp-pmd logs to standard error, which systemd passes to the journal; set log_level for the detail")
	}
	if e, ok := core["plugin-dir"]; ok {
		noEquivalent(e, "mptcp-pmd's policies are built in, it loads no plugins")
	}
	known := []string{"path-manager", "load-plugins", "addr-flags", "notify-flags", "log", "plugin-dir"}
	for _, k := range sortedKeys(core) {
		if !slices.Contains(known, k) {
			noEquivalent(core[k], "not a key of mptcpd's [core] group")
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# mptcp-pmd configuration converted from the mptcpd configuration %s\n", source)
	b.WriteString("# by mptcp-pmd --import-mptcpd-conf. Review it, then install it as\n")
	b.WriteString("# " + defaultConfigPath + ".\n")
	section := func(header string, lines []string) {
		if len(lines) == 0 {
			return
		}
		b.WriteString("\n")
		if header != "" {
			b.WriteString(header + "\n")
		}
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	section("", top)
	if len(filter) > 0 {
		filter = append(filter, "# skip_tentative and interfaces_allow/interfaces_deny (mptcp-pmd only) keep their defaults")
	}
	section("[filter]", filter)
	section("[endpoints]", endpoints)
	if len(none) > 0 {
		none = append([]string{"# Settings of mptcpd without an equivalent in mptcp-pmd:"}, none...)
	}
	section("", none)
	return b.String(), lost
}

// wrapComment makes text a TOML comment of lines up to 78 columns, the
// lines after the first indented.
func wrapComment(text string) string {
	var b strings.Builder
	line := "#"
	for _, w := range strings.Fields(text) {
		if len(line)+1+len(w) > 78 && line != "#" && line != "#  " {
			b.WriteString(line + "\n")
			line = "#  "
		}
		line += " " + w
	}
	b.WriteString(line)
	return b.String()
}

// splitList splits an mptcpd comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, w := range strings.Split(s, ",") {
		if w = strings.TrimSpace(w); w != "" {
			out = append(out, w)
		}
	}
	return out
}

func sortedKeys(m map[string]mptcpdEntry) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// importMptcpdConf prints to out the TOML equivalent of the mptcpd
// configuration file at path, and to warn one line for each setting that
// has no equivalent.
func importMptcpdConf(path string, out, warn io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("import mptcpd configuration: %w", err)
	}
	defer f.Close()
	core, notes, err := parseMptcpdConf(path, f)
	if err != nil {
		return fmt.Errorf("import mptcpd configuration: %w", err)
	}
	toml, lost := translateMptcpdConf(path, core)
	for _, l := range append(notes, lost...) {
		fmt.Fprintf(warn, "mptcp-pmd: %s\n", l)
	}
	_, err = io.WriteString(out, toml)
	return err
}
