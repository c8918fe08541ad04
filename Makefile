# mptcp-pmd: build, test and try the MPTCP path-manager daemon.
GO      ?= go
PREFIX  ?= /usr
DESTDIR ?=
BIN     := bin
PKGS    := ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test test-short test-systemd lint bench bench-lab bench-restart bench-nm bench-stats bench-handover soak fuzz demo clean install uninstall

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# The full suite. As root with MPTCP it builds namespace labs and private
# buses; as another user those tests skip and say why (with CI set they fail).
test: lint
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# Unit tests only: what needs root, the kernel, a bus or another program
# skips (the Require functions of pm/pmtest honour -short).
test-short:
	$(GO) test -short -count=1 $(PKGS)

# The systemd lane alone: make install into a systemd-nspawn container that
# boots a real systemd, and the unit run and checked there (root,
# systemd-container; part of make test).
test-systemd:
	$(GO) test -count=1 -v -run '^TestSystemd$$' ./dist

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 $(PKGS)

# Lab scenario: how soon a new connection gets its extra subflows under the
# kernel's in-kernel path manager, mptcp-pmd's policies and a minimal Go
# userspace path manager (the floor), and Debian's mptcpd where installed
# (apt-get install mptcpd mptcpd-plugins), interleaved connection by
# connection in one run, in a shuffled order; prints a table of medians,
# p99 and ratios (times of the packets that cause the events, by the
# kernel's clock), and the daemons' CPU time per kernel event; with
# LAB_BASELINE=path/to/another/mptcp-pmd, that build's policies too, for an
# A/B comparison in one run (about 25 s per 1,000 connections; root,
# MPTCP and dbus-daemon). LAB_CONNS connections per mode (1,000: a 99th
# percentile of fewer is one of the few worst and moves much between runs). Then a burst of
# BURST_CONNS connections opened at once (subflow-per-interface): until
# every one has its subflows, and the daemon's memory per connection. Then
# bursts of 300 connections opened at once, BURST300_ROUNDS rounds
# interleaving the kernel's path manager and mptcp-pmd's
# subflow-per-interface and fullmesh policies: a table of the median and
# worst time until the last one has its subflows, and ratios to the
# kernel's. Last, 300 connections one by one from the kernel's CREATED to
# the daemon's InterfacesAdded, each after a Peer.Ping round trip: medians,
# and the ratio of event->signal to a ping.
LAB_CONNS       ?= 1000
BURST_CONNS     ?= 10000
BURST300_ROUNDS ?= 5
bench-lab: build
	LAB_CONNS=$(LAB_CONNS) BURST_CONNS=$(BURST_CONNS) BURST300_ROUNDS=$(BURST300_ROUNDS) \
		$(GO) test -run '^$$' -bench '^Benchmark(Lab|Burst|Burst300)$$' -benchtime 1x -count=1 -v ./cmd/mptcp-pmd
	$(GO) test -run '^$$' -bench '^BenchmarkEventToSignal$$' -benchtime 300x -count=1 -v ./cmd/mptcp-pmd

# Lab scenario: the daemon's start-up with 0, 1000 and 10000 live
# connections to adopt, and its repair after lost events with 10000 (a few
# minutes; root, MPTCP and dbus-daemon).
bench-restart: build
	$(GO) test -run '^$$' -bench 'BenchmarkStartup|BenchmarkResync10000' -benchtime 3x -count=1 ./cmd/mptcp-pmd

# Lab scenario: what following a real NetworkManager costs the daemon
# (start-up, memory, idle CPU), against network_manager = "ignore",
# interleaved (about a minute; root, MPTCP, dbus-daemon, NetworkManager).
bench-nm: build
	$(GO) test -run '^$$' -bench 'BenchmarkNetworkManagerCost' -benchtime 3x -count=1 ./cmd/mptcp-pmd

