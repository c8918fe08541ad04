#!/usr/bin/env bash
# The README's five-minute tour, run for real: mptcp-pmd with the
# subflow-per-interface policy in a three-path lab, and the mptcpctl
# commands a user tries first. Prints each command and its output, as the
# README shows them. Needs root, MPTCP and `make build`.
set -euo pipefail
source "$(dirname "$0")/lab.sh"
lab_init tour
lab_up 3 userspace kernel
bus_up
daemon_up "$cli" --policy subflow-per-interface
server_up 10.55.0.2 8080

run() { echo "\$ $*"; "$@" || true; echo; }
ctl() { run mptcpctl "$@"; }
export PATH=$bin:$PATH

ctl status
ctl addresses
"$bin/mptcpctl" monitor >"$work/monitor.log" 2>&1 &
pids+=($!)
sleep 0.3
clients 2 3 10.55.0.2 8080
for _ in $(seq 50); do # until the policy's subflows are up
	[[ $(nsx "$cli" ss -tnH state established dst 10.55.0.2 | wc -l) -ge 6 ]] && break
	sleep 0.1
done
ctl connections
ctl connection show 1
ctl --json connection show 2
ctl subflow backup 1 10.55.2.1 10.55.0.2:8080 on
ctl announce 2 10.55.2.1
sleep 0.3 # the server joins the announced address
ctl connections
ctl subflow add 1 10.55.9.9 10.55.0.2:8080
ctl connection show 7
sleep 3.5 # the connections close
echo "\$ mptcpctl monitor"
cat "$work/monitor.log"
