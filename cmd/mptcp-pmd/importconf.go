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
	t := &mptcpdTranslation{source: source}
	t.policy(core)
	t.addrFlags(core)
	t.notifyFlags(core)
	t.otherKeys(core)
	return t.render(), t.lost
}

// mptcpdTranslation is the work of translateMptcpdConf: the TOML lines of
// each section, and the settings that have no equivalent.
type mptcpdTranslation struct {
	source    string   // the mptcpd file, to name in messages
	top       []string // top-level TOML lines
	filter    []string // lines of [filter]
	endpoints []string // lines of [endpoints]
	none      []string // comments on the settings without an equivalent
	lost      []string // one line for each setting without an equivalent
}

// noEquivalent names a setting that has no equivalent, in the TOML and in
// the lost lines, with why.
func (t *mptcpdTranslation) noEquivalent(e mptcpdEntry, why string) {
	t.none = append(t.none, wrapComment(fmt.Sprintf("%s=%s: %s", e.key, e.value, why)))
	where := t.source
	if e.line > 0 { // 0: a key the file does not set
		where += ":" + strconv.Itoa(e.line)
	}
	t.lost = append(t.lost, fmt.Sprintf("%s: %s=%s has no equivalent: %s", where, e.key, e.value, why))
}

// fromComment is the TOML comment naming the mptcpd setting a section's
// lines come from.
func fromComment(e mptcpdEntry) string {
	return fmt.Sprintf("# from %s=%s", e.key, e.value)
}

// policy translates path-manager and load-plugins into the policy:
// mptcpd's default plugin, else the plugins it loads.
func (t *mptcpdTranslation) policy(core map[string]mptcpdEntry) {
	pmEntry, hasPM := core["path-manager"]
	loadEntry, hasLoad := core["load-plugins"]
	var loaded []string
	if hasLoad {
		loaded = t.loadedPlugins(loadEntry)
	}
	plugin := ""
	switch {
	case hasPM:
		plugin = t.pathManager(pmEntry, loadEntry, hasLoad)
	case hasLoad:
		plugin = t.firstLoadedPlugin(loadEntry, loaded)
	}
	if plugin != "" {
		t.top = append(t.top, policyLines(plugin)...)
	}
}

// loadedPlugins returns the plugins load-plugins lists, and names those
// mptcp-pmd has no policy for.
func (t *mptcpdTranslation) loadedPlugins(load mptcpdEntry) []string {
	loaded := splitList(load.value)
	for _, p := range loaded {
		if _, ok := mptcpdPlugins[p]; !ok {
			t.noEquivalent(mptcpdEntry{"load-plugins", p, load.line},
				"mptcp-pmd has no such built-in policy (it has endpoints, subflow-per-interface, fullmesh, none)")
		}
	}
	return loaded
}

// pathManager returns the plugin path-manager names, which mptcpd uses
// whatever it loads, or "" if mptcp-pmd has no policy for it.
func (t *mptcpdTranslation) pathManager(pmEntry, loadEntry mptcpdEntry, hasLoad bool) string {
	t.top = append(t.top, fromComment(pmEntry))
	if hasLoad {
		t.top = append(t.top, fromComment(loadEntry))
	}
	if _, ok := mptcpdPlugins[pmEntry.value]; !ok {
		t.noEquivalent(pmEntry, "mptcp-pmd has no such built-in policy; the policy stays mptcp-pmd's default")
		return ""
	}
	return pmEntry.value
}

// firstLoadedPlugin returns the first of the loaded plugins mptcp-pmd has a
// policy for, or "" if there is none, and names the others as dropped.
func (t *mptcpdTranslation) firstLoadedPlugin(loadEntry mptcpdEntry, loaded []string) string {
	t.top = append(t.top, fromComment(loadEntry))
	plugin := ""
	known := slices.DeleteFunc(slices.Clone(loaded), func(p string) bool { return mptcpdPlugins[p] == "" })
	if len(known) > 0 {
		plugin = known[0]
	}
	if len(known) > 1 {
		t.top = append(t.top, fmt.Sprintf("# mptcp-pmd runs one policy: the first plugin, %s, is used", plugin))
		t.lost = append(t.lost, fmt.Sprintf("%s:%d: load-plugins: mptcp-pmd runs one policy; %s was chosen, the others are dropped",
			t.source, loadEntry.line, plugin))
	}
	return plugin
}

