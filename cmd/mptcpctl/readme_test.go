package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// tourCommands returns the mptcpctl command lines in text: "$ mptcpctl ..."
// as the README shows them, or `ctl ...` as dist/lab/tour.sh runs them.
func tourCommands(t *testing.T, file string, re *regexp.Regexp) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", file))
	if err != nil {
		t.Fatal(err)
	}
	var cmds [][]string
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		cmds = append(cmds, strings.Fields(m[1]))
	}
	return cmds
}

// TestReadmeTourCommandsExist checks that every mptcpctl command the
// README's tour shows is still a command with the options shown, and that
// the tour in the README is the one dist/lab/tour.sh runs (so its output can
// be made again).
func TestReadmeTourCommandsExist(t *testing.T) {
	readme := tourCommands(t, "README.md", regexp.MustCompile(`(?m)^\$ mptcpctl (.*)$`))
	script := tourCommands(t, "dist/lab/tour.sh", regexp.MustCompile(`(?m)^ctl (.*)$`))
	if len(readme) < 5 {
		t.Fatalf("the README shows %d mptcpctl commands, want the tour's", len(readme))
	}
	for _, args := range readme {
		words := slices.DeleteFunc(slices.Clone(args), func(w string) bool { return w == "--json" })
		cmd, _, err := lookup(words)
		if err != nil || cmd == nil {
			t.Errorf("README shows `mptcpctl %s`: not a command (%v)", strings.Join(args, " "), err)
			continue
		}
		for _, w := range words {
			if strings.HasPrefix(w, "--") && !strings.Contains(cmd.args, w) {
				t.Errorf("README shows `mptcpctl %s`: %s has no option %s", strings.Join(args, " "), cmd.name, w)
			}
		}
	}
	var shown []string
	for _, args := range readme {
		if !slices.Equal(args, []string{"monitor"}) { // the tour prints the monitor's log at the end
			shown = append(shown, strings.Join(args, " "))
		}
	}
	var run []string
	for _, args := range script {
		run = append(run, strings.Trim(strings.Join(args, " "), `"`))
	}
	if !slices.Equal(shown, run) {
		t.Errorf("the README's tour and dist/lab/tour.sh differ:\nREADME:  %q\ntour.sh: %q", shown, run)
	}
}
