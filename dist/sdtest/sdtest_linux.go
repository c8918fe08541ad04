// Package sdtest boots a real systemd as PID 1 in a throw-away
// systemd-nspawn container, with the project installed by make install, so
// that tests can run the installed unit as a distribution would: under the
// service manager, the system bus, journald and polkitd of that container.
//
// The container's root is a small directory under /var/tmp whose /usr is an
// overlay: the host's /usr read-only below and make install's output above,
// so nothing is installed on the host. /etc is private and minimal (root
// only; systemd-sysusers makes the system users at boot from
// /usr/lib/sysusers.d, mptcp-pm among them); /run and /tmp are nspawn's
// tmpfs. --private-network gives the container a network namespace of its
// own with only loopback; tests join it to namespaces of their own with veth
// pairs (pmtest.AttachNamespace).
//
// nspawn runs with --keep-unit --register=no (there is no host service
// manager to ask for a scope), inside cgroups this package makes and
// removes, and inside a mount namespace of its own with a tmpfs on /run, so
// that nothing it writes there outlives it. Boot skips the test (fails it
// when CI is set) where this cannot work: not root, no systemd-nspawn, no
// systemd, no cgroup file system.
package sdtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-pmd/mptcp-pmd/pm/pmtest"
)

// Options shape a container.
type Options struct {
	// Project is the checkout to install with make install (PREFIX=/usr).
	Project string
	// Files are written into the container's root before it boots, by
	// absolute path inside the container (such as
	// "/etc/mptcp-pmd/mptcp-pmd.toml"), with mode 0644.
	Files map[string]string
	// Env is set in PID 1's environment (nspawn --setenv), such as
	// "SYSTEMD_LOG_SECCOMP=1".
	Env []string
}

// Container is a booted container. Its methods may be called from one
// goroutine at a time.
type Container struct {
	// Dir is the lab directory on the host; Root is the container's root
	// directory in it (its /usr is the overlay, seen only inside).
	Dir, Root string
	// BootTime is how long the container took from nspawn's start to a
	// running system.
	BootTime time.Duration

	name    string
	cgroups []string
	nspawn  *exec.Cmd
	exited  chan struct{} // closed when nspawn has exited
	leader  int           // PID 1 of the container, as the host sees it
}

