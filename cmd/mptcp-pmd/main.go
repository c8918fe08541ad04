// Command mptcp-pmd is the Multipath TCP path-manager daemon: it follows the
// kernel's MPTCP connections and the host's addresses, runs a built-in
// path-management policy, and exports org.mptcp.PathManager1 on the system
// bus so that other programs can watch and steer MPTCP paths.
//
// This file holds the flags and the wiring; the work is done by the
// service, dbusapi and pm packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/mptcp-pmd/mptcp-pmd/dbusapi"
	"github.com/mptcp-pmd/mptcp-pmd/pm"
	"github.com/mptcp-pmd/mptcp-pmd/pm/diag"
	"github.com/mptcp-pmd/mptcp-pmd/pm/netmon"
	"github.com/mptcp-pmd/mptcp-pmd/pm/nmmon"
	"github.com/mptcp-pmd/mptcp-pmd/pm/pmnl"
	"github.com/mptcp-pmd/mptcp-pmd/policy"
	"github.com/mptcp-pmd/mptcp-pmd/service"
	"github.com/mptcp-pmd/mptcp-pmd/service/config"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// processStarted is about when the process started (package variables are
// set before main runs): the daemon logs its start-up time from it.
var processStarted = time.Now()

const defaultConfigPath = "/etc/mptcp-pmd/mptcp-pmd.toml"

func main() {
	oneProcessor()
	smallHeap()
	if err := run(os.Args[1:], os.Stderr); err != nil {
		notifyFailure(err)
		fmt.Fprintf(os.Stderr, "mptcp-pmd: %v\n", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// oneProcessor runs the daemon's goroutines on one processor (GOMAXPROCS=1)
// unless the environment sets GOMAXPROCS. The daemon's work is a chain of
// short hand-offs (event reader, service loop, signal sender); on more
// processors each hand-off wakes another thread and idle ones spin looking
// for work. Measured with make bench-lab (endpoints policy, 400
// connections, one run): 207 -> 158 µs of CPU per kernel event, and no
// slower reaction. The calls whose work grows with the number of
// connections get a second processor while they run (heavy).
func oneProcessor() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
		heavy.on = true
	}
}

// smallHeap collects garbage when the heap has grown by half (GOGC=50)
// unless the environment sets GOGC. The daemon's live heap is small (about
// 1 MiB when idle) and the Go runtime's least heap goal, 4 MiB at GOGC=100,
// let it allocate into fresh pages for thousands of events between
// collections, each page faulted in and zeroed by the kernel; in a virtual
// machine such a fault costs tens of µs, more than a collection of the
// whole heap. Measured with make bench-lab (endpoints policy, two daemons
// interleaved in one run, 400 connections): 64.1 -> 55.1 and 68.7 -> 56.7
// µs of CPU per kernel event.
func smallHeap() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
}

// options are the command line's.
type options struct {
	configPath string
	configSet  bool // --config was given: a missing file is an error
	logLevel   string
	policy     string
	importConf string // --import-mptcpd-conf: print this mptcpd.conf as TOML and exit
	runtimeDir string // --runtime-dir: where the record of the daemon's endpoints is kept
	// counterInterval (--counter-interval) is how often the trouble
	// counters are read for CounterIncreased.
	counterInterval time.Duration
}

