package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The slow-body scenario (issue 12): in some rounds a wave of -slow-conns connections send a
// POST's headers with a Content-Length, 16 bytes of the body, and then the rest one byte a
// second (half of them) or nothing more (the other half). Waves alternate between connections
// without a token (the router should answer 401 from the headers and close) and with the
// hostile tenant's valid token (the body timeout applies: 408 and close). Meanwhile the victim
// reads, side by side with rounds without a wave; the router's resident memory is sampled from
// /proc before, during and after each wave.

// Target names of the slow-body scenario's rounds.
const (
	slowPhaseNone    = "alone"
	slowPhaseNoToken = "slow-no-token"
	slowPhaseToken   = "slow-token"
)

// Shape of a wave's requests.
const (
	waveBodyLen   = 1024
	waveBodyFirst = 16
	waveDrip      = time.Second
)

// waveRequest is the request of connection i of a wave: a POST whose body never completes in
// time; token empty sends none.
func waveRequest(host, token string, i int) rawRequest {
	hs := []header{{"Accept", "application/json"}, {"Content-Type", "application/json"}}
	if token != "" {
		hs = append(hs, header{"Authorization", "Bearer " + token})
	}
	r := newRawRequest(http.MethodPost, "/v1/collections/"+collection+"/records", host, hs, paddedBody(waveBodyLen))
	r.first = waveBodyFirst
	if i%2 == 0 {
		r.drip = waveDrip
	}
	return r
}

// wave is one burst of slow-body connections and what the router did with them.
type wave struct {
	variant                      string
	conns                        int
	rssBefore, rssPeak, rssAfter int64 // bytes; -1 unknown
	results                      []rawResult
	done                         chan struct{}
}

// slowWaves runs the waves of a slow-body run, one at a time.
type slowWaves struct {
	addr, host, token string
	conns             int
	bodyTimeout       time.Duration
	// pid is the router's process for its memory; 0 when unknown.
	pid int
	// settle is how long after a wave's last connection closed its "after" memory is read.
	settle time.Duration

	waves []*wave
	cur   *wave
}

// begin starts a wave of the variant in the background, after the current one has finished.
func (s *slowWaves) begin(ctx context.Context, variant string) {
	s.finish()
	token := ""
	if variant == slowPhaseToken {
		token = s.token
	}
	w := &wave{variant: variant, conns: s.conns, rssBefore: readRSS(s.pid), results: make([]rawResult, s.conns),
		done: make(chan struct{})}
	w.rssPeak = w.rssBefore
	s.waves = append(s.waves, w)
	s.cur = w
	var wg sync.WaitGroup
	for i := range s.conns {
		wg.Go(func() {
			w.results[i] = doRaw(ctx, s.addr, waveRequest(s.host, token, i), s.bodyTimeout+10*time.Second)
		})
	}
	closed := make(chan struct{})
	go func() {
		wg.Wait()
		close(closed)
	}()
	// Sample the router's memory until the wave is over; w.done says both are.
	go func() {
		defer close(w.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-closed:
				return
			case <-t.C:
				if rss := readRSS(s.pid); rss > w.rssPeak {
					w.rssPeak = rss
				}
			}
		}
	}()
}

// finish waits for the current wave (if any) to end and reads the memory after it.
func (s *slowWaves) finish() {
	w := s.cur
	if w == nil {
		return
	}
	<-w.done
	time.Sleep(s.settle) // let the router finish closing before reading its memory
	w.rssAfter = readRSS(s.pid)
	s.cur = nil
}

// mib renders bytes as MiB, or "?" when unknown.
func mib(b int64) string {
	if b < 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f", float64(b)/(1<<20))
}

// writeTable writes one row per wave.
func (s *slowWaves) writeTable(w *strings.Builder) {
	fmt.Fprintf(w, "\nSlow-body waves: %d connections each, POST with `Content-Length: %d`, %d body bytes with the headers, "+
		"then one byte every %s (even connections) or nothing (odd). Router body timeout assumed %s; "+
		"\"closed in time\" counts connections the router closed within it plus 0.5 s (measured by the client from the end of "+
		"the headers). Router memory is VmRSS of pid %d from /proc, sampled every 100 ms; \"after\" %s after the wave's last close.\n\n",
		s.conns, waveBodyLen, waveBodyFirst, waveDrip, s.bodyTimeout, s.pid, s.settle)
	w.WriteString("| wave | variant | answers | time to answer p50 / max | closed in time | time to close p50 / max | router RSS before / peak / after MiB | peak − before |\n")
	w.WriteString("|---:|---|---|---|---:|---|---|---:|\n")
	for i, wv := range s.waves {
		answers := map[string]int64{}
		var closes, answered []time.Duration
		inTime := 0
		for _, r := range wv.results {
			answers[r.key()]++
			if r.status != 0 {
				answered = append(answered, r.answered)
			}
			if r.closed {
				closes = append(closes, r.closedAt)
				if r.closedAt <= s.bodyTimeout+500*time.Millisecond {
					inTime++
				}
			}
		}
		delta := "?"
		if wv.rssBefore >= 0 && wv.rssPeak >= 0 {
			delta = mib(wv.rssPeak-wv.rssBefore) + " MiB"
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %d / %d | %s | %s / %s / %s | %s |\n", i+1, wv.variant,
			countCell(answers), durationsCell(answered), inTime, wv.conns, durationsCell(closes), mib(wv.rssBefore), mib(wv.rssPeak), mib(wv.rssAfter), delta)
	}
}

// readRSS returns VmRSS of pid in bytes, or -1 when unknown.
func readRSS(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	return parseVmRSS(f)
}

// parseVmRSS reads the VmRSS line of a /proc/<pid>/status listing, in bytes; -1 if absent.
func parseVmRSS(r io.Reader) int64 {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "VmRSS" {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return -1
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1
		}
		return n << 10
	}
	return -1
}

// findListener returns the pid of the process whose command line has "-listen hostport" (as
// the launcher starts routers), or 0 when none or several do.
func findListener(hostport string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	found := map[int]bool{}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if listensOn(args, hostport) {
			pid, _ := strconv.Atoi(filepath.Base(d))
			found[pid] = true
		}
	}
	if len(found) != 1 {
		return 0
	}
	return slices.Collect(maps.Keys(found))[0]
}

// listensOn says whether args have -listen (or --listen) hostport, separate or with "=", or
// -loop-listen hostport (a router's event-loop listener: the same process).
func listensOn(args []string, hostport string) bool {
	for i, a := range args {
		name, val, eq := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "listen" && name != "loop-listen" {
			continue
		}
		if !eq && i+1 < len(args) {
			val = args[i+1]
		}
		if val == hostport {
			return true
		}
	}
	return false
}
