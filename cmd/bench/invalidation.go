package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
	"github.com/meridian-dev/meridian/internal/topology"
)

// The invalidation scenario (issue 13, "Done when": a cached read in region X, an update in the
// home region H, the new version answered in X within one round trip plus 50 ms at p99, and
// never the old one again once X answered the new one). For every ordered pair (H, X), X = H
// included, and -pair-rounds times, interleaved across the pairs:
//
//  1. read record inval-X of H's tenant through X's router until an answer comes from the cache
//     (X-Read-Source: cache; at most -cache-wait);
//  2. PUT a new version through H's router and note when its answer arrived (the ack);
//  3. read through X's router every -poll (or as soon as the last answer came, if later) until
//     an answer carries the new version: visibility is when that answer arrived minus the ack,
//     an upper bound (the new version was visible somewhere between that read's send and its
//     answer);
//  4. keep reading for -recheck and count answers older than the new version (violations).

// invalidationTarget is issue 13's bound on visibility at p99: one round trip plus this.
const invalidationSlack = 50 * time.Millisecond

// observation is one answer of the reader region while waiting for a new version.
type observation struct {
	version int64
	at      time.Time // when the answer was read
	source  string    // X-Read-Source
}

// pollOutcome is what a write's poll window showed.
type pollOutcome struct {
	seen bool
	// visibility is the first answer with the new version's time minus the write's ack.
	visibility  time.Duration
	firstSource string
	// violations counts answers after the first new one that were older than it.
	violations int
}

// analyzePoll finds, in a write's answers in the order they came, the first that carries
// version want or newer, and counts the later ones that are older.
func analyzePoll(obs []observation, want int64, ack time.Time) pollOutcome {
	var out pollOutcome
	for _, o := range obs {
		switch {
		case !out.seen && o.version >= want:
			out.seen, out.visibility, out.firstSource = true, o.at.Sub(ack), o.source
		case out.seen && o.version < want:
			out.violations++
		}
	}
	return out
}

