package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestAnalyzePoll(t *testing.T) {
	ack := time.Unix(1000, 0)
	at := func(ms int) time.Time { return ack.Add(time.Duration(ms) * time.Millisecond) }
	obs := func(vs ...int64) []observation {
		var out []observation
		for i, v := range vs {
			out = append(out, observation{version: v, at: at(10 * (i + 1)), source: "s" + strconv.Itoa(i)})
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		obs        []observation
		seen       bool
		vis        time.Duration
		source     string
		violations int
	}{
		{"never", obs(4, 4, 4), false, 0, "", 0},
		{"empty", nil, false, 0, "", 0},
		{"at once", obs(5, 5, 5), true, 10 * time.Millisecond, "s0", 0},
		{"after two old", obs(4, 4, 5, 5), true, 30 * time.Millisecond, "s2", 0},
		{"newer counts as new", obs(4, 6), true, 20 * time.Millisecond, "s1", 0},
		{"old after new", obs(4, 5, 4, 5, 4), true, 20 * time.Millisecond, "s1", 2},
		{"old before new is no violation", obs(4, 4, 4, 5), true, 40 * time.Millisecond, "s3", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := analyzePoll(tc.obs, 5, ack)
			if got.seen != tc.seen || got.visibility != tc.vis || got.firstSource != tc.source || got.violations != tc.violations {
				t.Errorf("got %+v", got)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	if v, err := parseVersion([]byte(`{"id":"x","version":7,"data":{}}`)); err != nil || v != 7 {
		t.Errorf("%d %v", v, err)
	}
	for _, bad := range []string{``, `{}`, `{"version":"7"}`, `[1]`} {
		if _, err := parseVersion([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestPairStats(t *testing.T) {
	p := &pairStats{Home: "us-east", Reader: "eu-west", RTT: 64 * time.Millisecond}
	for i := 1; i <= 100; i++ {
		p.Visible = append(p.Visible, time.Duration(i)*time.Millisecond)
	}
	p50, p99, mx := p.percentiles()
	if p50 != 50*time.Millisecond || p99 != 99*time.Millisecond || mx != 100*time.Millisecond {
		t.Errorf("%s %s %s", p50, p99, mx)
	}
	if tgt, ok := p.target(); !ok || tgt != 114*time.Millisecond {
		t.Errorf("target %s %v", tgt, ok)
	}
	if _, ok := (&pairStats{RTT: -1}).target(); ok {
		t.Error("unknown round trip has a target")
	}
	b, err := json.Marshal(p)
	if err != nil || !strings.Contains(string(b), `"visible_p99_ms":99`) || !strings.Contains(string(b), `"rtt_ms":64`) {
		t.Errorf("%s %v", b, err)
	}
}

func TestRunInvalidation(t *testing.T) {
	const lag = 30 * time.Millisecond
	f := newFakeRegions(t, lag, "us-east", "eu-west")
	cluster := f.clusterFile(t, false)
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	jsonOut := filepath.Join(t.TempDir(), "inval.json")
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "invalidation", "-pair-rounds", "3", "-poll", "2ms",
		"-recheck", "20ms", "-cache-wait", "500ms", "-out", out, "-json", jsonOut}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	md := stdout.String()
	t.Log(md)
	for _, want := range []string{
		"## Invalidation: a write in the home region, visible in every region (",
		"loopback mode (no added round trips)",
		"`bench-inval-eu-west` homed in eu-west, `bench-inval-us-east` homed in us-east",
		"| eu-west → eu-west | 0 ms | 50 ms | 3 |", "| eu-west → us-east | ", "| us-east → eu-west | ", "| us-east → us-east | ",
		"- no older answer once the new version was answered: 0 violations (met)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(md, "no read before a write came from the cache") {
		t.Error("the fake caches; the report says it does not")
	}
	var pairs []map[string]any
	b, _ := os.ReadFile(jsonOut)
	if err := json.Unmarshal(b, &pairs); err != nil || len(pairs) != 4 {
		t.Fatalf("json: %v %s", err, b)
	}
	for _, p := range pairs {
		if p["samples"].(float64) != 3 || p["cached_before_write"].(float64) != 3 || p["violations"].(float64) != 0 {
			t.Errorf("pair %v", p)
		}
		// The fake shows the new version lag after the write, and the ack comes after it.
		if v := p["visible_p50_ms"].(float64); v < 0 || v > 1000 {
			t.Errorf("pair %s→%s visible after %v ms", p["home"], p["reader"], v)
		}
	}
	if md, _ := os.ReadFile(out); !strings.Contains(string(md), "## Invalidation") {
		t.Error("-out not written")
	}
}

// TestRunInvalidationCountsViolations: a reader that answers the old version again after the new
// one is caught.
func TestRunInvalidationCountsViolations(t *testing.T) {
	f := newFakeRegions(t, 5*time.Millisecond, "us-east")
	f.flapEvery = 3
	cluster := f.clusterFile(t, false)
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-cluster", cluster, "-scenario", "invalidation", "-pair-rounds", "2", "-poll", "1ms",
		"-recheck", "30ms", "-cache-wait", "500ms"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	md := stdout.String()
	if !strings.Contains(md, "violations (**not met**)") || strings.Contains(md, ": 0 violations") {
		t.Errorf("violations not counted:\n%s", md)
	}
}

// TestInvalidationWithoutCache: when no read came from the cache, nothing was invalidated and
// the targets are reported as not measured, never as met.
func TestInvalidationWithoutCache(t *testing.T) {
	var w strings.Builder
	o := &options{title: "t", cacheFlags: cacheFlags{pairRounds: 1}}
	writeInvalidation(&w, o, invalReport{pairs: []*pairStats{{Home: "a", Reader: "a", Writes: 1, Visible: []time.Duration{time.Millisecond}}}})
	if s := w.String(); strings.Contains(s, "met") && !strings.Contains(s, "| no cache |") || strings.Contains(s, ": met") || !strings.Contains(s, "not measured") {
		t.Errorf("targets judged without a cache:\n%s", s)
	}
}
