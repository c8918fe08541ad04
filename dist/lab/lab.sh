# shellcheck shell=bash
# Shared by demo.sh and tour.sh (sourced, not run): a throw-away lab of two
# network namespaces joined by veth pairs, a private D-Bus bus loading the
# project's bus policy, and mptcp-pmd. lab_cleanup removes everything, and
# is installed as the EXIT trap by lab_init.
#
#   <id>-cli  ci 10.55.i.1/24  <--->  si 10.55.i.2/24  <id>-srv   (path i)
#
# The client has source-address policy routing, so a subflow from 10.55.i.1
# leaves through path i whatever its destination.

lab_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$lab_top/bin
pids=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# lab_init NAME: checks the machine, names the lab, installs the cleanup.
lab_init() {
	lab_name=$1
	[[ $(id -u) == 0 ]] || { echo "$lab_name: needs root (network namespaces)" >&2; exit 1; }
	[[ $(sysctl -n net.mptcp.enabled 2>/dev/null) == 1 ]] || { echo "$lab_name: MPTCP is not enabled in this kernel" >&2; exit 1; }
	[[ -x $bin/mptcp-pmd && -x $bin/mptcpctl ]] || { echo "$lab_name: build first (make build)" >&2; exit 1; }
	cli=$lab_name$$-cli srv=$lab_name$$-srv
	work=$(mktemp -d "/tmp/mptcp-pmd-$lab_name.XXXXXX")
	trap lab_cleanup EXIT
	trap 'exit 130' INT TERM
}

lab_cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	# Whatever still runs inside the lab goes with it.
	for ns in "$cli" "$srv"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
	done
	wait 2>/dev/null
	ip netns del "$cli" 2>/dev/null
	ip netns del "$srv" 2>/dev/null
	rm -rf "$work"
	echo; echo "$lab_name: cleaned up (namespaces $cli $srv, bus, daemon)"
}

# lab_up PATHS CLIENT_PM SERVER_PM
lab_up() {
	local paths=$1 cpm=$2 spm=$3 ns i
	for ns in "$cli" "$srv"; do
		ip netns add "$ns"
		nsx "$ns" ip link set lo up
		nsx "$ns" sysctl -qw net.mptcp.enabled=1 \
			net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
		nsx "$ns" ip mptcp limits set subflows 8 add_addr_accepted 8
	done
	for ((i = 0; i < paths; i++)); do
		ip -n "$cli" link add "c$i" type veth peer name "s$i" netns "$srv"
		nsx "$cli" ip addr add "10.55.$i.1/24" dev "c$i"
		nsx "$srv" ip addr add "10.55.$i.2/24" dev "s$i"
		nsx "$cli" ip link set "c$i" up
		nsx "$srv" ip link set "s$i" up
		nsx "$cli" ip -6 addr flush dev "c$i" scope link # keep the listings short: IPv4 only
		nsx "$srv" ip -6 addr flush dev "s$i" scope link
		nsx "$cli" ip route add default via "10.55.$i.2" dev "c$i" table $((100 + i))
		nsx "$cli" ip rule add from "10.55.$i.1" table $((100 + i)) pref $((1000 + i))
	done
	nsx "$cli" sysctl -qw net.mptcp.path_manager="$cpm"
	nsx "$srv" sysctl -qw net.mptcp.path_manager="$spm"
	for ((i = 0; i < paths; i++)); do # wait for carrier on both ends
		for _ in $(seq 50); do
			nsx "$srv" ip -br link show "s$i" | grep -q ' UP ' &&
				nsx "$cli" ip -br link show "c$i" | grep -q ' UP ' && break
			sleep 0.1
		done
	done
}

# bus_up: a private system bus with the project's policy; exports
# DBUS_SYSTEM_BUS_ADDRESS so mptcp-pmd, mptcpctl and busctl use it.
bus_up() {
	sed -e "s|@SOCKET@|$work/bus|" -e "s|@POLICY@|$lab_top/dist/dbus-1/system.d/org.mptcp.PathManager1.conf|" \
		"$lab_top/dist/lab/bus.conf.in" >"$work/bus.conf"
	dbus-daemon --config-file="$work/bus.conf" --nofork --nopidfile --print-address=3 \
		3>"$work/address" 2>"$work/bus.log" &
	pids+=($!)
	for _ in $(seq 50); do [[ -s $work/address ]] && break; sleep 0.1; done
	export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$work/bus"
}

# daemon_up NS ARGS...: mptcp-pmd in namespace NS, logging to $work/daemon.log.
daemon_up() {
	local ns=$1; shift
	ip netns exec "$ns" "$bin/mptcp-pmd" --config /dev/null --runtime-dir "$work/run" "$@" 2>"$work/daemon.log" &
	pids+=($!)
	for _ in $(seq 100); do "$bin/mptcpctl" status >/dev/null 2>&1 && return; sleep 0.1; done
	echo "$lab_name: mptcp-pmd did not come up:" >&2
	cat "$work/daemon.log" >&2
	exit 1
}

# server_up ADDR PORT: an MPTCP sink in the server namespace.
server_up() {
	ip netns exec "$srv" "$lab_top/dist/lab/mptcp-traffic.py" server "$1" "$2" &
	pids+=($!)
	for _ in $(seq 100); do nsx "$srv" ss -MlnH | grep -q ":$2" && return; sleep 0.1; done
}

# clients N HOLD ADDR PORT: N MPTCP connections from the client namespace,
# held HOLD seconds, in the background; waits until the daemon shows them.
clients() {
	ip netns exec "$cli" "$lab_top/dist/lab/mptcp-traffic.py" client "$3" "$4" -n "$1" --hold "$2" >/dev/null &
	pids+=($!)
	for _ in $(seq 100); do
		[[ $("$bin/mptcpctl" connections | grep -c established) -ge $1 ]] && return
		sleep 0.1
	done
}