// parseVersion reads a record answer's version.
func parseVersion(body []byte) (int64, error) {
	var r struct {
		Version *int64 `json:"version"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("record answer: %w", err)
	}
	if r.Version == nil {
		return 0, errors.New("record answer has no version")
	}
	return *r.Version, nil
}

// pairStats is what one ordered region pair saw.
type pairStats struct {
	Home   string `json:"home"`
	Reader string `json:"reader"`
	// RTT is the pair's round trip in the topology (0 for X = H or in loopback mode); -1 unknown.
	RTT         time.Duration    `json:"-"`
	Visible     []time.Duration  `json:"-"`
	Violations  int64            `json:"violations"`
	NotVisible  int64            `json:"not_visible"`
	CachedFirst int64            `json:"cached_before_write"`
	Writes      int64            `json:"writes"`
	Reads       int64            `json:"reads"`
	Errors      map[string]int64 `json:"errors"`
	FirstSource map[string]int64 `json:"first_new_answer_source"`
}

func (p *pairStats) name() string { return p.Home + " → " + p.Reader }

// percentiles of the pair's visibility: p50, p99, max (zero when none).
func (p *pairStats) percentiles() (p50, p99, mx time.Duration) {
	s := slices.Clone(p.Visible)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0, 0
	}
	return nearestRank(s, 50), nearestRank(s, 99), s[len(s)-1]
}

// target is the pair's p99 bound, and whether it is known.
func (p *pairStats) target() (time.Duration, bool) {
	if p.RTT < 0 {
		return 0, false
	}
	return p.RTT + invalidationSlack, true
}

// MarshalJSON adds the durations in milliseconds.
func (p *pairStats) MarshalJSON() ([]byte, error) {
	type plain pairStats
	p50, p99, mx := p.percentiles()
	return json.Marshal(struct {
		*plain
		RTT     *float64 `json:"rtt_ms"`
		P50     float64  `json:"visible_p50_ms"`
		P99     float64  `json:"visible_p99_ms"`
		Max     float64  `json:"visible_max_ms"`
		Samples int      `json:"samples"`
	}{plain: (*plain)(p), RTT: rttMS(p.RTT), P50: ms(p50), P99: ms(p99), Max: ms(mx), Samples: len(p.Visible)})
}

func rttMS(d time.Duration) *float64 {
	if d < 0 {
		return nil
	}
	v := ms(d)
	return &v
}

// invalPair is a pair's endpoints while running.
type invalPair struct {
	stats           *pairStats
	readURL, putURL string
	token           string
}

// runInvalidation is the invalidation scenario, from the cluster file to the written section.
func runInvalidation(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	cs, err := readClusterState(o.cluster)
	if err != nil {
		return err
	}
	regions := cs.regionNames()
	homes, readers := regions, regions
	for _, f := range []struct {
		val  string
		list *[]string
	}{{o.home, &homes}, {o.region, &readers}} {
		if f.val == "" {
			continue
		}
		if !slices.Contains(regions, f.val) {
			return fmt.Errorf("region %q is not in %s (it has %s)", f.val, o.cluster, strings.Join(regions, ", "))
		}
		*f.list = []string{f.val}
	}
	if o.tenant != "" && len(homes) > 1 {
		return fmt.Errorf("%w: -tenant names one tenant; give -home too (invalidation uses a tenant per home region)", errUsage)
	}
	for _, r := range regions {
		if !validBase(cs.Regions[r].Router) {
			return fmt.Errorf("region %s has no router URL in %s", r, o.cluster)
		}
	}
	rtt, rttNote := pairRTTs(cs, o.topology)
	secret, adminToken := o.jwtSecret, o.adminToken
	if secret == "" {
		secret = cs.DevJWTSecret
	}
	if adminToken == "" {
		adminToken = cs.AdminToken
	}
	if o.title == "" {
		o.title = "Invalidation: a write in the home region, visible in every region"
	}
	router := func(r string) string { return strings.TrimRight(cs.Regions[r].Router, "/") }
	fmt.Fprintf(stderr, "bench: invalidation, homes %s, readers %s, %d writes per pair, poll every %s\n",
		strings.Join(homes, ","), strings.Join(readers, ","), o.pairRounds, o.poll)

	client := &http.Client{Timeout: o.cfg.Timeout, Transport: loadgen.NewTransport(4),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var pairs []invalPair
	tenants := map[string]string{}
	for _, h := range homes {
		id := o.tenant
		if id == "" {
			id = "bench-inval-" + h
		}
		tenants[h] = id
		token, err := mintToken([]byte(secret), id, 24*time.Hour, time.Now())
		if err != nil {
			return err
		}
		if adminToken == "" {
			fmt.Fprintf(stderr, "bench: no admin token; assuming tenant %s exists\n", id)
		} else if err := createTenant(ctx, client, router(h), adminToken, tenantSpec{id: id, home: h}, stderr); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		raiseTenantLimits(ctx, client, router(h), adminToken, id, stderr)
		for _, x := range readers {
			path := "/v1/collections/" + collection + "/records/inval-" + x
			p := invalPair{stats: &pairStats{Home: h, Reader: x, RTT: rtt(h, x), Errors: map[string]int64{}, FirstSource: map[string]int64{}},
				readURL: router(x) + path, putURL: router(h) + path, token: token}
			if _, _, err := putVersion(ctx, client, p.putURL, token, 0); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			if err := waitReadable(ctx, client, p.readURL, token); err != nil {
				return fmt.Errorf("setup: %w", err)
			}
			pairs = append(pairs, p)
		}
	}

	started := time.Now().UTC()
	waitForCache := o.cacheWait > 0
	everCached := false
	for round := 1; round <= o.pairRounds; round++ {
		for _, p := range pairs {
			cached, err := invalRound(ctx, client, p, round, o.cacheFlags, waitForCache)
			if err != nil {
				return err // ctx ended
			}
			everCached = everCached || cached
		}
		// Without a cache no read ever says cache: stop waiting -cache-wait for one every time.
		if round == 3 && !everCached && waitForCache {
			fmt.Fprintf(stderr, "bench: WARNING: no read came from the cache in 3 rounds of every pair; measuring without waiting for it\n")
			waitForCache = false
		}
		if round%10 == 0 || round == o.pairRounds {
			fmt.Fprintf(stderr, "bench: invalidation: %d/%d writes per pair\n", round, o.pairRounds)
		}
	}

	var stats []*pairStats
	for _, p := range pairs {
		stats = append(stats, p.stats)
	}
	var md strings.Builder
	writeInvalidation(&md, o, invalReport{started: started, m: machineInfo(ctx), latency: cs.Latency, rttNote: rttNote,
		tenants: tenants, pairs: stats})
	return emit(o, md.String(), stats, stdout, stderr)
}

// pairRTTs returns the round trip of a region pair as the cluster runs it: the topology's in
// latency mode, 0 in loopback mode or within a region, -1 when the topology cannot be read.
func pairRTTs(cs *clusterState, path string) (func(a, b string) time.Duration, string) {
	if !cs.Latency {
		return func(string, string) time.Duration { return 0 }, "loopback mode (no added round trips): the target is 50 ms for every pair"
	}
	t, err := topology.Load(path)
	if err != nil {
		return func(a, b string) time.Duration {
			if a == b {
				return 0
			}
			return -1
		}, fmt.Sprintf("latency mode, but the topology %s could not be read (%v): round trips unknown", path, err)
	}
	return t.RTT, "latency mode: cross-region links delayed by the round trips of " + path
}

// putVersion writes a new version of the record at url and returns it with the time its answer
// arrived.
func putVersion(ctx context.Context, client *http.Client, url, token string, round int) (int64, time.Time, error) {
	body := fmt.Appendf(nil, `{"data":{"round":%d,"written_at":%q}}`, round, time.Now().UTC().Format(time.RFC3339Nano))
	var version int64
	var at time.Time
	err := poll(ctx, func() (bool, error) {
		st, a, err := doJSON(ctx, client, http.MethodPut, url, token, nil, body)
		if err != nil {
			return false, err
		}
		if st != http.StatusOK && st != http.StatusCreated {
			return !retryable(st), fmt.Errorf("PUT %s: %d %.200s", url, st, a.body)
		}
		version, err = parseVersion(a.body)
		at = a.at
		return true, err
	})
	return version, at, err
}

// readOnce GETs the record and returns its version (0 when the answer had none) and source.
func readOnce(ctx context.Context, client *http.Client, url, token string) (int, observation, error) {
	st, a, err := doJSON(ctx, client, http.MethodGet, url, token, nil, nil)
	if err != nil {
		return 0, observation{}, err
	}
	obs := observation{at: a.at, source: readSource(a.header)}
	if st == http.StatusOK {
		if v, err := parseVersion(a.body); err == nil {
			obs.version = v
		}
	}
	return st, obs, nil
}

// invalRound does one measured write of a pair and adds what it saw to the pair's stats. It
// returns whether a read before the write came from the cache, and an error only when ctx ended.
func invalRound(ctx context.Context, client *http.Client, p invalPair, round int, f cacheFlags, waitForCache bool) (bool, error) {
	s := p.stats
	readErr := func(st int, err error) {
		switch {
		case err != nil:
			s.Errors["read "+loadgen.TransportError]++
		case st != http.StatusOK:
			s.Errors["read "+strconv.Itoa(st)]++
		}
	}
	sleep := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}

	// 1. Until the reader region answers from its cache.
	cached := false
	for deadline := time.Now().Add(f.cacheWait); ; {
		st, obs, err := readOnce(ctx, client, p.readURL, p.token)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		s.Reads++
		readErr(st, err)
		if err == nil && st == http.StatusOK && obs.source == "cache" {
			cached = true
			break
		}
		if !waitForCache || time.Now().After(deadline) {
			break
		}
		if err := sleep(f.poll); err != nil {
			return false, err
		}
	}
	if cached {
		s.CachedFirst++
	}

	// 2. The write in the home region.
	want, ack, err := putVersion(ctx, client, p.putURL, p.token, round)
	if ctx.Err() != nil {
		return cached, ctx.Err()
	}
	if err != nil {
		s.Errors["write failed"]++
		return cached, nil
	}
	s.Writes++

	// 3, 4. Poll the reader region until the new version, then for -recheck more.
	var obs []observation
	var seenAt time.Time
	for next := ack; ; {
		if wait := time.Until(next); wait > 0 {
			if err := sleep(wait); err != nil {
				return cached, err
			}
		}
		sent := time.Now()
		st, o, err := readOnce(ctx, client, p.readURL, p.token)
		if ctx.Err() != nil {
			return cached, ctx.Err()
		}
		s.Reads++
		readErr(st, err)
		if err == nil && st == http.StatusOK && o.version > 0 {
			obs = append(obs, o)
			if seenAt.IsZero() && o.version >= want {
				seenAt = o.at
			}
		}
		now := time.Now()
		if !seenAt.IsZero() && now.Sub(seenAt) >= f.recheck {
			break
		}
		if seenAt.IsZero() && now.Sub(ack) >= f.visibleTimeout {
			break
		}
		next = sent.Add(f.poll)
	}
	out := analyzePoll(obs, want, ack)
	if !out.seen {
		s.NotVisible++
		return cached, nil
	}
	s.Visible = append(s.Visible, out.visibility)
	s.FirstSource[out.firstSource]++
	s.Violations += int64(out.violations)
	return cached, nil
}

// invalReport is what writeInvalidation writes from.
type invalReport struct {
	started time.Time
	m       machine
	latency bool
	rttNote string
	tenants map[string]string
	pairs   []*pairStats
}

// writeHeading writes a section's heading, command and machine, as writeSection does.
func writeHeading(w *strings.Builder, o *options, started time.Time, m machine) {
	fmt.Fprintf(w, "## %s (%s)\n\n", o.title, started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "```\n%s\n```\n\n", commandLine(o.args))
	fmt.Fprintf(w, "- Machine: %d CPUs (nproc), %s; %s", m.nproc, m.cpu, m.goVersion)
	if m.loadavg != "" {
		fmt.Fprintf(w, "; load average %s when measured", m.loadavg)
	}
	w.WriteString("; load generator on the same machine.\n")
}

// writeInvalidation writes the invalidation scenario's section.
func writeInvalidation(w *strings.Builder, o *options, r invalReport) {
	writeHeading(w, o, r.started, r.m)
	fmt.Fprintf(w, "- Cluster in %s.\n", r.rttNote)
	var ts []string
	for _, h := range slices.Sorted(maps.Keys(r.tenants)) {
		ts = append(ts, fmt.Sprintf("`%s` homed in %s", r.tenants[h], h))
	}
	fmt.Fprintf(w, "- Tenants %s.\n\n", strings.Join(ts, ", "))
	fmt.Fprintf(w, "For every ordered pair home → reader (reader = home included), %d times, interleaved across the pairs: read "+
		"record `inval-<reader>` through the reader region's router until an answer says `X-Read-Source: cache` (at most %s), "+
		"PUT a new version through the home region's router and note when its answer arrived (the ack), then GET through the "+
		"reader's router every %s (or as soon as the previous answer came) until an answer carries the new version. "+
		"Visibility = that answer's arrival − the ack (an upper bound: the new version became visible between that GET's "+
		"send and its answer). Reads continue for %s after it; every older answer among them is a violation. A write not "+
		"visible within %s counts as not visible. Target (issue 13): p99 ≤ the pair's round trip + 50 ms, 0 violations.\n\n",
		o.pairRounds, o.cacheWait, o.poll, o.recheck, o.visibleTimeout)
	w.WriteString("| home → reader | round trip | target p99 | writes | visible p50 ms | p99 ms | max ms | p99 target | " +
		"older answers after the new one | not visible | reads before the write from cache | first new answer from | errors |\n")
	w.WriteString("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|\n")
	allMet, anySample := true, false
	var violations, notVisible, cachedFirst, writes int64
	for _, p := range r.pairs {
		p50, p99, mx := p.percentiles()
		rtt, tgt, met := "?", "?", "?"
		if t, ok := p.target(); ok {
			rtt = fmt.Sprintf("%.0f ms", ms(p.RTT))
			tgt = fmt.Sprintf("%.0f ms", ms(t))
			switch {
			case p.CachedFirst == 0:
				met = "no cache" // nothing was invalidated in this pair
			case len(p.Visible) > 0:
				met = metOrNot(p99 <= t)
				allMet = allMet && p99 <= t
				anySample = true
			}
		} else {
			allMet = false
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %.1f | %.1f | %.1f | %s | %d | %d | %d / %d | %s | %s |\n",
			p.name(), rtt, tgt, p.Writes, ms(p50), ms(p99), ms(mx), met, p.Violations, p.NotVisible,
			p.CachedFirst, p.Writes, countCell(p.FirstSource), countCell(p.Errors))
		violations += p.Violations
		notVisible += p.NotVisible
		cachedFirst += p.CachedFirst
		writes += p.Writes
	}
	w.WriteString("\nIssue 13's targets in this run:\n\n")
	if cachedFirst == 0 {
		// Nothing was cached, so nothing was invalidated: whatever the figures, they are not the target's.
		fmt.Fprintf(w, "- visibility p99 ≤ round trip + 50 ms for every pair: not measured (no read came from the cache)\n")
		fmt.Fprintf(w, "- no older answer once the new version was answered: %d violations (not measured: no read came from the cache)\n", violations)
	} else {
		fmt.Fprintf(w, "- visibility p99 ≤ round trip + 50 ms for every pair: %s\n", metOrNot(anySample && allMet && notVisible == 0))
		fmt.Fprintf(w, "- no older answer once the new version was answered: %d violations (%s)\n", violations, metOrNot(violations == 0))
	}
	if cachedFirst == 0 {
		fmt.Fprintf(w, "\nNote: no read before a write came from the cache (no `X-Read-Source: cache`): the API nodes have no read "+
			"cache (or it is off), so these are the visibility figures of uncached reads (standby replay), not of invalidation.\n")
	} else if cachedFirst < writes {
		fmt.Fprintf(w, "\nNote: in %d of %d writes the read before the write was not answered from the cache within %s.\n",
			writes-cachedFirst, writes, o.cacheWait)
	}
}
