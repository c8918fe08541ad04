package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Output helpers: tables aligned for a terminal, and JSON.

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// dash stands for an empty value in a table.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// count is "1 connection", "2 connections".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func hostPort(addr string, port uint16) string {
	if strings.Contains(addr, ":") {
		addr = "[" + addr + "]"
	}
	return addr + ":" + strconv.Itoa(int(port))
}

func side(server bool) string {
	if server {
		return "server"
	}
	return "client"
}

func subflowIDs(s subflow) string { return fmt.Sprintf("id %d/%d", s.LocalID, s.RemoteID) }

// subflowNote is what a subflow line ends with: its interface and backup
// flag.
func subflowNote(s subflow) string {
	var n []string
	if s.Interface != "" {
		n = append(n, "dev "+s.Interface)
	}
	if s.Backup {
		n = append(n, "backup")
	}
	return strings.Join(n, " ")
}

func flagList(flags []string) string { return dash(strings.Join(flags, ",")) }

func portOrDash(p uint16) string {
	if p == 0 {
		return "-"
	}
	return strconv.Itoa(int(p))
}
