#!/usr/bin/env bash
# bench-pinned.sh runs bin/bench against a running local cluster with the measured region's
# router on a CPU of its own: the router on CPU 1; every other process of the cluster (API nodes,
# Postgres, Redis, NATS, the launcher, the other routers) and the load generator on CPU 0. It
# models the deployment the design assumes (routers are their own tier), which a 2-vCPU machine
# can otherwise not show: unpinned, the router's CPU is taken from the API node it is compared
# with. With -baseline-proxy / -baseline-echo, bench's bare proxy and echo children are moved to
# CPU 1 as well, so the floors are measured on the same footing as the router. Affinities are restored
# (all CPUs) on exit.
#   scripts/bench-pinned.sh [-d .meridian] [-region us-east] -- -scenario compare-router -c 16 -d 20s
set -euo pipefail
dir=.meridian
region=us-east
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  case $1 in
    -d) dir=$2; shift 2;;
    -region) region=$2; shift 2;;
    *) echo "usage: $0 [-d dir] [-region r] -- bench flags..." >&2; exit 2;;
  esac
done
[ "${1:-}" = -- ] && shift
command -v taskset >/dev/null || { echo "$0: taskset missing (apt-get install util-linux)" >&2; exit 1; }
[ "$(nproc --all)" -ge 2 ] || { echo "$0: needs at least 2 CPUs" >&2; exit 1; }
root=$(cat "$dir/sim.pid")
tree() { ps -e -o pid=,ppid= | awk -v root="$root" '{p[$1]=$2} END {for (x in p) {y=x; while (y && y!=root) y=p[y]; if (y==root) print x}}'; echo "$root"; }
router=$(pgrep -f "bin/router -region $region " | head -1)
[ -n "$router" ] || { echo "$0: no router of region $region running" >&2; exit 1; }
all="0-$(( $(nproc --all) - 1 ))"
restore() { for p in $(tree); do taskset -a -pc "$all" "$p" >/dev/null 2>&1 || true; done; }
trap restore EXIT
for p in $(tree); do taskset -a -pc 0 "$p" >/dev/null 2>&1 || true; done
taskset -a -pc 1 "$router" >/dev/null
echo "bench-pinned: router $router ($region) on CPU 1; the rest of the cluster and bench on CPU 0" >&2
args=("$@")
taskset -c 0 bin/bench "$@" &
bench=$!
# bench starts its baseline children (-baseline-proxy, -baseline-echo) before it measures
# anything: move each to the router's CPU as soon as it appears.
for spec in "-baseline-proxy internal-stdlib-proxy" "-baseline-echo internal-http-echo"; do
  set -- $spec "${args[@]}"
  flag=$1 arg=$2; shift 2
  case " $* " in *" $flag "*) ;; *) continue;; esac
  child=
  for _ in $(seq 100); do
    child=$(pgrep -P "$bench" -f "$arg" || true)
    [ -n "$child" ] && break
    sleep 0.1
  done
  if [ -n "$child" ]; then
    taskset -a -pc 1 "$child" >/dev/null
    echo "bench-pinned: $arg $child on CPU 1" >&2
  else
    echo "bench-pinned: $arg not found; it runs on CPU 0" >&2
  fi
done
wait "$bench"