// policyLines are the top-level TOML lines that select the policy of a
// known plugin.
func policyLines(plugin string) []string {
	lines := []string{"policy = " + strconv.Quote(mptcpdPlugins[plugin])}
	if plugin == "sspi" {
		lines = append(lines,
			"# subflow-per-interface needs the userspace path manager (net.mptcp.path_manager=userspace);",
			"# to let mptcp-pmd set it, uncomment:",
			"# set_path_manager = true")
	}
	return lines
}

// addrFlags translates addr-flags into the flags of [endpoints].
func (t *mptcpdTranslation) addrFlags(core map[string]mptcpdEntry) {
	e, ok := core["addr-flags"]
	if !ok {
		return
	}
	var flags []string
	for _, w := range splitList(e.value) {
		if slices.Contains(mptcpdAddrFlags, w) {
			flags = append(flags, strconv.Quote(w))
		} else {
			t.noEquivalent(mptcpdEntry{e.key, w, e.line}, "not an endpoint flag of mptcp-pmd")
		}
	}
	t.endpoints = append(t.endpoints, fromComment(e), "flags = ["+strings.Join(flags, ", ")+"]")
}

// notifyFlags translates notify-flags into [filter]. mptcpd skips nothing
// unless told to, so each filter it names is set to whether it is listed;
// mptcp-pmd's defaults differ, which is named when notify-flags is not set.
func (t *mptcpdTranslation) notifyFlags(core map[string]mptcpdEntry) {
	e, ok := core["notify-flags"]
	if !ok {
		t.noEquivalent(mptcpdEntry{"notify-flags", "(not set)", 0}, "mptcpd then filtered no address, and ignored "+
			"those present at its start; mptcp-pmd uses those too, through its default [filter] "+
			"(loopback, link-local and tentative addresses and container interfaces skipped)")
		return
	}
	words := splitList(e.value)
	t.filter = append(t.filter, fromComment(e))
	for _, f := range []struct{ word, key string }{
		{"skip_loopback", "skip_loopback"},
		{"skip_link_local", "skip_link_local"},
		{"check_route", "require_default_route"},
	} {
		t.filter = append(t.filter, fmt.Sprintf("%s = %t", f.key, slices.Contains(words, f.word)))
	}
	t.filter = append(t.filter, "# skip_tentative and interfaces_allow/interfaces_deny (mptcp-pmd only) keep their defaults")
	if !slices.Contains(words, "existing") {
		t.noEquivalent(mptcpdEntry{e.key, "(without existing)", e.line},
			"mptcpd ignored the addresses present at its start; mptcp-pmd always uses them")
	}
	for _, w := range words {
		if !slices.Contains([]string{"existing", "skip_loopback", "skip_link_local", "check_route"}, w) {
			t.noEquivalent(mptcpdEntry{e.key, w, e.line}, "not a notify flag mptcp-pmd knows")
		}
	}
}

// otherKeys names the keys that have no equivalent at all: log, plugin-dir,
// and those mptcpd does not know, in sorted order.
func (t *mptcpdTranslation) otherKeys(core map[string]mptcpdEntry) {
	if e, ok := core["log"]; ok {
		t.noEquivalent(e, "mptcp-pmd logs to standard error, which systemd passes to the journal; set log_level for the detail")
	}
	if e, ok := core["plugin-dir"]; ok {
		t.noEquivalent(e, "mptcp-pmd's policies are built in, it loads no plugins")
	}
	known := []string{"path-manager", "load-plugins", "addr-flags", "notify-flags", "log", "plugin-dir"}
	for _, k := range sortedKeys(core) {
		if !slices.Contains(known, k) {
			t.noEquivalent(core[k], "not a key of mptcpd's [core] group")
		}
	}
}

// render returns the TOML: a header naming the source, the top-level
// lines, [filter], [endpoints], then the settings without an equivalent.
func (t *mptcpdTranslation) render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# mptcp-pmd configuration converted from the mptcpd configuration %s\n", t.source)
	b.WriteString("# by mptcp-pmd --import-mptcpd-conf. Review it, then install it as\n")
	b.WriteString("# " + defaultConfigPath + ".\n")
	writeSection(&b, "", t.top)
	writeSection(&b, "[filter]", t.filter)
	writeSection(&b, "[endpoints]", t.endpoints)
	if len(t.none) > 0 {
		writeSection(&b, "", append([]string{"# Settings of mptcpd without an equivalent in mptcp-pmd:"}, t.none...))
	}
	return b.String()
}

// writeSection writes the lines to b after a blank line and the header, if
// any; it writes nothing if there are no lines.
func writeSection(b *strings.Builder, header string, lines []string) {
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

// sortedKeys returns the keys of m in order.
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
