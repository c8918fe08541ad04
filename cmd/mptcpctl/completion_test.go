package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi/dbustest"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// complete runs the bash completion of dist/completion/mptcpctl.bash for
// the command line words, the last being the word completed, and returns
// the candidates, sorted. PATH starts with dir, if not "".
func complete(t *testing.T, dir string, words ...string) []string {
	t.Helper()
	bash := pmtest.RequireProgram(t, "bash")
	root, err := dbustest.ProjectRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := `source "$1" || exit 1; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_mptcpctl
printf '%s\n' "${COMPREPLY[@]}"`
	cmd := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c", script, "bash",
		filepath.Join(root, "dist/completion/mptcpctl.bash"), "mptcpctl"}, words...)...)
	if dir != "" {
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("completing %q: %v", words, err)
	}
	var got []string
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			got = append(got, l)
		}
	}
	slices.Sort(got)
	return got
}

// TestCompletionCommands checks the completion against the command table:
// every command, subcommand and option is offered.
func TestCompletionCommands(t *testing.T) {
	var top []string
	groups := map[string][]string{}
	for _, c := range commands {
		words := strings.Fields(c.name)
		if !slices.Contains(top, words[0]) {
			top = append(top, words[0])
		}
		if len(words) == 2 {
			groups[words[0]] = append(groups[words[0]], words[1])
		}
	}
	slices.Sort(top)
	if got := complete(t, "", ""); !slices.Equal(got, top) {
		t.Errorf("commands: %q, want %q", got, top)
	}
	if got := complete(t, "", "help", ""); !slices.Equal(got, top) {
		t.Errorf("help: %q, want %q", got, top)
	}
	if got := complete(t, "", "end"); !slices.Equal(got, []string{"endpoint", "endpoints"}) {
		t.Errorf("end: %q", got)
	}
	for g, subs := range groups {
		slices.Sort(subs)
		if got := complete(t, "", g, ""); !slices.Equal(got, subs) {
			t.Errorf("%s subcommands: %q, want %q", g, got, subs)
		}
	}
	option := regexp.MustCompile(`--[a-z-]+`)
	for _, c := range commands {
		want := append(option.FindAllString(c.args, -1), "--json", "--timeout", "--help")
		slices.Sort(want)
		words := append(strings.Fields(c.name), "--")
		if got := complete(t, "", words...); !slices.Equal(got, want) {
			t.Errorf("options of %s: %q, want %q", c.name, got, want)
		}
	}
}

func TestCompletionValues(t *testing.T) {
	for _, tc := range []struct {
		words []string
		want  []string
	}{
		{[]string{"endpoint", "add", "10.0.0.1", "--flags", "s"}, []string{"signal", "subflow"}},
		{[]string{"endpoint", "add", "10.0.0.1", "--flags", "subflow,b"}, []string{"subflow,backup"}},
		{[]string{"endpoint", "add", "--port", "80", "--flags", "f"}, []string{"fullmesh"}},
		{[]string{"subflow", "add", "1", "10.0.0.1", "10.0.0.2:80", "--interface", "lo"}, []string{"lo"}},
		{[]string{"subflow", "backup", "1", "10.0.0.1", "10.0.0.2:80", ""}, []string{"off", "on"}},
		{[]string{"subflow", "--json", "backup", "1", "10.0.0.1", "10.0.0.2:80", "o"}, []string{"off", "on"}},
		{[]string{"status", ""}, nil},
		{[]string{"--timeout", ""}, nil},
		{[]string{"--timeout", "5s", "sta"}, []string{"status"}},
		{[]string{"--timeout", "5s", "endpoint", "add", "--flags", "l"}, []string{"laminar"}},
		{[]string{"--"}, []string{"--help", "--json", "--timeout"}},
		{[]string{"limits", "set", ""}, nil},
	} {
		if got := complete(t, "", tc.words...); !slices.Equal(got, tc.want) {
			t.Errorf("%q: %q, want %q", tc.words, got, tc.want)
		}
	}
}

// TestCompletionFromDaemon checks the connection numbers and endpoint ids
// that the completion asks the daemon for, with mptcpctl itself.
func TestCompletionFromDaemon(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	n1 := d.open(t, 0x11111111, true, "10.55.1.2:40000", "10.55.0.1:8080")
	n2 := d.open(t, 0x22222222, true, "10.55.1.2:40001", "10.55.0.1:8080")
	mustCtl(t, "endpoint", "add", "10.55.1.2", "--id", "3")
	mustCtl(t, "endpoint", "add", "10.55.2.2", "--id", "12")

	dir := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\n%s=1 exec %q \"$@\"\n", asMainEnv, selfCopy(t))
	if err := os.WriteFile(filepath.Join(dir, "mptcpctl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	conns := []string{fmt.Sprint(n1), fmt.Sprint(n2)}
	for _, words := range [][]string{
		{"connection", "show", ""},
		{"subflow", "add", ""},
		{"subflow", "backup", ""},
		{"announce", ""},
		{"remove", ""},
	} {
		if got := complete(t, dir, words...); !slices.Equal(got, conns) {
			t.Errorf("%q: %q, want connections %q", words, got, conns)
		}
	}
	if got := complete(t, dir, "endpoint", "del", "1"); !slices.Equal(got, []string{"12"}) {
		t.Errorf("endpoint del 1: %q, want 12", got)
	}
	if got := complete(t, dir, "endpoint", "set", ""); !slices.Equal(got, []string{"12", "3"}) {
		t.Errorf("endpoint set: %q, want 3 and 12", got)
	}
	if got := complete(t, dir, "endpoint", "set", "3", "n"); !slices.Equal(got, []string{"none"}) {
		t.Errorf("endpoint set 3 n: %q, want none", got)
	}
}