// defaultRuntimeDir is where the daemon keeps what must outlive a restart
// of the process but not a reboot: systemd's RuntimeDirectory= when the
// unit sets it, else /run/mptcp-pmd.
func defaultRuntimeDir() string {
	if d := os.Getenv("RUNTIME_DIRECTORY"); d != "" && !strings.Contains(d, ":") {
		return d
	}
	return "/run/mptcp-pmd"
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fl := flag.NewFlagSet("mptcp-pmd", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.StringVar(&o.configPath, "config", defaultConfigPath, "configuration `file` (TOML)")
	fl.StringVar(&o.logLevel, "log-level", "", "log `level`: debug, info, warn, error (overrides the file)")
	fl.StringVar(&o.policy, "policy", "", "built-in `policy`: endpoints, subflow-per-interface, fullmesh, handover, none (overrides the file)")
	fl.DurationVar(&o.counterInterval, "counter-interval", counterInterval, "how often the kernel's MPTCP trouble counters are read for CounterIncreased (`duration`)")
	showVersion := fl.Bool("version", false, "print the version and exit")
	fl.StringVar(&o.importConf, "import-mptcpd-conf", "", "print the TOML equivalent of mptcpd's configuration `file` and exit")
	fl.StringVar(&o.runtimeDir, "runtime-dir", defaultRuntimeDir(), "`directory` of the record of the endpoints the daemon made, kept across restarts")
	fl.Usage = func() {
		fmt.Fprintf(stderr, "Usage: mptcp-pmd [options]\n\nThe Multipath TCP path-manager daemon (D-Bus name org.mptcp.PathManager1).\n\nOptions:\n")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		return o, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fl.NArg() > 0 {
		return o, fmt.Errorf("%w: unexpected argument %q", errUsage, fl.Arg(0))
	}
	if o.counterInterval <= 0 {
		return o, fmt.Errorf("%w: --counter-interval must be positive", errUsage)
	}
	if *showVersion {
		fmt.Println("mptcp-pmd", version)
		os.Exit(0)
	}
	fl.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			o.configSet = true
		}
	})
	return o, nil
}

// loadConfig reads the configuration file and applies the command line's
// overrides. A missing default file means the defaults.
func loadConfig(o options) (service.Config, error) {
	cfg, err := config.Load(o.configPath)
	if errors.Is(err, fs.ErrNotExist) && !o.configSet {
		cfg, err = service.DefaultConfig(), nil
	}
	if err != nil {
		return cfg, err
	}
	if o.policy != "" {
		if _, err := policy.New(o.policy); err != nil {
			return cfg, fmt.Errorf("--policy: %w", err)
		}
		cfg.Policy = o.policy
	}
	if o.logLevel != "" {
		if err := cfg.LogLevel.UnmarshalText([]byte(o.logLevel)); err != nil {
			return cfg, fmt.Errorf("--log-level: %w", err)
		}
	}
	return cfg, nil
}

func run(args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.importConf != "" {
		return importMptcpdConf(o.importConf, os.Stdout, stderr)
	}
	cfg, err := loadConfig(o)
	if err != nil {
		return err
	}
	d := &pmd{started: processStarted, opts: o, cfg: cfg, level: new(slog.LevelVar)}
	d.level.Set(cfg.LogLevel) // SIGHUP may change it
	d.log = newLogger(stderr, d.level)
	d.sd = newNotifier(d.log)
	d.sd.send("STATUS=Starting")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1) // reload the configuration
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	defer d.close()
	if err := d.open(ctx); err != nil {
		return err
	}
	return d.serve(ctx, stop, hup)
}

// pmd is one run of the daemon: its settings and what it opened.
type pmd struct {
	started time.Time
	opts    options
	cfg     service.Config
	level   *slog.LevelVar
	log     *slog.Logger
	sd      *notifier

	client  *pmnl.Client
	events  *pmnl.EventListener
	diag    *diag.Client
	stats   *diag.Client          // for the statistics methods, off the service's loop
	cgroups cgroupNames           // cgroup ids to paths, for the statistics and the rules
	pmType  *pm.PathManagerReader // net.mptcp.path_manager, kept open: read at every CREATED
	mon     *netmon.Monitor
	conn    *dbus.Conn
	nm      *nmmon.Watcher // nil when NetworkManager is ignored
	probing bool           // the prober runs (probeSubflows)
	svc     *service.Service
	auth    *dbusapi.BusAuthorizer
	srv     *dbusapi.Server
}

