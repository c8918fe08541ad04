package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// diagnoseTimeout bounds each command diagnose runs.
const diagnoseTimeout = 10 * time.Second

// configPath is the daemon's configuration file, shown by diagnose.
const configPath = "/etc/mptcp-pmd/mptcp-pmd.toml"

// cmdDiagnose writes what a bug report needs into one file (or standard
// output): the kernel and its MPTCP settings, the daemon's view, the
// configuration, the counters, the sockets and the recent log. A part
// that cannot be read says why; the report goes on.
func cmdDiagnose(x *cmdCtx, args []string) error {
	fs := flag.NewFlagSet("diagnose", flag.ContinueOnError)
	output := fs.String("output", "", "")
	if _, err := x.parse("diagnose", fs, args, 0); err != nil {
		return err
	}
	var b bytes.Buffer
	section := func(title string) { fmt.Fprintf(&b, "\n===== %s =====\n", title) }
	fmt.Fprintf(&b, "mptcpctl diagnose, %s\n", time.Now().Format(time.RFC3339))
	fmt.Fprintln(&b, "(sysctls, ip and ss are read in mptcpctl's network namespace; the daemon's parts in its own)")

	section("kernel")
	if v, err := os.ReadFile("/proc/version"); err == nil {
		b.Write(v)
	} else {
		fmt.Fprintf(&b, "unreadable: %v\n", err)
	}
	section("net.mptcp sysctls")
	files, _ := filepath.Glob("/proc/sys/net/mptcp/*")
	if len(files) == 0 {
		fmt.Fprintln(&b, "none: this kernel has no MPTCP, or /proc/sys is not visible")
	}
	for _, f := range files {
		v, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(&b, "%s: unreadable: %v\n", filepath.Base(f), err)
			continue
		}
		fmt.Fprintf(&b, "%s = %s\n", filepath.Base(f), strings.TrimSpace(string(v)))
	}

	section("the daemon")
	c, err := x.client()
	if err != nil {
		fmt.Fprintf(&b, "not reachable: %v\n", err)
	} else {
		x.diagnoseDaemon(&b, c, section)
	}

	section("configuration: " + configPath)
	if v, err := os.ReadFile(configPath); err == nil {
		b.Write(v) // holds no secrets: policies, filters, flags, group names
	} else {
		fmt.Fprintf(&b, "not read: %v (the daemon runs with the defaults when it is missing)\n", err)
	}
	for _, cmd := range [][]string{
		{"ip", "mptcp", "limits", "show"},
		{"ip", "mptcp", "endpoint", "show"},
		{"ss", "-Mni"},
		{"journalctl", "-u", "mptcp-pmd", "-n", "300", "--no-pager", "-o", "short-iso-precise"},
	} {
		section(strings.Join(cmd, " "))
		b.WriteString(runDiagnostic(x.ctx, cmd))
	}

	if *output == "" || *output == "-" {
		_, err := x.out.Write(b.Bytes())
		return err
	}
	if err := os.WriteFile(*output, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("diagnose: %w", err)
	}
	fmt.Fprintf(x.out, "wrote %s (%d bytes): attach it to the bug report\n", *output, b.Len())
	return nil
}

// diagnoseDaemon writes the daemon's status, endpoints, addresses,
// preferences and counters, as their JSON.
func (x *cmdCtx) diagnoseDaemon(b *bytes.Buffer, c *client, section func(string)) {
	m, err := c.manager()
	if err != nil {
		fmt.Fprintf(b, "Manager: %v\n", err)
		return
	}
	printJSON(b, m)
	section("the daemon's addresses (ListAddresses)")
	if addrs, err := c.addresses(); err == nil {
		printJSON(b, addrs)
	} else {
		fmt.Fprintf(b, "%v\n", err)
	}
	section("the daemon's connections")
	if conns, err := c.connections(); err == nil {
		fmt.Fprintf(b, "%d connections\n", len(conns))
		for _, cn := range conns[:min(len(conns), 50)] {
			fmt.Fprintf(b, "%d %s %s %s -> %s, %d subflows\n", cn.Number, cn.Token, cn.State,
				hostPort(cn.LocalAddress, cn.LocalPort), hostPort(cn.RemoteAddress, cn.RemotePort), len(cn.Subflows))
		}
		if len(conns) > 50 {
			fmt.Fprintf(b, "(%d more)\n", len(conns)-50)
		}
	} else {
		fmt.Fprintf(b, "%v\n", err)
	}
	section("MPTCP counters (the daemon's namespace)")
	var counters map[string]uint64
	if err := c.callManager("GetCounters").Store(&counters); err == nil {
		for _, k := range slices.Sorted(maps.Keys(counters)) {
			if counters[k] != 0 {
				fmt.Fprintf(b, "MPTcpExt%s %d\n", k, counters[k])
			}
		}
	} else {
		fmt.Fprintf(b, "%v\n", callError(err))
	}
}

// runDiagnostic runs a command for the report and returns its output, or
// why there is none.
func runDiagnostic(ctx context.Context, args []string) string {
	if _, err := exec.LookPath(args[0]); err != nil {
		return fmt.Sprintf("not run: %s is not installed\n", args[0])
	}
	ctx, cancel := context.WithTimeout(ctx, diagnoseTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		fmt.Fprintf(&out, "(%v)\n", err)
	}
	if out.Len() == 0 {
		return "(no output)\n"
	}
	return out.String()
}
