package main

// The daemon's side of systemd: readiness, status, reload and stop
// notifications (sd_notify), the watchdog, and logging to journald.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/coreos/go-systemd/v22/journal"

	"github.com/mptcp-pmd/mptcp-pmd/service"
)

// statusPeriod is how often the daemon refreshes its STATUS= line when no
// watchdog asks for more.
const statusPeriod = 10 * time.Second

// notifier reports the daemon's state to the service manager over the
// socket named by NOTIFY_SOCKET (sd_notify(3)). Without NOTIFY_SOCKET, when
// not started by systemd with Type=notify, it does nothing.
type notifier struct {
	log     *slog.Logger
	enabled bool
}

func newNotifier(log *slog.Logger) *notifier {
	return &notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
}

// send sends the lines ("READY=1", "STATUS=…") as one message. A failure is
// logged: the service manager may be gone, which must not stop the daemon.
func (n *notifier) send(lines ...string) {
	if !n.enabled || len(lines) == 0 {
		return
	}
	if _, err := daemon.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		n.log.Warn("sd_notify failed", "state", strings.Join(lines, " "), "err", err)
	}
}

// ready says the daemon is up: call it once the bus name is owned and the
// service loop has answered (it has read the kernel's state).
func (n *notifier) ready(status string) { n.send(daemon.SdNotifyReady, "STATUS="+status) }

// reloading says a configuration reload has begun; ready ends it.
func (n *notifier) reloading() {
	n.send(daemon.SdNotifyReloading, "MONOTONIC_USEC="+daemon.SdNotifyMonotonicUsec(), "STATUS=Reloading the configuration")
}

// stopping says the daemon is shutting down.
func (n *notifier) stopping() { n.send(daemon.SdNotifyStopping, "STATUS=Stopping") }

// notifyFailure reports why the daemon is about to exit with an error, for
// systemctl status. Without NOTIFY_SOCKET it does nothing.
func notifyFailure(err error) { daemon.SdNotify(false, "STATUS=Failed: "+err.Error()) }

// stateReader is what the daemon's status and watchdog ask of the service
// loop; *service.Service implements it.
type stateReader interface {
	Manager(ctx context.Context) (service.Manager, error)
}

// statusOf asks the service loop for its state (a round trip through the
// loop) and returns the STATUS= text, such as "Watching 3 connections,
// policy none, control builtin".
func statusOf(ctx context.Context, r stateReader) (string, error) {
	m, err := r.Manager(ctx)
	if err != nil {
		return "", err
	}
	noun := "connections"
	if m.ConnectionCount == 1 {
		noun = "connection"
	}
	s := fmt.Sprintf("Watching %d %s, policy %s, control %s", m.ConnectionCount, noun, m.Policy, m.ControlMode)
	if m.Controller != "" {
		s += " by " + m.Controller
	}
	return s, nil
}

// supervise runs until ctx ends. Every period (half the watchdog interval
// when the watchdog is on, statusPeriod otherwise) it asks the service loop
// for its state, with the period as timeout, and when the loop answers it
// sends WATCHDOG=1 (if watchdog > 0) and the STATUS= line if it changed.
// A loop that does not answer gets no ping, so a stuck daemon is restarted
// by the service manager once the watchdog interval has passed; so does a
// bus connection that bus (if not nil) says is unhealthy.
func (n *notifier) supervise(ctx context.Context, r stateReader, bus func() error, watchdog time.Duration, status string) {
	period := statusPeriod
	if watchdog > 0 {
		period = min(period, watchdog/2)
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, period)
		s, err := statusOf(pctx, r)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			n.log.Warn("the service loop did not answer in time: no watchdog ping", "err", err)
			continue
		}
		if bus != nil {
			if err := bus(); err != nil {
				n.log.Warn("the bus connection is not healthy: no watchdog ping", "err", err)
				continue
			}
		}
		var lines []string
		if watchdog > 0 {
			lines = append(lines, daemon.SdNotifyWatchdog)
		}
		if s != status {
			lines = append(lines, "STATUS="+s)
			status = s
		}
		n.send(lines...)
	}
}

// watchdogInterval returns the watchdog interval systemd asks for
// (WATCHDOG_USEC, when WATCHDOG_PID is unset or this process), or 0.
func watchdogInterval(log *slog.Logger) time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("ignoring the watchdog settings", "err", err)
		return 0
	}
	return d
}