// open checks that the kernel has MPTCP, opens the path manager's command
// and event sockets, starts the network monitor, connects to the system
// bus and builds the service and its D-Bus server. What it opened stays
// open for close, also when it fails.
func (d *pmd) open(ctx context.Context) error {
	if on, err := pm.MPTCPEnabled(); err != nil {
		return fmt.Errorf("this kernel has no MPTCP (%v)", err)
	} else if !on {
		return errors.New("MPTCP is disabled in this network namespace: set net.mptcp.enabled=1")
	}
	var err error
	if d.client, err = pmnl.Dial(nil); err != nil {
		return err
	}
	d.events, err = pmnl.ListenEvents(nil)
	if errors.Is(err, pm.ErrPermission) {
		return fmt.Errorf("%w: the daemon needs CAP_NET_ADMIN to follow MPTCP events", err)
	}
	if err != nil {
		return err
	}
	if d.diag, err = diag.Dial(nil); err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	if d.pmType, err = pm.OpenPathManagerReader(); err != nil {
		return err
	}
	if d.mon, err = netmon.Start(ctx, netmon.Options{}); err != nil {
		return fmt.Errorf("network monitor: %w", err)
	}
	if d.conn, err = dbusapi.ConnectSystemBus(); err != nil {
		return fmt.Errorf("system bus: %w", err)
	}
	var pub publisher
	deps := service.Deps{
		Kernel:      d.client,
		Lister:      diagLister{d.diag},
		Publisher:   &pub,
		Logger:      d.log,
		PathManager: d.pmType.Read,
		Version:     version,
		Owner:       ownerOf(d.diag, &d.cgroups),
	}
	deps.NetworkManager = d.watchNM(ctx)
	if rec := d.openRecord(); rec != nil {
		deps.Record = rec
		deps.Preferences = service.FilePreferences{Path: filepath.Join(d.opts.runtimeDir, preferencesFile)}
	}
	d.svc = service.New(d.cfg, deps)
	d.auth = dbusapi.NewAuthorizer(d.conn, dbusapi.AuthOptions{Groups: d.cfg.AuthGroups, Logger: d.log})
	if d.stats, err = diag.Dial(nil); err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	if d.srv, err = dbusapi.New(d.conn, d.svc, dbusapi.Options{Authorizer: d.auth, Logger: d.log,
		Stats: &statsSource{dc: d.stats, cgroups: &d.cgroups, rules: d.svc}, Counters: pm.Counters,
		Heavy: heavy.run}); err != nil {
		return err
	}
	pub.Publisher = d.srv
	return nil
}

// busCloseWait bounds how long the daemon waits for its bus connection to
// close when it stops.
const busCloseWait = 2 * time.Second

// stallLimit is how long the bus may not take a message from the daemon
// before the daemon gives up its connection (and exits, for the service
// manager to restart it): meanwhile no method reply can reach a client
// either.
const stallLimit = 10 * time.Second

// busHealth reports an unhealthy bus connection, for the watchdog: closed,
// or not taking the daemon's messages.
func (d *pmd) busHealth() error {
	if !d.conn.Connected() {
		return errors.New("the bus connection is closed")
	}
	if st := d.srv.Stalled(); st > time.Second {
		return fmt.Errorf("the bus has not taken a message for %v", st.Round(time.Millisecond))
	}
	return nil
}

// recordFile is the name of the record of the daemon's endpoints in the
// runtime directory.
const recordFile = "endpoints.json"

// preferencesFile is the name of the file of the interface preferences set
// at run time, in the runtime directory.
const preferencesFile = "preferences.json"

// openRecord returns the record of the daemon's endpoints in the runtime
// directory, made if missing, or nil (with a warning) when there can be
// none: then every endpoint found at start counts as external.
func (d *pmd) openRecord() *service.FileRecord {
	boot, err := service.CurrentBoot()
	if err == nil {
		err = os.MkdirAll(d.opts.runtimeDir, 0o755)
	}
	var ns string
	if err == nil {
		ns, err = service.CurrentNetNS()
	}
	if err != nil {
		d.log.Warn("no record of the daemon's endpoints: after a restart they will count as external", "err", err)
		return nil
	}
	return &service.FileRecord{Path: filepath.Join(d.opts.runtimeDir, recordFile), Boot: boot, NetNS: ns}
}

