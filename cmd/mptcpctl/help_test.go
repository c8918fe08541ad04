package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
)

// TestHelp checks the help, which needs no bus: the list names every
// command, and each command's --help and `help NAME` print its synopsis.
func TestHelp(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	list := mustCtl(t, "help")
	if other := mustCtl(t, "--help"); other != list {
		t.Errorf("--help differs from help")
	}
	for _, c := range commands {
		if !strings.Contains(list, "  "+c.synopsis()[len("mptcpctl "):]) {
			t.Errorf("help lacks %q", c.synopsis())
		}
		words := strings.Fields(c.name)
		for _, args := range [][]string{append(words, "--help"), append(words, "-h"), append([]string{"help"}, words...)} {
			out := mustCtl(t, args...)
			if !strings.HasPrefix(out, "Usage: "+c.synopsis()+"\n") {
				t.Errorf("mptcpctl %s printed %q", strings.Join(args, " "), out)
			}
		}
	}
	// A group's help lists its subcommands; a help request wins over
	// missing arguments.
	out := mustCtl(t, "help", "endpoint")
	for _, sub := range []string{"add", "del", "set", "flush"} {
		if !strings.Contains(out, "Usage: mptcpctl endpoint "+sub) {
			t.Errorf("help endpoint lacks %s:\n%s", sub, out)
		}
	}
	if out := mustCtl(t, "subflow", "add", "--help"); !strings.Contains(out, "userspace path manager") {
		t.Errorf("subflow add --help:\n%s", out)
	}
	for _, s := range []string{"Usage: mptcpctl [--json] [--timeout DURATION] COMMAND", "--timeout DURATION", "(default 25s)"} {
		if !strings.Contains(list, s) {
			t.Errorf("help lacks %q", s)
		}
	}
	// Every documented exit code is in the help.
	for _, s := range []string{"0 success", "1 the daemon refused", "2 usage", "3 daemon or bus not reachable", "4 permission denied", "5 not found",
		"6 no answer within the timeout", "130 interrupted by SIGINT", "143 terminated by SIGTERM"} {
		if !strings.Contains(strings.Join(strings.Fields(list), " "), s) {
			t.Errorf("help lacks the exit status %q", s)
		}
	}
}

// TestParseOptions checks option placement: before, between and after the
// arguments, and "--" ending the options.
func TestParseOptions(t *testing.T) {
	for _, args := range [][]string{
		{"--json", "3", "10.0.0.1"},
		{"3", "--json", "10.0.0.1"},
		{"3", "10.0.0.1", "--json"},
		{"--json", "--", "3", "10.0.0.1"},
	} {
		x := &cmdCtx{}
		pos, err := x.parse("announce", nil, args, 2)
		if err != nil || !x.json || pos[0] != "3" || pos[1] != "10.0.0.1" {
			t.Errorf("parse %q = %q, json %v, %v", args, pos, x.json, err)
		}
	}
	// --timeout too, with its value as the next argument or after "=".
	for _, args := range [][]string{
		{"--timeout", "5s", "3", "10.0.0.1"},
		{"3", "--timeout=5", "10.0.0.1"},
		{"3", "10.0.0.1", "-timeout", "5000ms"},
	} {
		x := &cmdCtx{timeout: defaultTimeout}
		pos, err := x.parse("announce", nil, args, 2)
		if err != nil || x.timeout != 5*time.Second || pos[0] != "3" || pos[1] != "10.0.0.1" {
			t.Errorf("parse %q = %q, timeout %v, %v", args, pos, x.timeout, err)
		}
	}
	// Before the command, dispatch takes it.
	for _, args := range [][]string{{"--timeout", "1.5", "help"}, {"--timeout=1500ms", "help"}, {"-timeout", "1.5s", "help"}} {
		x := &cmdCtx{out: io.Discard, timeout: defaultTimeout}
		if err := x.dispatch(args); !errors.Is(err, errHelp) || x.timeout != 1500*time.Millisecond {
			t.Errorf("dispatch %q: timeout %v, %v", args, x.timeout, err)
		}
	}
	x := &cmdCtx{}
	if pos, err := x.parse("announce", nil, []string{"--", "3", "--json"}, 2); err != nil || x.json || pos[1] != "--json" {
		t.Errorf(`after "--", --json is an argument: %q, json %v, %v`, pos, x.json, err)
	}
}

// TestManPage checks that mptcpctl(1) documents every command and option.
func TestManPage(t *testing.T) {
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "dist/man/mptcpctl.1"))
	if err != nil {
		t.Fatal(err)
	}
	// The text without font changes and with plain hyphens.
	text := regexp.MustCompile(`\\f[BIRP]`).ReplaceAllString(string(data), "")
	text = strings.ReplaceAll(text, `\-`, "-")
	for _, c := range commands {
		if !regexp.MustCompile(`(?m)^\.(B|BI|BR) "?` + regexp.QuoteMeta(c.name) + `( |"|$)`).MatchString(text) {
			t.Errorf("mptcpctl.1 has no entry for %q", c.name)
		}
		for _, opt := range regexp.MustCompile(`--[a-z-]+`).FindAllString(c.args, -1) {
			if !strings.Contains(text, opt) {
				t.Errorf("mptcpctl.1 lacks %s of %q", opt, c.name)
			}
		}
	}
	// The global options, and every exit status, as a tagged paragraph.
	for _, opt := range []string{"--json", "--timeout", "--help"} {
		if !regexp.MustCompile(`(?m)^\.(B|BI|BR) "?` + opt + `( |"|$)`).MatchString(text) {
			t.Errorf("mptcpctl.1 has no entry for %s", opt)
		}
	}
	for _, code := range []int{exitOK, exitFailure, exitUsage, exitUnavailable, exitPermission, exitNotFound,
		exitTimeout, exitInterrupted, exitTerminated} {
		if !strings.Contains(text, fmt.Sprintf("\n.TP\n.B %d\n", code)) {
			t.Errorf("mptcpctl.1 does not document the exit status %d", code)
		}
	}
}
