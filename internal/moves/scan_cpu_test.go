package moves

import (
	"os"
	"strconv"
	"strings"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on Linux).
const clockTicks = 100

// clusterCPU is the CPU seconds (user + system) a Postgres cluster has used so far: the
// postmaster's own and its waited-for children's (exited backends), plus every live child's
// (backends, autovacuum, the background writers). 0 where /proc cannot be read.
func clusterCPU(postmaster int) float64 {
	f := procStat(postmaster)
	if f == nil {
		return 0
	}
	ticks := fieldSum(f, 11, 12, 13, 14) // utime, stime, cutime, cstime
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == postmaster {
			continue
		}
		if c := procStat(pid); c != nil && c[1] == strconv.Itoa(postmaster) {
			ticks += fieldSum(c, 11, 12)
		}
	}
	return float64(ticks) / clockTicks
}

// procStat is /proc/pid/stat's fields after the command name: [0] state, [1] ppid, … ([11]
// utime, [12] stime, [13] cutime, [14] cstime), or nil.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func fieldSum(f []string, idx ...int) int64 {
	var n int64
	for _, i := range idx {
		if i < len(f) {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			n += v
		}
	}
	return n
}

// selfCPU is this process's CPU seconds so far.
func selfCPU() float64 {
	f := procStat(os.Getpid())
	if f == nil {
		return 0
	}
	return float64(fieldSum(f, 11, 12)) / clockTicks
}

// loadAvg is /proc/loadavg's three load averages, or "unknown".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}
