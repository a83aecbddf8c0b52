// Package check judges a fault-suite history (internal/faults/history) against the guarantees
// of DESIGN.md §6–§8: linearizable registers (strong reads and writes, compare-and-set by
// If-Match), complete sets (creates with Idempotency-Key and retries), token reads never older
// than their write, plain and cached reads no older than their bound, and `/v1/changes` streams
// complete, in commit order and without repeats. Each checker returns a Verdict naming the
// operations behind every violation; All runs them all and Summarize turns the result into the
// table the suite's command prints.
//
// It owns judging only. It must never talk to a cluster, read a clock (except porcupine's
// per-key time budget) or change the history it is given; it must never accept a history
// because evidence is missing — what it cannot verify is reported, not assumed. Tests should
// feed it hand-built or simulated histories with constructed times.
package check

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// The defaults of Config.
const (
	// DefaultMaxStaleness is DESIGN.md §6's max_staleness, the plain-read bound.
	DefaultMaxStaleness = 5 * time.Second
	// DefaultKeyTimeout is the linearizability checker's budget per register.
	DefaultKeyTimeout = 10 * time.Second
)

// Config parameterises All. The zero value uses the defaults.
type Config struct {
	// MaxStaleness bounds plain reads; zero means DefaultMaxStaleness.
	MaxStaleness time.Duration
	// KeyTimeout is porcupine's budget for one register; zero means DefaultKeyTimeout. A key
	// whose check runs out of it is reported Inconclusive, never ok.
	KeyTimeout time.Duration
}

// The kinds of Violation.
const (
	NotLinearizable   = "not-linearizable"
	LostCreate        = "lost-create"
	DuplicateCreate   = "duplicate-create"
	IdempotencySplit  = "idempotency-split"
	FailedCreateFound = "failed-create-applied"
	PhantomCreate     = "phantom-create"
	NoFinalRead       = "no-final-read"
	StaleTokenRead    = "stale-token-read"
	StaleRead         = "stale-read"
	StaleCachedRead   = "stale-cached-read"
	ChangesGap        = "changes-gap"
	ChangesRepeat     = "changes-repeat"
	ChangesMissing    = "changes-missing"
	ChangesOrder      = "changes-order"
	ChangesPhantom    = "changes-phantom"
)

// Violation is one thing the history shows that the guarantees forbid.
type Violation struct {
	// Kind is one of the kinds above.
	Kind   string
	Tenant string
	// Key is the register or collection concerned ("" for a whole stream).
	Key string
	// Ops are the operations that together show the violation.
	Ops []history.Op
	// Detail says what is wrong in words.
	Detail string
}

// String renders v over several lines: the kind, where, the detail, then one line per
// operation.
func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: tenant %s", v.Kind, v.Tenant)
	if v.Key != "" {
		fmt.Fprintf(&b, " %s", v.Key)
	}
	fmt.Fprintf(&b, ": %s", v.Detail)
	for _, o := range v.Ops {
		fmt.Fprintf(&b, "\n    %s", o)
	}
	return b.String()
}

// Verdict is one checker's judgement.
type Verdict struct {
	// Checker names the checker.
	Checker string
	// Checked counts what it examined (operations, registers or events, per checker).
	Checked int
	// Violations are what it rejected.
	Violations []Violation
	// Inconclusive lists what it could not decide (a register whose check timed out).
	Inconclusive []string
	// Keys holds the linearizability checker's verdict per register, sorted.
	Keys []KeyVerdict
}

// OK reports whether the checker accepted the history: no violation and nothing undecided.
func (v Verdict) OK() bool { return len(v.Violations) == 0 && len(v.Inconclusive) == 0 }

// maxShown is how many violations String prints per checker.
const maxShown = 20

// String renders the verdict for a person: a first line with ok/FAIL and counts, then the
// first violations and what stayed undecided.
func (v Verdict) String() string {
	var b strings.Builder
	state := "ok"
	switch {
	case len(v.Violations) > 0:
		state = "FAIL"
	case len(v.Inconclusive) > 0:
		state = "INCONCLUSIVE"
	}
	fmt.Fprintf(&b, "%s: %s (%d checked, %d violations)", v.Checker, state, v.Checked, len(v.Violations))
	for i, x := range v.Violations {
		if i == maxShown {
			fmt.Fprintf(&b, "\n  … and %d more", len(v.Violations)-maxShown)
			break
		}
		fmt.Fprintf(&b, "\n  %s", x)
	}
	for _, s := range v.Inconclusive {
		fmt.Fprintf(&b, "\n  undecided: %s", s)
	}
	return b.String()
}

// Report is the verdicts of All, in a fixed order.
type Report struct {
	Verdicts []Verdict
}

// OK reports whether every checker accepted the history.
func (r Report) OK() bool {
	for _, v := range r.Verdicts {
		if !v.OK() {
			return false
		}
	}
	return true
}

// String renders every verdict.
func (r Report) String() string {
	parts := make([]string, len(r.Verdicts))
	for i, v := range r.Verdicts {
		parts[i] = v.String()
	}
	return strings.Join(parts, "\n")
}

// Violations returns every checker's violations.
func (r Report) Violations() []Violation {
	var all []Violation
	for _, v := range r.Verdicts {
		all = append(all, v.Violations...)
	}
	return all
}

// All runs every checker over h.
func All(h history.History, cfg Config) Report {
	if cfg.MaxStaleness == 0 {
		cfg.MaxStaleness = DefaultMaxStaleness
	}
	if cfg.KeyTimeout == 0 {
		cfg.KeyTimeout = DefaultKeyTimeout
	}
	return Report{Verdicts: []Verdict{
		Linearizable(h, cfg.KeyTimeout),
		SetComplete(h),
		TokenReads(h),
		PlainReads(h, cfg.MaxStaleness),
		CachedReads(h),
		ChangeStreams(h),
	}}
}

// regKey names one register: a tenant's record.
type regKey struct{ tenant, key string }

// acked returns every acknowledged write (ok Write, and ok Create with its record id) per
// register, in history order.
func acked(h history.History) map[regKey][]history.Op {
	m := make(map[regKey][]history.Op)
	for _, o := range h.Ops {
		if o.Outcome == history.OK && (o.Kind == history.Write || o.Kind == history.Create) {
			k := regKey{o.Tenant, o.Key()}
			m[k] = append(m[k], o)
		}
	}
	return m
}

func compareRegKeys(a, b regKey) int {
	return cmp.Or(cmp.Compare(a.tenant, b.tenant), cmp.Compare(a.key, b.key))
}
