package check

import (
	"fmt"
	"sort"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// eventKey names one committed write as a change event does.
type eventKey struct {
	coll, rec string
	version   int64
}

// ChangeStreams checks every `/v1/changes` reader (one Changes op per reader, reconnects
// included) of a tenant (DESIGN.md §4 and §7):
//
//   - sequences start right after From and go up by exactly one: a jump is a gap, a sequence
//     not above the previous one is a repeat;
//   - no write (collection, record, version) is delivered twice;
//   - every event is a write that was attempted and did not definitely fail (a record of an
//     attempted Write, of an ok Create, or a set read's record of an attempted element; an
//     event of version 1 of an unnamed record only while creates of unknown outcome in its
//     collection remain to explain it);
//   - commit order: two acknowledged writes of which one completed before the other began are
//     delivered in that order (a create begins with its first attempt under its
//     Idempotency-Key, since a retry may be answered by what an earlier attempt committed), and
//     a record's versions increase along the stream;
//   - complete: a reader that started from the beginning (From 0) and ended ok has received
//     every write acknowledged before it was due to have caught up (Op.Due, else Complete).
//
// Writes of unknown outcome may appear or not.
func ChangeStreams(h history.History) Verdict {
	v := Verdict{Checker: "change streams"}
	type tenantInfo struct {
		acked        map[eventKey]history.Op
		ackedOrder   []history.Op
		attempted    map[[2]string]bool
		unknownElems map[string]int // per collection
	}
	tenants := make(map[string]*tenantInfo)
	get := func(t string) *tenantInfo {
		x := tenants[t]
		if x == nil {
			x = &tenantInfo{acked: make(map[eventKey]history.Op), attempted: make(map[[2]string]bool), unknownElems: make(map[string]int)}
			tenants[t] = x
		}
		return x
	}
	// A create's retry may be answered by a record an earlier attempt committed, so a create
	// began when its first attempt under that Idempotency-Key did.
	type idemKey struct{ tenant, coll, key string }
	began := make(map[idemKey]time.Duration)
	for _, o := range h.Ops {
		if o.Kind == history.Create {
			k := idemKey{o.Tenant, o.Coll, o.IdemKey}
			if b, ok := began[k]; !ok || o.Invoke < b {
				began[k] = o.Invoke
			}
		}
	}
	invoked := func(o history.Op) time.Duration {
		if o.Kind == history.Create {
			return began[idemKey{o.Tenant, o.Coll, o.IdemKey}]
		}
		return o.Invoke
	}
	type elemKey struct{ tenant, coll, value string }
	elemAcked := make(map[elemKey]bool)
	elemTried := make(map[elemKey]bool)
	for _, o := range h.Ops {
		switch {
		case o.Kind == history.Write && o.Outcome != history.Fail, o.Kind == history.Create && o.Rec != "":
			x := get(o.Tenant)
			x.attempted[[2]string{o.Coll, o.Rec}] = true
			if o.Outcome == history.OK {
				x.acked[eventKey{o.Coll, o.Rec, o.Version}] = o
				x.ackedOrder = append(x.ackedOrder, o)
			}
		}
		if o.Kind == history.Create && o.Outcome != history.Fail {
			k := elemKey{o.Tenant, o.Coll, o.Value}
			elemTried[k] = true
			elemAcked[k] = elemAcked[k] || o.Outcome == history.OK
		}
	}
	for k := range elemTried {
		if !elemAcked[k] {
			get(k.tenant).unknownElems[k.coll]++
		}
	}
	for _, o := range h.Ops {
		if o.Kind != history.SetRead || o.Outcome != history.OK {
			continue
		}
		for _, e := range o.Elements {
			if elemTried[elemKey{o.Tenant, o.Coll, e.Value}] {
				get(o.Tenant).attempted[[2]string{o.Coll, e.Rec}] = true
			}
		}
	}

	for _, r := range h.Ops {
		if r.Kind != history.Changes {
			continue
		}
		x := get(r.Tenant)
		add := func(kind, detail string, ops ...history.Op) {
			v.Violations = append(v.Violations, Violation{Kind: kind, Tenant: r.Tenant, Ops: append(ops, r), Detail: detail})
		}
		v.Checked += len(r.Events)
		budget := make(map[string]int, len(x.unknownElems))
		for c, n := range x.unknownElems {
			budget[c] = n
		}
		next := r.From + 1
		seqOf := make(map[eventKey]int64, len(r.Events))
		lastVersion := make(map[[2]string]history.Event)
		for _, e := range r.Events {
			switch {
			case e.Seq > next:
				add(ChangesGap, fmt.Sprintf("reader #%d received seq %d where %d was next: %d event(s) skipped", r.ID, e.Seq, next, e.Seq-next))
				next = e.Seq + 1
			case e.Seq < next:
				add(ChangesRepeat, fmt.Sprintf("reader #%d received seq %d again after %d", r.ID, e.Seq, next-1))
			default:
				next++
			}
			k := eventKey{e.Coll, e.Rec, e.Version}
			if s, dup := seqOf[k]; dup {
				add(ChangesRepeat, fmt.Sprintf("reader #%d received %s/%s v%d twice, at seq %d and %d", r.ID, e.Coll, e.Rec, e.Version, s, e.Seq))
				continue
			}
			seqOf[k] = e.Seq
			rk := [2]string{e.Coll, e.Rec}
			if prev, ok := lastVersion[rk]; ok && prev.Version > e.Version {
				add(ChangesOrder, fmt.Sprintf("reader #%d received %s/%s v%d (seq %d) after v%d (seq %d)", r.ID, e.Coll, e.Rec, e.Version, e.Seq, prev.Version, prev.Seq))
			}
			lastVersion[rk] = e
			if _, ok := x.acked[k]; ok || x.attempted[rk] {
				continue
			}
			if e.Version == 1 && budget[e.Coll] > 0 {
				budget[e.Coll]-- // the create of an element whose outcome is unknown
				continue
			}
			add(ChangesPhantom, fmt.Sprintf("reader #%d received seq %d, %s/%s v%d, a write never attempted", r.ID, e.Seq, e.Coll, e.Rec, e.Version))
		}

		// Commit order against real time.
		type placed struct {
			op      history.Op
			seq     int64
			invoked time.Duration
		}
		var ps []placed
		for _, w := range x.ackedOrder {
			if s, ok := seqOf[eventKey{w.Coll, w.Rec, w.Version}]; ok {
				ps = append(ps, placed{w, s, invoked(w)})
			}
		}
		byComplete := append([]placed(nil), ps...)
		sort.SliceStable(byComplete, func(i, j int) bool { return byComplete[i].op.Complete < byComplete[j].op.Complete })
		byInvoke := append([]placed(nil), ps...)
		sort.SliceStable(byInvoke, func(i, j int) bool { return byInvoke[i].invoked < byInvoke[j].invoked })
		var latest *placed
		i := 0
		for _, w2 := range byInvoke {
			for ; i < len(byComplete) && byComplete[i].op.Complete < w2.invoked; i++ {
				if latest == nil || byComplete[i].seq > latest.seq {
					latest = &byComplete[i]
				}
			}
			if latest != nil && latest.seq > w2.seq {
				add(ChangesOrder, fmt.Sprintf("reader #%d received #%d at seq %d before #%d at seq %d, though #%d completed before #%d began", r.ID, w2.op.ID, w2.seq, latest.op.ID, latest.seq, latest.op.ID, w2.op.ID), latest.op, w2.op)
			}
		}

		// Completeness.
		if r.From != 0 || r.Outcome != history.OK {
			continue
		}
		deadline := r.Due
		if deadline == 0 {
			deadline = r.Complete
		}
		for _, w := range x.ackedOrder {
			if w.Complete >= deadline {
				continue
			}
			if _, ok := seqOf[eventKey{w.Coll, w.Rec, w.Version}]; !ok {
				add(ChangesMissing, fmt.Sprintf("reader #%d never received #%d's %s v%d, acknowledged at %v", r.ID, w.ID, w.Key(), w.Version, w.Complete), w)
			}
		}
	}
	return v
}
