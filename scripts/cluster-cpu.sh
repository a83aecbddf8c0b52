#!/usr/bin/env bash
# cluster-cpu.sh runs a command (normally bin/bench) against a running local cluster and prints
# the CPU time every kind of process used meanwhile (user+system from /proc/<pid>/stat, plus
# the time of children that exited, such as Postgres backends), with routers and API nodes split
# by region; the command's own time is the "command" row. Divide by the requests served for a
# per-request cost.
#   scripts/cluster-cpu.sh [-d .meridian] -- bin/bench -scenario get ...
set -euo pipefail
dir=.meridian
if [ "${1:-}" = -d ]; then dir=$2; shift 2; fi
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [-d dir] -- command..." >&2; exit 2; }
# One python3 process per snapshot: a shell loop over /proc would cost more CPU than it measures.
snap='
import os, re, sys
root = int(open(sys.argv[1]).read())
hz = os.sysconf("SC_CLK_TCK")
parent, info = {}, {}
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        st = open(f"/proc/{p}/stat").read()
        args = open(f"/proc/{p}/cmdline").read().split("\0")
    except OSError:
        continue
    comm = st[st.index("(")+1:st.rindex(")")]
    f = st[st.rindex(")")+2:].split()
    parent[int(p)] = int(f[1])
    info[int(p)] = (comm, args, sum(int(x) for x in f[11:15]) / hz)
def under(p, r):
    while p and p != r:
        p = parent.get(p, 0)
    return p == r
for p, (comm, args, t) in info.items():
    if not under(p, root):
        continue
    kind = {"redis-server": "redis", "sim": "sim (nats, proxies)"}.get(comm, comm)
    if comm in ("router", "api") and "-region" in args:
        kind += " " + args[args.index("-region") + 1]
    print(f"{p}|{kind}|{t}")
'
snapshot() { python3 -c "$snap" "$dir/sim.pid"; }
before=$(snapshot)
status=0
/usr/bin/time -f '%U %S' -o "$dir/.cpu-cmd" "$@" || status=$?
after=$(snapshot)
{
  awk -F'|' 'NR==FNR {b[$1]=$3; next} {k[$2]+=($3-b[$1])} END {for (x in k) if (k[x]>0.005) printf "%-22s %8.2f s\n", x, k[x]}' <(echo "$before") <(echo "$after")
  awk '{printf "%-22s %8.2f s\n", "command", $1+$2}' "$dir/.cpu-cmd"
} | sort
rm -f "$dir/.cpu-cmd"
exit $status
