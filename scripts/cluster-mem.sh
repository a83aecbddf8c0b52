#!/usr/bin/env bash
# cluster-mem.sh prints the memory of a running local cluster (launcher pid from
# .meridian/sim.pid or $1): proportional set size (PSS, shared pages split fairly, so Postgres'
# shared memory is not counted once per backend) summed by kind of process.
set -euo pipefail
dir=${1:-.meridian}
pid=$(cat "$dir/sim.pid")
declare -A kb
total=0
# The launcher's process tree: itself (NATS, Toxiproxy in-process) and every descendant.
pids=$(ps -e -o pid=,ppid= | awk -v root="$pid" '{p[$1]=$2} END {for (x in p) {y=x; while (y && y!=root) y=p[y]; if (y==root) print x}}')
for p in $pids; do
  [ -r /proc/$p/smaps_rollup ] || continue
  pss=$(awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup)
  comm=$(cat /proc/$p/comm)
  case $comm in postgres) k=postgres;; redis-server) k=redis;; router) k=router;; api) k=api;; sim) k="sim (nats, proxies)";; *) k=$comm;; esac
  kb[$k]=$(( ${kb[$k]:-0} + pss ))
  total=$(( total + pss ))
done
for k in "${!kb[@]}"; do printf '%-22s %6d MiB\n' "$k" $(( kb[$k] / 1024 )); done | sort
printf '%-22s %6d MiB\n' total $(( total / 1024 ))
