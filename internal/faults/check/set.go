package check

import (
	"fmt"
	"maps"
	"slices"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// SetComplete checks every collection written by creates against its final read (the last ok
// SetRead of that tenant's collection, by invocation): an element acknowledged before the
// final read began appears exactly once, and at the record id its create answered; any other
// attempted element (unknown outcome, or acknowledged concurrently with the read) at most once;
// an element whose every attempt definitely failed never; nothing that was never attempted
// appears. Independently of any read, two ok attempts with one Idempotency-Key must answer one
// record. A collection with creates and no final read is a violation: its completeness is
// unproven.
func SetComplete(h history.History) Verdict {
	v := Verdict{Checker: "set completeness"}
	type collKey struct{ tenant, coll string }
	creates := make(map[collKey][]history.Op)
	finals := make(map[collKey]history.Op)
	for _, o := range h.Ops {
		k := collKey{o.Tenant, o.Coll}
		switch {
		case o.Kind == history.Create:
			creates[k] = append(creates[k], o)
		case o.Kind == history.SetRead && o.Outcome == history.OK:
			if f, ok := finals[k]; !ok || o.Invoke >= f.Invoke {
				finals[k] = o
			}
		}
	}
	colls := slices.SortedFunc(maps.Keys(creates), func(a, b collKey) int {
		return compareRegKeys(regKey{a.tenant, a.coll}, regKey{b.tenant, b.coll})
	})
	for _, k := range colls {
		ops := creates[k]
		v.Checked += len(ops)
		add := func(kind string, detail string, ops ...history.Op) {
			v.Violations = append(v.Violations, Violation{Kind: kind, Tenant: k.tenant, Key: k.coll, Ops: ops, Detail: detail})
		}

		// One Idempotency-Key, one record.
		byIdem := make(map[string][]history.Op)
		for _, o := range ops {
			if o.Outcome == history.OK {
				byIdem[o.IdemKey] = append(byIdem[o.IdemKey], o)
			}
		}
		for _, key := range slices.Sorted(maps.Keys(byIdem)) {
			oks := byIdem[key]
			for _, o := range oks[1:] {
				if o.Rec != oks[0].Rec {
					add(IdempotencySplit, fmt.Sprintf("Idempotency-Key %q answered two records, %s and %s", key, oks[0].Rec, o.Rec), oks[0], o)
					break
				}
			}
		}

		final, ok := finals[k]
		if !ok {
			add(NoFinalRead, fmt.Sprintf("%d creates and no final read of the collection: completeness unproven", len(ops)))
			continue
		}
		found := make(map[string][]history.Element)
		for _, e := range final.Elements {
			found[e.Value] = append(found[e.Value], e)
		}
		byElem := make(map[string][]history.Op)
		for _, o := range ops {
			byElem[o.Value] = append(byElem[o.Value], o)
		}
		for _, el := range slices.Sorted(maps.Keys(byElem)) {
			attempts := byElem[el]
			got := found[el]
			var ackedBefore, ackedAny *history.Op
			anyUnknown := false
			for i, o := range attempts {
				switch o.Outcome {
				case history.OK:
					if ackedAny == nil {
						ackedAny = &attempts[i]
					}
					if ackedBefore == nil && o.Complete < final.Invoke {
						ackedBefore = &attempts[i]
					}
				case history.Unknown:
					anyUnknown = true
				}
			}
			involved := append(slices.Clone(attempts), final)
			switch {
			case ackedBefore != nil && len(got) == 0:
				add(LostCreate, fmt.Sprintf("element %q was acknowledged as record %s and is missing from the final read", el, ackedBefore.Rec), involved...)
			case ackedBefore != nil && len(got) == 1 && got[0].Rec != ackedBefore.Rec:
				add(LostCreate, fmt.Sprintf("element %q was acknowledged as record %s but the final read has it as record %s", el, ackedBefore.Rec, got[0].Rec), involved...)
			case len(got) > 1:
				add(DuplicateCreate, fmt.Sprintf("element %q appears %d times in the final read (records %s)", el, len(got), recs(got)), involved...)
			case len(got) == 1 && ackedAny == nil && !anyUnknown:
				add(FailedCreateFound, fmt.Sprintf("element %q appears (record %s) though every attempt definitely failed", el, got[0].Rec), involved...)
			}
		}
		for _, el := range slices.Sorted(maps.Keys(found)) {
			if _, ok := byElem[el]; !ok {
				add(PhantomCreate, fmt.Sprintf("element %q (records %s) was never attempted", el, recs(found[el])), final)
			}
		}
	}
	return v
}

func recs(els []history.Element) string {
	s := ""
	for i, e := range els {
		if i > 0 {
			s += ", "
		}
		s += e.Rec
	}
	return s
}