// close closes what open opened, in reverse order. It does not wait more
// than busCloseWait for the bus connection: a bus that stopped reading the
// daemon can hold a write, and the close behind it, for ever.
func (d *pmd) close() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if d.srv != nil {
			d.srv.Close()
		}
		if d.conn != nil {
			d.conn.Close()
		}
	}()
	select {
	case <-done:
	case <-time.After(busCloseWait):
		d.log.Warn("the bus connection did not close in time: exiting without it", "waited", busCloseWait)
	}
	if d.diag != nil {
		d.diag.Close()
	}
	if d.stats != nil {
		d.stats.Close()
	}
	if d.pmType != nil {
		d.pmType.Close()
	}
	if d.events != nil {
		d.events.Close()
	}
	if d.client != nil {
		d.client.Close()
	}
}

// serve runs the service loop, owns the bus name, tells systemd, and
// reloads on SIGHUP until the loop ends (ctx ended, or the loop failed).
func (d *pmd) serve(ctx context.Context, stop func(), hup <-chan os.Signal) error {
	kernelEvents := make(chan pm.Event, 1024)
	go readEvents(d.events, kernelEvents, d.svc, d.log)
	netEvents := make(chan service.NetEvent, 256)
	go adaptNet(d.mon.Updates(), netEvents)

	runErr := make(chan error, 1)
	go func() { runErr <- d.svc.Run(ctx, kernelEvents, netEvents) }()
	if d.nm != nil {
		go followNM(ctx, d.nm, d.svc, d.log)
	}
	d.startProber(ctx)
	// The name appears once the start is complete: the host's addresses
	// are known, the live connections adopted and the policy has acted.
	select {
	case <-d.svc.Ready():
	case err := <-runErr:
		return err
	case <-ctx.Done():
		return <-runErr
	}
	counters := counterBaseline(d.log)
	if err := d.srv.RequestName(ctx); err != nil {
		stop()
		runFailed := <-runErr
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return runFailed // asked to stop while it asked for the name: a clean stop
		}
		return err
	}
	// The name is owned and the loop answers (it has read the kernel's
	// state): tell systemd, and keep telling it while the loop answers.
	if status, err := statusOf(ctx, d.svc); err == nil {
		d.sd.ready(status)
		if d.sd.enabled {
			go d.sd.supervise(ctx, d.svc, d.busHealth, watchdogInterval(d.log), status)
		}
	}
	go trimMemory(ctx, trimInterval, trimThreshold, d.log)
	go watchCounters(ctx, d.srv, d.log, d.opts.counterInterval, counterQuiet, counters)
	d.log.Info("mptcp-pmd running", "version", version, "policy", d.cfg.Policy, "bus_name", dbusapi.BusName,
		"startup", time.Since(d.started).Round(time.Microsecond))
	stall := time.NewTicker(time.Second)
	defer stall.Stop()
	var err error
	for done := false; !done; {
		select {
		case err = <-runErr:
			done = true
		case <-hup:
			d.reload(ctx)
		case <-d.conn.Context().Done():
			// The bus went away (dbus-daemon stopped or restarted): the
			// name and every client are gone with it. Exit at once and
			// say so; Restart=on-failure brings the daemon back, and it
			// finds its state again.
			d.svc.ExitForRestart()
			stop()
			<-runErr
			err = errors.New("lost the connection to the system bus")
			done = true
		case <-stall.C:
			if st := d.srv.Stalled(); st > stallLimit {
				d.svc.ExitForRestart()
				stop()
				<-runErr
				err = fmt.Errorf("the system bus has not taken a message from the daemon for %v "+
					"(a client that does not read its signals holds them, and the bus stops reading the daemon): "+
					"exiting, to come back with a fresh connection", st.Round(time.Second))
				done = true
			}
		}
	}
	d.sd.stopping()
	d.log.Info("mptcp-pmd stopping")
	return err
}