# Lab scenario: failover gaps. A 2 Mbit/s stream of timestamped records
# from the client over one connection whose initial subflow is on path 0;
# path 0 fails (carrier loss, or a blackhole with the links up) and comes
# back. At the receiver: the longest time without new in-order data after
# the failure and after the restore, and when the stream is back on path 0
# (sock_diag), for plain TCP, the in-kernel path manager with a backup
# endpoint, and mptcp-pmd's handover policy with a warm and a cold standby,
# interleaved trial by trial, HANDOVER_ROUNDS rounds; a table of medians,
# worst and ratios to the kernel's. Then a study without the daemon: which
# userspace path-manager commands, sent once the failure is known, give the
# shortest gap (HANDOVER_MECH_ROUNDS rounds). About 5 minutes; root, MPTCP
# and dbus-daemon.
HANDOVER_ROUNDS      ?= 3
HANDOVER_MECH_ROUNDS ?= 3
HANDOVER_STALL       ?= 60ms
bench-handover: build
	HANDOVER_ROUNDS=$(HANDOVER_ROUNDS) HANDOVER_STALL=$(HANDOVER_STALL) \
		$(GO) test -run '^$$' -bench '^BenchmarkHandover$$' -benchtime 1x -count=1 -v ./cmd/mptcp-pmd
	HANDOVER_MECH_ROUNDS=$(HANDOVER_MECH_ROUNDS) \
		$(GO) test -run '^$$' -bench '^BenchmarkHandoverMechanics$$' -benchtime 1x -count=1 -v ./cmd/mptcp-pmd
	$(GO) test -run '^$$' -bench '^BenchmarkHandoverIdle$$' -benchtime 1x -count=1 -v ./cmd/mptcp-pmd

# Lab scenario: Manager.GetStatistics with 10000 live connections, against
# a Peer.Ping round trip (a minute; root, MPTCP and dbus-daemon).
bench-stats: build
	$(GO) test -run '^$$' -bench 'BenchmarkStatistics10000' -benchtime 3x -count=1 ./cmd/mptcp-pmd
	$(GO) test -run '^$$' -bench 'BenchmarkStatisticsLoad' -benchtime 1x -count=1 -v ./cmd/mptcp-pmd

# The chaos soak: a seeded random sequence of steps (connection churn,
# addresses, carrier, routes, a controller killed, the daemon killed, the
# bus restarted, a subscriber that stops reading, a flood, reloads) against
# the built daemon, checking the daemon against the kernel after each.
# `make test` runs a short one; this runs SOAK_STEPS steps per policy with
# SOAK_SEED (a failing run prints its seed and step; the same seed replays).
SOAK_SEED  ?= 20251204
SOAK_STEPS ?= 400
soak: build
	SOAK_SEED=$(SOAK_SEED) SOAK_STEPS=$(SOAK_STEPS) $(GO) test -count=1 -timeout 3h -run '^TestSoak$$' -v ./cmd/mptcp-pmd

FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./pm/pmnl
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pm/diag

clean:
	rm -rf $(BIN)

# Where make install puts things, as a distribution package would (PREFIX
# /usr). With another PREFIX, such as /usr/local, the unit's ExecStart
# follows, but dbus-daemon and polkitd read only their /usr/share and /etc
# directories: link or copy the bus, activation and polkit files there.
# /etc is left alone: the daemon runs with its defaults until an
# administrator writes /etc/mptcp-pmd/mptcp-pmd.toml (the example is in
# DOCDIR). After installing: systemd-sysusers; systemctl daemon-reload;
# systemctl reload dbus; systemctl enable --now mptcp-pmd.
BINDIR       ?= $(PREFIX)/bin
UNITDIR      ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
DBUSDIR      ?= $(PREFIX)/share/dbus-1
POLKITDIR    ?= $(PREFIX)/share/polkit-1/actions
MANDIR       ?= $(PREFIX)/share/man
DOCDIR       ?= $(PREFIX)/share/doc/mptcp-pmd
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
IFACES       := Manager Connection Controller

