package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The --timeout option: how long each request waits for its answer.

// timeoutSyntax says what --timeout takes, for its error messages.
const timeoutSyntax = "a duration such as 5s, 500ms or 1m30s, or a number of seconds such as 2.5"

// parseTimeout parses the value of --timeout: a Go duration ("5s",
// "500ms", "1m30s") or, as busctl's --timeout takes it, a plain number of
// seconds ("5", "2.5"). It must be more than zero.
func parseTimeout(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || strings.Trim(s, "0123456789.") != "" {
			return 0, usageErrorf("--timeout %q: not %s", s, timeoutSyntax)
		}
		if secs > (time.Duration(1<<63 - 1)).Seconds() {
			return 0, usageErrorf("--timeout %q: too long", s)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, usageErrorf("--timeout %q: must be more than 0", s)
	}
	return d, nil
}

// timeoutArg returns the value of a "--timeout=VALUE" (or "-timeout=VALUE")
// argument.
func timeoutArg(arg string) (string, bool) {
	for _, p := range []string{"--timeout=", "-timeout="} {
		if v, ok := strings.CutPrefix(arg, p); ok {
			return v, true
		}
	}
	return "", false
}

func (x *cmdCtx) setTimeout(s string) error {
	d, err := parseTimeout(s)
	if err != nil {
		return err
	}
	x.timeout = d
	return nil
}

// timeoutFlag is --timeout among a command's options (cmdCtx.parse). The
// flag package words its errors for any value; err keeps parseTimeout's.
type timeoutFlag struct {
	x   *cmdCtx
	err error
}

func (f *timeoutFlag) String() string {
	if f == nil || f.x == nil {
		return ""
	}
	return f.x.timeout.String()
}

func (f *timeoutFlag) Set(s string) error {
	f.err = f.x.setTimeout(s)
	return f.err
}

// timeoutError is the error of a request to who (the daemon, or the bus)
// that got no answer within d.
func timeoutError(who string, d time.Duration) error {
	hint := "is it stuck? (see its log: `journalctl -u mptcp-pmd`; "
	if who != daemonName {
		hint = "is dbus-daemon stuck? ("
	}
	return &exitError{code: exitTimeout, err: fmt.Errorf("%s did not answer within %s: %s--timeout sets how long mptcpctl waits)", who, d, hint)}
}