// reload re-reads the configuration file, with the command line's
// overrides, and applies it (SIGHUP): the service's part and the groups
// allowed to make changes. An invalid configuration is refused,
// with the reason (FILE:LINE for the file's mistakes), and the old one
// stays.
func (d *pmd) reload(ctx context.Context) {
	d.sd.reloading()
	defer func() {
		if status, err := statusOf(ctx, d.svc); err == nil {
			d.sd.ready(status)
		}
	}()
	cfg, err := loadConfig(d.opts)
	if err == nil {
		err = d.svc.Reload(ctx, cfg)
	}
	if err != nil {
		d.log.Error("configuration reload refused: the old configuration stays", "config", d.opts.configPath, "err", err)
		return
	}
	d.cfg = cfg
	d.startProber(ctx)
	if d.nm == nil && cfg.NetworkManager != service.NetworkManagerIgnore {
		// Started with network_manager = "ignore": follow it from now on.
		if st := d.watchNM(ctx); d.nm != nil {
			if err := d.svc.SetNetworkManager(ctx, st); err != nil {
				d.log.Warn("NetworkManager's state not applied", "err", err)
			}
			go followNM(ctx, d.nm, d.svc, d.log)
		}
	}
	d.auth.SetGroups(cfg.AuthGroups)
	d.level.Set(cfg.LogLevel) // the service logged the reload
}

// publisher lets the service be built before the D-Bus server it publishes
// to; Publisher is set before the service runs.
type publisher struct{ service.Publisher }

// readEvents hands the kernel's events to the service, in order, until the
// listener is closed. Lost events (a full socket) make the service resync.
// Follow lets the service act on the events of a wake-up before the socket
// is read again.
func readEvents(l *pmnl.EventListener, out chan<- pm.Event, svc *service.Service, log *slog.Logger) {
	defer close(out)
	err := l.Follow(func(evs []pm.Event, err error) bool {
		for _, ev := range evs {
			out <- ev
		}
		switch {
		case errors.Is(err, pmnl.ErrOverflow):
			log.Warn("kernel events were lost (event socket overflow); the queued ones are dropped too", "err", err)
			svc.Overflow()
		case err != nil:
			log.Warn("malformed kernel event skipped", "err", err)
		}
		return true
	})
	if !errors.Is(err, net.ErrClosed) {
		log.Error("reading kernel events failed", "err", err)
	}
}

// linkName returns an interface name as the daemon shows it: Linux allows
// any bytes but '/', ':', NUL and white space in a name, and D-Bus carries
// only UTF-8 (a message with other bytes is refused, and the bus drops
// its sender), so bytes that are not UTF-8 become U+FFFD. Endpoints and
// commands use the interface's index, never its name.
func linkName(name string) string { return strings.ToValidUTF8(name, "\uFFFD") }

// adaptNet turns the network monitor's updates into the service's events.
// Link names become valid UTF-8 (linkName).
func adaptNet(in <-chan netmon.Update, out chan<- service.NetEvent) {
	defer close(out)
	for u := range in {
		ev := service.NetEvent{Link: service.Link{
			Index: u.Link.Index, Name: linkName(u.Link.Name), Up: u.Link.Up, Carrier: u.Link.Carrier, Loopback: u.Link.Loopback,
		}}
		switch u.Kind {
		case netmon.LinkChanged:
			ev.Kind = service.NetLinkChanged
		case netmon.LinkRemoved:
			ev.Kind = service.NetLinkRemoved
		case netmon.AddressAdded, netmon.AddressChanged, netmon.AddressRemoved:
			ev.Kind = service.NetAddressAdded
			if u.Kind == netmon.AddressRemoved {
				ev.Kind = service.NetAddressRemoved
			}
			ev.Address = service.LinkAddress{
				Index:      u.Address.Index,
				Prefix:     u.Address.Prefix,
				Tentative:  u.Address.Flags&netmon.Tentative != 0,
				Deprecated: u.Address.Flags&netmon.Deprecated != 0,
				DADFailed:  u.Address.Flags&netmon.DADFailed != 0,
				LinkLocal:  u.Address.LinkLocal(),
			}
		case netmon.RouteAdded, netmon.RouteRemoved:
			ev.Kind = service.NetRouteAdded
			if u.Kind == netmon.RouteRemoved {
				ev.Kind = service.NetRouteRemoved
			}
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0) // netmon reports default routes only
			if u.Route.Family == netmon.FamilyIPv6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			ev.Route = service.Route{Index: u.Route.Index, Dst: dst}
		case netmon.Synced:
			ev.Kind = service.NetSynced
		default:
			continue
		}
		out <- ev
	}
}