install: build
	install -Dm755 $(BIN)/mptcp-pmd $(DESTDIR)$(BINDIR)/mptcp-pmd
	install -Dm755 $(BIN)/mptcpctl $(DESTDIR)$(BINDIR)/mptcpctl
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|^ExecStart=/usr/bin/mptcp-pmd|ExecStart=$(BINDIR)/mptcp-pmd|' dist/systemd/mptcp-pmd.service \
		>$(DESTDIR)$(UNITDIR)/mptcp-pmd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/mptcp-pmd.service
	install -Dm644 dist/sysusers.d/mptcp-pmd.conf $(DESTDIR)$(SYSUSERSDIR)/mptcp-pmd.conf
	install -Dm644 dist/dbus-1/system.d/org.mptcp.PathManager1.conf $(DESTDIR)$(DBUSDIR)/system.d/org.mptcp.PathManager1.conf
	install -Dm644 dist/dbus-1/system-services/org.mptcp.PathManager1.service \
		$(DESTDIR)$(DBUSDIR)/system-services/org.mptcp.PathManager1.service
	for i in $(IFACES); do \
		install -Dm644 introspection/org.mptcp.PathManager1.$$i.xml \
			$(DESTDIR)$(DBUSDIR)/interfaces/org.mptcp.PathManager1.$$i.xml || exit 1; \
	done
	install -Dm644 dist/polkit-1/actions/org.mptcp.pathmanager1.policy $(DESTDIR)$(POLKITDIR)/org.mptcp.pathmanager1.policy
	install -Dm644 dist/man/mptcpctl.1 $(DESTDIR)$(MANDIR)/man1/mptcpctl.1
	install -Dm644 dist/man/mptcp-pmd.toml.5 $(DESTDIR)$(MANDIR)/man5/mptcp-pmd.toml.5
	install -Dm644 dist/man/mptcp-pmd.8 $(DESTDIR)$(MANDIR)/man8/mptcp-pmd.8
	install -Dm644 dist/mptcp-pmd.toml $(DESTDIR)$(DOCDIR)/mptcp-pmd.toml
	install -Dm755 dist/examples/nm-dispatcher.py $(DESTDIR)$(DOCDIR)/examples/nm-dispatcher.py
	install -Dm644 dist/completion/mptcpctl.bash $(DESTDIR)$(COMPLETIONDIR)/mptcpctl

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/mptcp-pmd $(DESTDIR)$(BINDIR)/mptcpctl \
		$(DESTDIR)$(UNITDIR)/mptcp-pmd.service \
		$(DESTDIR)$(SYSUSERSDIR)/mptcp-pmd.conf \
		$(DESTDIR)$(DBUSDIR)/system.d/org.mptcp.PathManager1.conf \
		$(DESTDIR)$(DBUSDIR)/system-services/org.mptcp.PathManager1.service \
		$(foreach i,$(IFACES),$(DESTDIR)$(DBUSDIR)/interfaces/org.mptcp.PathManager1.$(i).xml) \
		$(DESTDIR)$(POLKITDIR)/org.mptcp.pathmanager1.policy \
		$(DESTDIR)$(MANDIR)/man1/mptcpctl.1 \
		$(DESTDIR)$(MANDIR)/man5/mptcp-pmd.toml.5 \
		$(DESTDIR)$(MANDIR)/man8/mptcp-pmd.8 \
		$(DESTDIR)$(DOCDIR)/mptcp-pmd.toml \
		$(DESTDIR)$(DOCDIR)/examples/nm-dispatcher.py \
		$(DESTDIR)$(COMPLETIONDIR)/mptcpctl
	-rmdir $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) 2>/dev/null

# A throw-away namespace lab, a private bus, the daemon, real MPTCP traffic.
demo: build
	bash dist/lab/demo.sh