// path is where the container's systemd and nspawn are expected.
const (
	nspawnProgram = "systemd-nspawn"
	systemdBinary = "/usr/lib/systemd/systemd"
	pathInside    = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Require skips the test (fails it in CI) unless a container can boot here.
func Require(tb testing.TB) {
	tb.Helper()
	pmtest.RequireRoot(tb)
	pmtest.RequireProgram(tb, nspawnProgram)
	pmtest.RequireProgram(tb, "nsenter")
	pmtest.RequireProgram(tb, "unshare")
	pmtest.RequireProgram(tb, "make")
	if _, err := os.Stat(systemdBinary); err != nil {
		pmtest.Unavailable(tb, "no systemd to boot (%v); install the systemd package", err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs("/sys/fs/cgroup", &st); err != nil {
		pmtest.Unavailable(tb, "no cgroup file system at /sys/fs/cgroup: %v", err)
	}
}

// Boot installs the project into a fresh lab, boots the container and waits
// until its system is running. Everything it made is removed when the test
// ends, pass or fail.
func Boot(tb testing.TB, opts Options) *Container {
	tb.Helper()
	Require(tb)
	reapStale(tb)
	dir, err := os.MkdirTemp(labParent, labPrefix)
	if err != nil {
		tb.Fatalf("sdtest: %v", err)
	}
	c := &Container{Dir: dir, Root: filepath.Join(dir, "root"), name: filepath.Base(dir), exited: make(chan struct{})}
	tb.Cleanup(func() { c.down(tb, tb.Errorf) })
	if err := c.makeRoot(opts.Files); err != nil {
		tb.Fatalf("sdtest: %v", err)
	}
	if err := c.install(opts.Project); err != nil {
		tb.Fatalf("sdtest: %v", err)
	}
	start := time.Now()
	if err := c.start(opts.Env); err != nil {
		tb.Fatalf("sdtest: %v", err)
	}
	if err := c.waitRunning(2 * time.Minute); err != nil {
		tb.Fatalf("sdtest: %v\nconsole:\n%s", err, c.console())
	}
	c.BootTime = time.Since(start)
	return c
}

// makeRoot writes the container's skeleton: a merged /usr, the directories
// systemd wants, and just enough /etc.
func (c *Container) makeRoot(files map[string]string) error {
	for _, d := range []string{"usr", "etc/systemd/system", "var/log", "var/lib", "var/tmp", "tmp", "run", "proc", "sys", "dev", "root", "home"} {
		if err := os.MkdirAll(filepath.Join(c.Root, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"bin", "lib", "lib64", "sbin"} {
		if err := os.Symlink("usr/"+d, filepath.Join(c.Root, d)); err != nil {
			return err
		}
	}
	for d, m := range map[string]os.FileMode{"tmp": 0o1777, "var/tmp": 0o1777, "root": 0o700} {
		if err := os.Chmod(filepath.Join(c.Root, d), m); err != nil {
			return err
		}
	}
	osRelease, err := os.ReadFile("/usr/lib/os-release") // nspawn checks for it
	if err != nil {
		return fmt.Errorf("os-release: %w", err)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	etc := map[string]string{
		"/etc/os-release": string(osRelease),
		"/etc/machine-id": hex.EncodeToString(id[:]) + "\n", // initialised: no first-boot presets
		"/etc/hostname":   c.name + "\n",
		"/etc/passwd":     "root:x:0:0:root:/root:/bin/bash\n",
		"/etc/group":      "root:x:0:\n",
		"/etc/shadow":     "root:*:19000:0:99999:7:::\n",
		"/etc/gshadow":    "root:*::\n",
		"/etc/hosts":      "127.0.0.1 localhost " + c.name + "\n::1 localhost\n",
		"/etc/nsswitch.conf": "passwd: files systemd\ngroup: files systemd\n" +
			"shadow: files\nhosts: files\n",
	}
	for p, s := range etc {
		if err := c.WriteFile(p, s); err != nil {
			return err
		}
	}
	for p, s := range files {
		if err := c.WriteFile(p, s); err != nil {
			return err
		}
	}
	for _, f := range []string{"shadow", "gshadow"} {
		if err := os.Chmod(filepath.Join(c.Root, "etc", f), 0o640); err != nil {
			return err
		}
	}
	// /etc/alternatives resolves awk, pager and the like in the host's /usr.
	if err := exec.Command("cp", "-a", "/etc/alternatives", filepath.Join(c.Root, "etc")).Run(); err != nil {
		return fmt.Errorf("copy /etc/alternatives: %w", err)
	}
	links := map[string]string{
		"etc/systemd/system/default.target":        "/usr/lib/systemd/system/multi-user.target",
		"etc/systemd/system/getty.target":          "/dev/null", // nothing to log in on
		"etc/systemd/system/console-getty.service": "/dev/null",
	}
	for l, to := range links {
		if err := os.Symlink(to, filepath.Join(c.Root, l)); err != nil {
			return err
		}
	}
	return nil
}

// WriteFile writes a file into the container's root by its path inside,
// making its directories; it works before and after the boot (for paths
// outside /usr, /run and /tmp, which the container mounts over).
func (c *Container) WriteFile(path, content string) error {
	p := filepath.Join(c.Root, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("sdtest: %w", err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return fmt.Errorf("sdtest: %w", err)
	}
	return nil
}

// install runs make install with PREFIX=/usr into the overlay's upper layer.
func (c *Container) install(project string) error {
	stage := filepath.Join(c.Dir, "stage")
	cmd := exec.Command("make", "-s", "-C", project, "install", "DESTDIR="+stage, "BIN="+filepath.Join(c.Dir, "build"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make install: %w\n%s", err, out)
	}
	return nil
}

// cgroupDirs are the cgroups made for nspawn in each hierarchy it needs: the
// top one on a pure cgroup2 host; the name=systemd and unified ones on a
// hybrid host.
func (c *Container) cgroupDirs() []string {
	var st syscall.Statfs_t
	const cgroup2Magic = 0x63677270
	if syscall.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == cgroup2Magic {
		return []string{"/sys/fs/cgroup/" + c.name}
	}
	var dirs []string
	for _, h := range []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(h); err == nil {
			dirs = append(dirs, filepath.Join(h, c.name))
		}
	}
	return dirs
}

// startScript moves itself into the cgroups, then starts nspawn in a mount
// namespace of its own with a tmpfs on /run (nspawn keeps its locks there).
const startScript = `
for d in $SDTEST_CGROUPS; do echo $$ >"$d/cgroup.procs" || exit 1; done
exec unshare --mount --propagation private sh -c '
	mount -t tmpfs -o mode=755 sdtest-run /run || exit 1
	exec "$@"' sdtest "$@"`

func (c *Container) start(env []string) error {
	c.cgroups = c.cgroupDirs()
	if len(c.cgroups) == 0 {
		return errors.New("no cgroup hierarchy for nspawn")
	}
	for _, d := range c.cgroups {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	args := []string{"-c", startScript, "sdtest",
		nspawnProgram, "--quiet", "--keep-unit", "--register=no",
		"--machine=" + c.name, "--directory=" + c.Root,
		"--overlay=/usr:" + filepath.Join(c.Dir, "stage/usr") + ":/usr",
		"--private-network", "--boot", "--console=pipe"}
	for _, e := range env {
		args = append(args, "--setenv="+e)
	}
	console, err := os.Create(filepath.Join(c.Dir, "console.log"))
	if err != nil {
		return err
	}
	defer console.Close()
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(os.Environ(), "SDTEST_CGROUPS="+strings.Join(c.cgroups, " "))
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nspawn: %w", err)
	}
	c.nspawn = cmd
	go func() { cmd.Wait(); close(c.exited) }()
	owner := fmt.Sprintf("%d %d\n", os.Getpid(), cmd.Process.Pid)
	if err := os.WriteFile(filepath.Join(c.Dir, ownerFile), []byte(owner), 0o644); err != nil {
		return err
	}
	return nil
}

// Where labs are made, and the file in each that names the test process
// and nspawn.
const (
	labParent = "/var/tmp"
	labPrefix = "sdtest-"
	ownerFile = "owner"
)

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// reapStale takes down the labs of test processes that died without
// cleaning up (a test binary killed by Ctrl-C or a timeout): their
// container, if it still runs, their cgroups and their directory.
func reapStale(tb testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join(labParent, labPrefix+"*"))
	for _, dir := range dirs {
		var owner, nspawn int
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err == nil {
			fmt.Sscan(string(b), &owner, &nspawn)
		}
		if owner != 0 && syscall.Kill(owner, 0) == nil {
			continue // its test still runs
		}
		if err != nil {
			if st, err := os.Stat(dir); err != nil || time.Since(st.ModTime()) < time.Hour {
				continue // being made, or too new to tell
			}
		}
		tb.Logf("sdtest: removing the lab %s of a test process that is gone", dir)
		c := &Container{Dir: dir, name: filepath.Base(dir), exited: make(chan struct{})}
		c.cgroups = c.cgroupDirs()
		if p, err := os.FindProcess(nspawn); err == nil && nspawn != 0 && alive(nspawn) {
			c.nspawn = &exec.Cmd{Process: p}
			c.leader, _ = c.findLeader()
			go func() {
				for alive(nspawn) {
					time.Sleep(100 * time.Millisecond)
				}
				close(c.exited)
			}()
		} else {
			close(c.exited)
		}
		c.down(tb, tb.Logf)
	}
}

// waitRunning waits for the container's PID 1, its manager, and a system
// that has finished booting.
func (c *Container) waitRunning(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-c.exited:
			return errors.New("nspawn exited")
		default:
		}
		if l, ok := c.findLeader(); ok {
			c.leader = l
			if _, err := c.Exec("test -S /run/systemd/private"); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			return errors.New("no service manager in the container")
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, _ := c.Exec(fmt.Sprintf("timeout %d systemctl is-system-running --wait", int(time.Until(deadline).Seconds())+1))
	if st := strings.TrimSpace(out); st != "running" {
		failed, _ := c.Exec("systemctl --failed --no-legend; journalctl -b -p warning --no-pager | tail -30")
		return fmt.Errorf("the system is %q, not running:\n%s", st, failed)
	}
	return nil
}

// findLeader finds the container's PID 1: a descendant of nspawn that is
// PID 1 of its own PID namespace.
func (c *Container) findLeader() (int, bool) {
	if c.nspawn == nil || c.nspawn.Process == nil {
		return 0, false
	}
	root := c.nspawn.Process.Pid
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		if f := statusField(st, "NSpid:"); len(f) >= 2 && f[len(f)-1] == "1" && descends(pid, root) {
			return pid, true
		}
	}
	return 0, false
}

// statusField returns the words of a /proc/PID/status line after key.
func statusField(status []byte, key string) []string {
	for _, l := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(l, key); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}

// descends reports whether pid is root or one of its descendants.
func descends(pid, root int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		if pid == root {
			return true
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return false
		}
		f := statusField(st, "PPid:")
		if len(f) != 1 {
			return false
		}
		pid, _ = strconv.Atoi(f[0])
	}
	return pid == root
}

// Leader returns the host's PID of the container's PID 1, for
// pmtest.AttachNamespace and /proc.
func (c *Container) Leader() int { return c.leader }

// Exec runs a shell command line inside the container (in all its
// namespaces, as root, with a clean environment) and returns its combined
// output; err is not nil when it exits with another status than 0.
func (c *Container) Exec(cmdline string) (string, error) {
	return c.ExecContext(context.Background(), cmdline)
}

// ExecContext is Exec with a context that kills the command.
func (c *Container) ExecContext(ctx context.Context, cmdline string) (string, error) {
	if c.leader == 0 {
		return "", errors.New("sdtest: the container is not running")
	}
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(c.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
		"env", "-i", "PATH="+pathInside, "HOME=/root", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
		"/bin/sh", "-c", cmdline)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("sdtest: %q in the container: %w", cmdline, err)
	}
	return string(out), nil
}

// Run is Exec that fails the test on an error.
func (c *Container) Run(tb testing.TB, cmdline string) string {
	tb.Helper()
	out, err := c.Exec(cmdline)
	if err != nil {
		tb.Fatalf("%v\n%s", err, out)
	}
	return out
}

func (c *Container) console() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "console.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// down powers the container off (SIGRTMIN+4 to its systemd), kills what is
// left after 30 s, removes the cgroups, and deletes the lab directory.
// Whatever it cannot undo it reports with report.
func (c *Container) down(tb testing.TB, report func(format string, args ...any)) {
	const sigRTMin = 34
	if c.nspawn != nil {
		if c.leader != 0 {
			syscall.Kill(c.leader, syscall.Signal(sigRTMin+4))
		}
		select {
		case <-c.exited:
		case <-time.After(30 * time.Second):
			tb.Logf("sdtest: no clean poweroff in 30 s: killing PID 1 (%d) and nspawn", c.leader)
			if c.leader != 0 {
				syscall.Kill(c.leader, syscall.SIGKILL) // the PID namespace goes with it
			}
			c.nspawn.Process.Kill()
			<-c.exited
		}
	}
	for _, d := range c.cgroups {
		var procs []byte
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.Name() == "cgroup.procs" {
				b, _ := os.ReadFile(p)
				procs = append(procs, b...)
			}
			return nil
		})
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil {
				report("sdtest: process %d left in %s: killed", pid, d)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	for _, d := range c.cgroups {
		removeCgroup(d, report)
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil && bytes.Contains(mounts, []byte(c.Dir)) {
		report("sdtest: mounts left under %s", c.Dir)
		exec.Command("sh", "-c", `findmnt -rn -o TARGET | grep "^$1" | sort -r | xargs -r -n1 umount -l`, "sh", c.Dir).Run()
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		report("sdtest: %v", err)
	}
}

// removeCgroup removes a cgroup and its children, deepest first.
func removeCgroup(dir string, report func(format string, args ...any)) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			report("sdtest: remove cgroup: %v", err)
		}
	}
}
