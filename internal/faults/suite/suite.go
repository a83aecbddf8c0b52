// Package suite runs the fault suite end to end against a running local cluster (issue 15):
// it sets the workload's tenants up, starts the `/v1/changes` readers, runs the workload
// (internal/faults/workload) and the nemesis (internal/faults/nemesis) together for a
// duration, heals everything, makes the final reads, lets the change readers catch up, writes
// the history file and judges it with internal/faults/check. cmd/faults
// is its command; its test runs a short seeded run against the launcher's topology.
//
// It owns the order of a run only. It must never judge a history itself or weaken what the
// checkers report: a run is OK only when check.Report.OK is.
package suite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/check"
	"github.com/meridian-dev/meridian/internal/faults/history"
	"github.com/meridian-dev/meridian/internal/faults/nemesis"
	"github.com/meridian-dev/meridian/internal/faults/workload"
	"github.com/meridian-dev/meridian/internal/sim"
)

// Options configure Run.
type Options struct {
	// Cluster is the running cluster's file; Launcher controls its processes. Required.
	Cluster  *sim.ClusterFile
	Launcher nemesis.Launcher
	// Seed seeds the workload and the nemesis schedule.
	Seed int64
	// Duration is how long the workload and the nemesis run (setup, healing and final reads
	// come on top). Required.
	Duration time.Duration
	// Kinds are the faults to inject (nil: every kind; partitions only in latency mode;
	// empty but not nil: none).
	Kinds []string
	// Plan tunes the schedule (its Seed, Kinds and Duration are set from the fields above).
	Plan nemesis.PlanConfig
	// Workload tunes the clients (its Cluster, RunID, Seed, Clock and Recorder are set here).
	Workload workload.Config
	// ChangesPatience bounds the wait, after the final reads, for every `/v1/changes` reader
	// to catch up with its tenant's acknowledged writes [60s]; a reader that has not by then
	// is recorded with what it received (the checker names what is missing).
	ChangesPatience time.Duration
	// HistoryPath is where the history file goes ("" = nowhere).
	HistoryPath string
	// Check configures the checkers.
	Check check.Config
	// Log receives progress lines (nil = discard).
	Log io.Writer
}

// Result is a finished run.
type Result struct {
	History history.History
	Report  check.Report
	Summary check.Summary
	// Plan is the schedule that was run; FaultLog what the nemesis did, line by line.
	Plan     []nemesis.Step
	FaultLog []string
	// Moves are the tenant moves the nemesis requested and how each ended (not set by
	// Replay: the fault log has them).
	Moves []nemesis.MoveRecord
}

// OK reports whether every checker accepted the history.
func (r Result) OK() bool { return r.Report.OK() }

