package check

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// TokenReads checks that every ok read carrying the Consistency-Token of a write W returns a
// version at least W's (DESIGN.md §6, read-your-writes). A token of a write that did not
// succeed, or of another record, sets no floor and is not counted.
func TokenReads(h history.History) Verdict {
	v := Verdict{Checker: "token reads"}
	byID := h.ByID()
	for _, r := range h.Ops {
		if r.Kind != history.TokenRead || r.Outcome != history.OK {
			continue
		}
		w, ok := byID[r.TokenOf]
		if !ok || w.Outcome != history.OK || w.Tenant != r.Tenant || w.Key() != r.Key() {
			continue
		}
		v.Checked++
		if r.Version < w.Version {
			v.Violations = append(v.Violations, Violation{
				Kind: StaleTokenRead, Tenant: r.Tenant, Key: r.Key(), Ops: []history.Op{w, r},
				Detail: fmt.Sprintf("#%d carried the token of #%d (v%d) and returned v%d", r.ID, w.ID, w.Version, r.Version),
			})
		}
	}
	return v
}

// DueFunc says by when an acknowledged write must be visible to a kind of read; ok false
// means it sets no deadline.
type DueFunc func(w history.Op) (due time.Duration, ok bool)

// Bounded is the shape of the staleness checkers: an ok read of kind invoked at t that
// returns version v is stale if an acknowledged write to the same record with a version above
// v was due (due(w) < t) before the read began. The invocation, not the completion, is the
// reference: a read may be answered at any instant after it began, so only what was due by
// then is certain to be visible. The violation names the newest such write and the read.
func Bounded(h history.History, kind history.Kind, violation string, due DueFunc) Verdict {
	v := Verdict{Checker: strings.ReplaceAll(string(kind), "-", " ") + " staleness"}
	if kind == history.PlainRead {
		v.Checker = "plain read staleness"
	}
	type dueWrite struct {
		due time.Duration
		op  history.Op
	}
	// Per register: the writes sorted by due time, and for each prefix the index of the
	// write with the highest version.
	type index struct {
		writes []dueWrite
		best   []int
	}
	idx := make(map[regKey]*index)
	ackedWrites := acked(h)
	for _, k := range slices.SortedFunc(maps.Keys(ackedWrites), compareRegKeys) {
		x := &index{}
		for _, w := range ackedWrites[k] {
			if d, ok := due(w); ok {
				x.writes = append(x.writes, dueWrite{d, w})
			}
		}
		sort.SliceStable(x.writes, func(i, j int) bool { return x.writes[i].due < x.writes[j].due })
		x.best = make([]int, len(x.writes))
		for i := range x.writes {
			x.best[i] = i
			if i > 0 && x.writes[x.best[i-1]].op.Version >= x.writes[i].op.Version {
				x.best[i] = x.best[i-1]
			}
		}
		idx[k] = x
	}
	for _, r := range h.Ops {
		if r.Kind != kind || r.Outcome != history.OK {
			continue
		}
		v.Checked++
		x := idx[regKey{r.Tenant, r.Key()}]
		if x == nil {
			continue
		}
		n := sort.Search(len(x.writes), func(i int) bool { return x.writes[i].due >= r.Invoke })
		if n == 0 {
			continue
		}
		w := x.writes[x.best[n-1]]
		if w.op.Version > r.Version {
			v.Violations = append(v.Violations, Violation{
				Kind: violation, Tenant: r.Tenant, Key: r.Key(), Ops: []history.Op{w.op, r},
				Detail: fmt.Sprintf("#%d returned v%d, invoked at %v; #%d's v%d was due by %v", r.ID, r.Version, r.Invoke, w.op.ID, w.op.Version, w.due),
			})
		}
	}
	return v
}

// PlainReads checks plain reads against the staleness bound (DESIGN.md §6): an acknowledged
// write is due bound after its completion.
func PlainReads(h history.History, bound time.Duration) Verdict {
	return Bounded(h, history.PlainRead, StaleRead, func(w history.Op) (time.Duration, bool) {
		return w.Complete + bound, true
	})
}

// CachedReads checks cached reads against the time each write's invalidation was due
// (Op.Due, DESIGN.md §7); a write without a due time sets no deadline.
func CachedReads(h history.History) Verdict {
	return Bounded(h, history.CachedRead, StaleCachedRead, func(w history.Op) (time.Duration, bool) {
		return w.Due, w.Due > 0
	})
}