// newLogger returns the daemon's logger: structured records to journald
// when stderr is connected to the journal (the daemon was started by
// systemd: JOURNAL_STREAM names stderr), text to stderr otherwise.
func newLogger(stderr io.Writer, level slog.Leveler) *slog.Logger {
	if stderr == io.Writer(os.Stderr) {
		if ok, _ := journal.StderrIsJournalStream(); ok {
			return slog.New(newJournalHandler(level, journal.Send, stderr))
		}
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// journalSender sends one entry to journald (journal.Send).
type journalSender func(message string, priority journal.Priority, fields map[string]string) error

// journalHandler is a slog.Handler that writes to journald's native
// protocol. Every attribute becomes a journal field of its own, its key
// upper-cased with groups joined by "_" (token → TOKEN, so
// "journalctl TOKEN=…" finds a connection's records); the level becomes
// PRIORITY. MESSAGE holds the message followed by the attributes as
// key=value, so that plain journalctl output keeps the details.
type journalHandler struct {
	level    slog.Leveler
	send     journalSender
	fallback io.Writer // gets the message when journald refuses it
	prefix   string    // group prefix for attributes added later, "" or "G_"
	textPre  string    // text prefix for those attributes, "" or "g."
	fields   []journalField
}

type journalField struct {
	name, text, value string // journal field name, key=value key, value
}

// reservedFields are set by the handler; attributes of those names get an
// ATTR_ prefix.
var reservedFields = map[string]bool{
	"MESSAGE": true, "PRIORITY": true, "SYSLOG_IDENTIFIER": true,
	"CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
}

func newJournalHandler(level slog.Leveler, send journalSender, fallback io.Writer) *journalHandler {
	if level == nil {
		level = slog.LevelInfo
	}
	return &journalHandler{level: level, send: send, fallback: fallback}
}

// Enabled reports whether records of the level are logged.
func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// WithAttrs returns a handler that adds attrs to every record.
func (h *journalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h2 := *h
	h2.fields = h.fields[:len(h.fields):len(h.fields)]
	for _, a := range attrs {
		h2.fields = appendAttr(h2.fields, h.prefix, h.textPre, a)
	}
	return &h2
}

// WithGroup returns a handler that puts later attributes in the group.
func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix += fieldName(name) + "_"
	h2.textPre += name + "."
	return &h2
}

// Handle sends the record to journald.
func (h *journalHandler) Handle(_ context.Context, r slog.Record) error {
	fields := h.fields
	if r.NumAttrs() > 0 {
		fields = fields[:len(fields):len(fields)]
		r.Attrs(func(a slog.Attr) bool {
			fields = appendAttr(fields, h.prefix, h.textPre, a)
			return true
		})
	}
	var msg strings.Builder
	msg.WriteString(r.Message)
	vars := make(map[string]string, len(fields)+4)
	vars["SYSLOG_IDENTIFIER"] = "mptcp-pmd"
	for _, f := range fields {
		vars[f.name] = f.value
		msg.WriteByte(' ')
		msg.WriteString(f.text)
		msg.WriteByte('=')
		msg.WriteString(quoteValue(f.value))
	}
	if r.PC != 0 {
		fr, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		if fr.File != "" {
			vars["CODE_FILE"] = fr.File
			vars["CODE_LINE"] = strconv.Itoa(fr.Line)
			vars["CODE_FUNC"] = fr.Function
		}
	}
	if err := h.send(msg.String(), priority(r.Level), vars); err != nil {
		if h.fallback != nil {
			fmt.Fprintf(h.fallback, "%s %s\n", r.Level, msg.String())
		}
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// appendAttr appends the fields of a, flattening groups.
func appendAttr(fields []journalField, prefix, textPre string, a slog.Attr) []journalField {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fields
	}
	if a.Value.Kind() == slog.KindGroup {
		p, t := prefix, textPre
		if a.Key != "" {
			p += fieldName(a.Key) + "_"
			t += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			fields = appendAttr(fields, p, t, g)
		}
		return fields
	}
	name := prefix + fieldName(a.Key)
	if reservedFields[name] {
		name = "ATTR_" + name
	}
	return append(fields, journalField{name: name, text: textPre + a.Key, value: a.Value.String()})
}

// fieldName turns an attribute key into a valid journal field name:
// upper case letters, digits and underscores, not starting with an
// underscore or a digit.
func fieldName(key string) string {
	b := []byte(strings.ToUpper(key))
	for i, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			b[i] = '_'
		}
	}
	s := strings.TrimLeft(string(b), "_")
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		s = "ATTR_" + s
	}
	return s
}

// quoteValue quotes a value for the key=value text if it is empty or has
// spaces, quotes, '=' or control characters.
func quoteValue(s string) string {
	if s == "" || strings.IndexFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || r == '"' || r == '=' || !unicode.IsPrint(r)
	}) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// priority maps a slog level to a syslog priority.
func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