// Run runs the suite once. An error means the run could not be made or judged (the cluster
// could not be set up, healed or read at the end); violations are in the Result, not errors.
func Run(ctx context.Context, opts Options) (Result, error) {
	if opts.Cluster == nil || opts.Launcher == nil || opts.Duration <= 0 {
		return Result{}, errors.New("suite: Options.Cluster, Launcher and Duration are required")
	}
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	logf := func(format string, a ...any) { fmt.Fprintf(logw, format+"\n", a...) }

	var regions []string
	for r := range opts.Cluster.Regions {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	kinds := opts.Kinds
	if kinds == nil {
		kinds = nemesis.AllKinds
	}
	if !opts.Cluster.Latency {
		kinds = slices.DeleteFunc(slices.Clone(kinds), func(k string) bool { return k == nemesis.Partition })
		logf("no latency proxies: partitions left out")
	}
	procs, err := opts.Launcher.Processes(ctx)
	if err != nil {
		return Result{}, err
	}
	pc := opts.Plan
	pc.Seed, pc.Kinds, pc.Duration = opts.Seed, kinds, opts.Duration
	// Moves target the workload's tenants by index (their ids are made at Setup).
	tpr := opts.Workload.TenantsPerRegion
	if tpr <= 0 {
		tpr = workload.DefaultTenantsPerRegion
	}
	pc.Tenants = tpr * len(regions)
	plan := nemesis.Plan(pc, procs, regions)
	header := history.Header{Seed: opts.Seed}
	for _, s := range plan {
		header.Faults = append(header.Faults, "plan "+s.String())
	}

	var out *os.File
	if opts.HistoryPath != "" {
		if out, err = os.Create(opts.HistoryPath); err != nil {
			return Result{}, err
		}
		defer out.Close()
	}
	var sink io.Writer
	var buf *bufio.Writer
	if out != nil {
		buf = bufio.NewWriterSize(out, 64<<10)
		sink = buf
	}
	rec, err := workload.NewRecorder(sink, header)
	if err != nil {
		return Result{}, err
	}
	wc := opts.Workload
	wc.Cluster, wc.Seed, wc.Recorder = opts.Cluster, opts.Seed, rec
	wc.RunID = fmt.Sprintf("%x", time.Now().UnixNano()%(1<<32))
	wc.Clock = workload.NewClock()
	w, err := workload.New(wc)
	if err != nil {
		return Result{}, err
	}
	logf("seed %d, %v, faults: %s", opts.Seed, opts.Duration, strings.Join(kinds, ", "))
	for _, s := range plan {
		logf("  plan %s", s)
	}
	if err := w.Setup(ctx); err != nil {
		return Result{}, fmt.Errorf("suite: setup: %w", err)
	}
	logf("%d tenants ready; running", len(w.Tenants()))
	// The change-stream readers follow their tenants from the beginning, through every fault.
	w.StartChanges(ctx)

	// The plan's times count from the workload's start.
	base := wc.Clock.Now()
	shifted := slices.Clone(plan)
	for i := range shifted {
		shifted[i].At += base
	}
	var tenants []string
	for _, t := range w.Tenants() {
		tenants = append(tenants, t.ID)
	}
	nem := nemesis.New(nemesis.Config{Launcher: opts.Launcher, Cluster: opts.Cluster, Now: wc.Clock.Now,
		Log: func(s string) { logf("  %s", s) }, Tenants: tenants})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The nemesis stops with the workload: nothing is injected after Duration.
		nctx, cancel := context.WithTimeout(ctx, opts.Duration)
		defer cancel()
		nem.Run(nctx, shifted)
	}()
	w.Run(ctx, opts.Duration)
	<-done

	healCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	healErr := nem.HealAll(healCtx)
	var finalErr error
	patience := opts.ChangesPatience
	if patience <= 0 {
		patience = 60 * time.Second
	}
	if healErr == nil {
		logf("healed; final reads")
		finalErr = w.FinalReads(healCtx, 2*time.Minute)
	} else {
		patience = 0 // only stop the readers: the run failed
	}
	if cs := w.FinishChanges(healCtx, patience); cs.Readers > 0 {
		logf("change streams: %d of %d readers caught up; %d events, %d connections, %d clean ends, %d heartbeats",
			cs.CaughtUp, cs.Readers, cs.Events, cs.Connects, cs.CleanEnds, cs.Heartbeats)
	}

	faultLog := nem.Log()
	h := history.History{Header: header, Ops: rec.Ops()}
	h.Header.Faults = append(h.Header.Faults, faultLog...)
	if out != nil {
		// The streamed file has the plan in its header; the final one also has what was done.
		if err := buf.Flush(); err != nil {
			return Result{}, err
		}
		if err := rewrite(opts.HistoryPath, h); err != nil {
			return Result{}, err
		}
	}
	if err := rec.Err(); err != nil {
		return Result{}, fmt.Errorf("suite: history file: %w", err)
	}
	if err := errors.Join(healErr, finalErr); err != nil {
		return Result{Plan: plan, FaultLog: faultLog, History: h, Moves: nem.Moves()}, fmt.Errorf("suite: %w", err)
	}
	if err := h.Validate(); err != nil {
		return Result{}, fmt.Errorf("suite: the workload recorded an invalid history: %w", err)
	}
	res := Judge(h, opts.Check, plan, faultLog)
	res.Moves = nem.Moves()
	return res, nil
}

// Judge runs every checker over h and summarises it; faultLog names the faults for the table
// (nil: taken from h's header).
func Judge(h history.History, cfg check.Config, plan []nemesis.Step, faultLog []string) Result {
	if faultLog == nil {
		faultLog = h.Header.Faults
	}
	r := check.All(h, cfg)
	return Result{History: h, Report: r, Summary: check.Summarize(h, r, FaultCounts(faultLog)),
		Plan: plan, FaultLog: faultLog}
}

var (
	injectRE  = regexp.MustCompile(`\binject (\S+) (\S+)$`)
	moveEndRE = regexp.MustCompile(`\bmove \S+ of \S+: (done|failed|cancelled) after `)
)

// FaultCounts turns a nemesis log into "kind ×n" per kind injected (failed injections
// excluded), in AllKinds' order, for the summary table; moves also say how many ended done,
// failed and cancelled ("move ×5 (4 done, 1 failed)").
func FaultCounts(log []string) []string {
	n := map[string]int{}
	ends := map[string]int{}
	for _, l := range log {
		if m := injectRE.FindStringSubmatch(l); m != nil {
			n[m[1]]++
		}
		if m := moveEndRE.FindStringSubmatch(l); m != nil {
			ends[m[1]]++
		}
	}
	var out []string
	for _, k := range nemesis.AllKinds {
		if n[k] > 0 {
			s := fmt.Sprintf("%s ×%d", k, n[k])
			if k == nemesis.Move {
				var parts []string
				for _, e := range []string{"done", "failed", "cancelled"} {
					if ends[e] > 0 || e == "done" {
						parts = append(parts, fmt.Sprintf("%d %s", ends[e], e))
					}
				}
				s += " (" + strings.Join(parts, ", ") + ")"
			}
			out = append(out, s)
		}
	}
	return out
}

// rewrite replaces path with h, atomically.
func rewrite(path string, h history.History) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := history.Encode(tmp, h); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Replay reads a history file and judges it again.
func Replay(path string, cfg check.Config) (Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	h, err := history.Decode(bufio.NewReader(f))
	if err != nil {
		return Result{}, err
	}
	return Judge(h, cfg, nil, nil), nil
}
