package check

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// b builds hand-made histories: each helper appends one operation with the next id.
type b struct{ ops []history.Op }

func (x *b) add(o history.Op) history.Op {
	o.ID = int64(len(x.ops) + 1)
	if o.Tenant == "" {
		o.Tenant = "acme"
	}
	if o.Kind != history.Create && o.Kind != history.SetRead && o.Kind != history.Changes && o.Coll == "" {
		o.Coll = "regs"
	}
	x.ops = append(x.ops, o)
	return o
}

func (x *b) write(p int, rec, val string, ifMatch, version int64, inv, comp int, out history.Outcome) history.Op {
	o := history.Op{Process: p, Kind: history.Write, Rec: rec, Value: val, IfMatch: ifMatch, Invoke: ms(inv), Complete: ms(comp), Outcome: out}
	switch out {
	case history.OK:
		o.Version, o.Status = version, 200
	case history.Fail:
		o.Status = 412
	}
	return x.add(o)
}

func (x *b) read(kind history.Kind, p int, rec, val string, version int64, inv, comp int) history.Op {
	return x.add(history.Op{Process: p, Kind: kind, Rec: rec, Value: val, Version: version, Invoke: ms(inv), Complete: ms(comp), Outcome: history.OK, Status: 200})
}

func (x *b) history(t *testing.T) history.History {
	t.Helper()
	h := history.History{Header: history.Header{Format: history.FormatV1}, Ops: x.ops}
	if err := h.Validate(); err != nil {
		t.Fatalf("test history is invalid: %v", err)
	}
	return h
}

// wantViolation checks that v holds exactly one violation, of kind, naming exactly the
// operations ids (in any order).
func wantViolation(t *testing.T, v Verdict, kind string, ids ...int64) {
	t.Helper()
	if len(v.Violations) != 1 {
		t.Fatalf("want one %s violation, got %d:\n%s", kind, len(v.Violations), v)
	}
	got := v.Violations[0]
	if got.Kind != kind {
		t.Fatalf("want a %s violation, got:\n%s", kind, v)
	}
	var gotIDs []int64
	for _, o := range got.Ops {
		gotIDs = append(gotIDs, o.ID)
	}
	slices.Sort(gotIDs)
	slices.Sort(ids)
	if !slices.Equal(gotIDs, ids) {
		t.Fatalf("violation names ops %v, want %v:\n%s", gotIDs, ids, v)
	}
	if v.OK() {
		t.Fatal("a verdict with a violation says OK")
	}
}

func wantOK(t *testing.T, v Verdict) {
	t.Helper()
	if !v.OK() {
		t.Fatalf("want ok:\n%s", v)
	}
}

const timeout = 10 * time.Second // generous: these histories are decided in microseconds

func TestLinearizableAcceptsConcurrentHistories(t *testing.T) {
	t.Run("read overlapping a write may see either value", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		x.write(0, "a", "y", 0, 2, 20, 40, history.OK)
		x.read(history.StrongRead, 1, "a", "x", 1, 25, 30)
		x.read(history.StrongRead, 2, "a", "y", 2, 26, 31)
		x.read(history.StrongRead, 1, "a", "y", 2, 41, 42)
		wantOK(t, Linearizable(x.history(t), timeout))
	})
	t.Run("unknown write that happened", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		x.write(1, "a", "y", 1, 0, 20, 30, history.Unknown)
		x.read(history.StrongRead, 2, "a", "y", 2, 100, 110)
		x.write(0, "a", "z", 2, 3, 120, 130, history.OK)
		wantOK(t, Linearizable(x.history(t), timeout))
	})
	t.Run("unknown write that did not happen", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		x.write(1, "a", "y", 0, 0, 20, 30, history.Unknown)
		x.read(history.StrongRead, 2, "a", "x", 1, 100, 110)
		x.write(0, "a", "z", 1, 2, 120, 130, history.OK)
		wantOK(t, Linearizable(x.history(t), timeout))
	})
	t.Run("refused compare-and-set and a read of no record", func(t *testing.T) {
		var x b
		x.read(history.StrongRead, 2, "a", "", 0, 0, 5)
		x.write(0, "a", "x", 0, 1, 10, 20, history.OK)
		x.write(1, "a", "y", 5, 0, 30, 40, history.Fail)
		x.write(1, "a", "z", 1, 2, 50, 60, history.OK)
		wantOK(t, Linearizable(x.history(t), timeout))
	})
	t.Run("a write failing for another reason is left out", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		f := x.write(1, "a", "y", 0, 0, 20, 30, history.Fail)
		x.ops[f.ID-1].Status = 503
		x.read(history.StrongRead, 2, "a", "x", 1, 100, 110)
		wantOK(t, Linearizable(x.history(t), timeout))
	})
}

func TestLinearizableRejects(t *testing.T) {
	t.Run("read of an old value after a newer write completed", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		w2 := x.write(0, "a", "y", 0, 2, 20, 30, history.OK)
		r := x.read(history.StrongRead, 1, "a", "x", 1, 40, 50)
		x.write(2, "b", "q", 0, 1, 0, 60, history.OK) // another register, fine
		v := Linearizable(x.history(t), timeout)
		wantViolation(t, v, NotLinearizable, r.ID, w2.ID)
		if len(v.Keys) != 2 || v.Keys[0].Result != KeyIllegal || v.Keys[1].Result != KeyOK {
			t.Fatalf("per-key verdicts %+v", v.Keys)
		}
	})
	t.Run("two compare-and-sets from the same version both succeed", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		c1 := x.write(1, "a", "y", 1, 2, 20, 40, history.OK)
		c2 := x.write(2, "a", "z", 1, 2, 25, 45, history.OK)
		wantViolation(t, Linearizable(x.history(t), timeout), NotLinearizable, c1.ID, c2.ID)
	})
	t.Run("a write that skips a version", func(t *testing.T) {
		var x b
		w1 := x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		w2 := x.write(0, "a", "y", 0, 3, 20, 30, history.OK)
		wantViolation(t, Linearizable(x.history(t), timeout), NotLinearizable, w1.ID, w2.ID)
	})
	t.Run("a read of a value nobody wrote", func(t *testing.T) {
		var x b
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
		w := x.write(1, "a", "y", 0, 0, 5, 15, history.Fail) // a 412-less failure: never happened
		x.ops[w.ID-1].Status = 422
		r := x.read(history.StrongRead, 2, "a", "y", 2, 20, 30)
		wantViolation(t, Linearizable(x.history(t), timeout), NotLinearizable, r.ID, 1)
	})
}

// TestLinearizableTimeout uses a model whose step blocks until porcupine gives up, so the
// only way the check ends is its budget: the key must be reported undecided, never ok.
func TestLinearizableTimeout(t *testing.T) {
	blocking := registerModel
	blocking.Step = nil
	blocking.StepContext = func(ctx context.Context, s, in, out any) (bool, any) {
		<-ctx.Done()
		return false, s
	}
	var x b
	x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
	res, _ := checkRegister(blocking, x.history(t).Ops, time.Millisecond)
	if res != KeyTimeout {
		t.Fatalf("result %s, want %s", res, KeyTimeout)
	}
}

func TestSetComplete(t *testing.T) {
	create := func(x *b, p int, el, key, rec string, inv, comp int, out history.Outcome) history.Op {
		o := history.Op{Process: p, Kind: history.Create, Coll: "set", Value: el, IdemKey: key, Invoke: ms(inv), Complete: ms(comp), Outcome: out}
		if out == history.OK {
			o.Rec, o.Version, o.Status = rec, 1, 201
		}
		return x.add(o)
	}
	final := func(x *b, inv int, els ...string) history.Op {
		o := history.Op{Process: 9, Kind: history.SetRead, Coll: "set", Invoke: ms(inv), Complete: ms(inv + 5), Outcome: history.OK, Status: 200}
		for i := 0; i+1 < len(els); i += 2 {
			o.Elements = append(o.Elements, history.Element{Rec: els[i], Value: els[i+1]})
		}
		return x.add(o)
	}
	t.Run("valid: retries, unknowns present and absent, concurrent ack", func(t *testing.T) {
		var x b
		create(&x, 0, "e1", "k1", "r1", 0, 10, history.OK)
		create(&x, 1, "e2", "k2", "", 0, 10, history.Unknown)
		create(&x, 1, "e2", "k2", "r2", 11, 20, history.OK) // the retry answers the first record
		create(&x, 2, "e3", "k3", "", 0, 10, history.Unknown)
		create(&x, 3, "e4", "k4", "", 0, 10, history.Unknown) // never happened
		create(&x, 4, "e5", "k5", "", 0, 10, history.Fail)
		create(&x, 5, "e6", "k6", "r6", 90, 200, history.OK) // acknowledged after the final read began
		final(&x, 100, "r1", "e1", "r2", "e2", "r3", "e3")
		wantOK(t, SetComplete(x.history(t)))
	})
	t.Run("lost acknowledged create", func(t *testing.T) {
		var x b
		c := create(&x, 0, "e1", "k1", "r1", 0, 10, history.OK)
		create(&x, 1, "e2", "k2", "r2", 0, 10, history.OK)
		f := final(&x, 100, "r2", "e2")
		wantViolation(t, SetComplete(x.history(t)), LostCreate, c.ID, f.ID)
	})
	t.Run("duplicated create after a retry", func(t *testing.T) {
		var x b
		c1 := create(&x, 0, "e1", "k1", "", 0, 10, history.Unknown)
		c2 := create(&x, 0, "e1", "k1", "r1", 11, 20, history.OK)
		f := final(&x, 100, "r1", "e1", "r9", "e1")
		wantViolation(t, SetComplete(x.history(t)), DuplicateCreate, c1.ID, c2.ID, f.ID)
	})
	t.Run("one key answering two records", func(t *testing.T) {
		var x b
		c1 := create(&x, 0, "e1", "k1", "r1", 0, 10, history.OK)
		c2 := create(&x, 0, "e1", "k1", "r2", 11, 20, history.OK)
		v := SetComplete(x.history(t))
		x2 := b{ops: slices.Clone(x.ops)}
		final(&x2, 100, "r1", "e1")
		wantViolation(t, SetComplete(x2.history(t)), IdempotencySplit, c1.ID, c2.ID)
		if len(v.Violations) != 2 || v.Violations[0].Kind != IdempotencySplit || v.Violations[1].Kind != NoFinalRead {
			t.Fatalf("without a final read:\n%s", v)
		}
	})
	t.Run("definitely failed create present", func(t *testing.T) {
		var x b
		c := create(&x, 0, "e1", "k1", "", 0, 10, history.Fail)
		f := final(&x, 100, "r1", "e1")
		wantViolation(t, SetComplete(x.history(t)), FailedCreateFound, c.ID, f.ID)
	})
	t.Run("element never attempted", func(t *testing.T) {
		var x b
		create(&x, 0, "e1", "k1", "r1", 0, 10, history.OK)
		f := final(&x, 100, "r1", "e1", "r7", "zz")
		wantViolation(t, SetComplete(x.history(t)), PhantomCreate, f.ID)
	})
	t.Run("unknown create at most once", func(t *testing.T) {
		var x b
		c := create(&x, 0, "e1", "k1", "", 0, 10, history.Unknown)
		f := final(&x, 100, "r1", "e1", "r2", "e1")
		wantViolation(t, SetComplete(x.history(t)), DuplicateCreate, c.ID, f.ID)
	})
}

func TestTokenReads(t *testing.T) {
	var x b
	w1 := x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
	w2 := x.write(0, "a", "y", 0, 2, 20, 30, history.OK)
	x.add(history.Op{Process: 1, Kind: history.TokenRead, Rec: "a", Value: "x", Version: 1, TokenOf: w1.ID, Invoke: ms(31), Complete: ms(32), Outcome: history.OK})
	x.add(history.Op{Process: 1, Kind: history.TokenRead, Rec: "a", Value: "y", Version: 2, TokenOf: w1.ID, Invoke: ms(31), Complete: ms(32), Outcome: history.OK})
	wantOK(t, TokenReads(x.history(t)))
	stale := x.add(history.Op{Process: 2, Kind: history.TokenRead, Rec: "a", Value: "x", Version: 1, TokenOf: w2.ID, Invoke: ms(31), Complete: ms(32), Outcome: history.OK})
	v := TokenReads(x.history(t))
	wantViolation(t, v, StaleTokenRead, w2.ID, stale.ID)
	if v.Checked != 3 {
		t.Fatalf("checked %d token reads, want 3", v.Checked)
	}
}

func TestPlainReadsStaleness(t *testing.T) {
	const bound = 5 * time.Second
	var x b
	x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
	w2 := x.write(0, "a", "y", 0, 2, 20, 30, history.OK)
	x.write(0, "a", "z", 0, 0, 40, 50, history.Unknown) // unknown: sets no floor
	// Just inside the bound: w2 completed at 30 ms, due at 5.03 s; a read invoked then may miss it.
	x.read(history.PlainRead, 1, "a", "x", 1, 5030, 9000)
	x.read(history.PlainRead, 1, "a", "", 0, 100, 200) // invoked before anything was due
	x.read(history.PlainRead, 1, "a", "y", 2, 6000, 6001)
	wantOK(t, PlainReads(x.history(t), bound))
	stale := x.read(history.PlainRead, 2, "a", "x", 1, 5031, 5032)
	wantViolation(t, PlainReads(x.history(t), bound), StaleRead, w2.ID, stale.ID)
	// A larger bound accepts the same read.
	wantOK(t, PlainReads(x.history(t), 6*time.Second))
	// Strong and token reads are not judged by it.
	x2 := b{}
	x2.write(0, "a", "x", 0, 1, 0, 10, history.OK)
	x2.write(0, "a", "y", 0, 2, 20, 30, history.OK)
	x2.read(history.StrongRead, 1, "a", "x", 1, 9000, 9001)
	wantOK(t, PlainReads(x2.history(t), bound))
}

func TestCachedReads(t *testing.T) {
	var x b
	w1 := x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
	x.ops[w1.ID-1].Due = ms(100)
	w2 := x.write(0, "a", "y", 0, 2, 20, 30, history.OK)
	x.ops[w2.ID-1].Due = ms(200)
	w2 = x.ops[w2.ID-1]
	x.write(0, "a", "z", 0, 3, 40, 50, history.OK) // no due time recorded: no deadline
	x.read(history.CachedRead, 1, "a", "x", 1, 150, 160)
	x.read(history.CachedRead, 1, "a", "y", 2, 9000, 9001)
	wantOK(t, CachedReads(x.history(t)))
	stale := x.read(history.CachedRead, 1, "a", "x", 1, 201, 202)
	wantViolation(t, CachedReads(x.history(t)), StaleCachedRead, w2.ID, stale.ID)
}

func TestChangeStreams(t *testing.T) {
	ev := func(seq int64, rec string, version int64) history.Event {
		return history.Event{Seq: seq, Coll: "regs", Rec: rec, Op: "put", Version: version}
	}
	base := func() *b {
		x := &b{}
		x.write(0, "a", "x", 0, 1, 0, 10, history.OK)       // #1
		x.write(0, "a", "y", 0, 2, 20, 30, history.OK)      // #2
		x.write(1, "b", "q", 0, 0, 20, 30, history.Unknown) // #3 happened
		x.write(1, "c", "q", 0, 0, 40, 50, history.Unknown) // #4 did not
		x.write(0, "a", "z", 0, 3, 60, 70, history.OK)      // #5
		return x
	}
	reader := func(x *b, from int64, evs ...history.Event) history.Op {
		return x.add(history.Op{Process: 7, Region: "eu-west", Kind: history.Changes, From: from, Events: evs, Invoke: 0, Complete: ms(1000), Outcome: history.OK})
	}
	t.Run("complete and ordered", func(t *testing.T) {
		x := base()
		reader(x, 0, ev(1, "a", 1), ev(2, "b", 1), ev(3, "a", 2), ev(4, "a", 3))
		reader(x, 2, ev(3, "a", 2), ev(4, "a", 3)) // resumed after 2
		wantOK(t, ChangeStreams(x.history(t)))
	})
	t.Run("gap", func(t *testing.T) {
		x := base()
		r := reader(x, 0, ev(1, "a", 1), ev(2, "a", 2), ev(4, "a", 3))
		wantViolation(t, ChangeStreams(x.history(t)), ChangesGap, r.ID)
	})
	t.Run("repeat", func(t *testing.T) {
		x := base()
		r := reader(x, 0, ev(1, "a", 1), ev(2, "a", 2), ev(2, "a", 2), ev(3, "a", 3))
		v := ChangeStreams(x.history(t))
		if len(v.Violations) != 2 || v.Violations[0].Kind != ChangesRepeat || v.Violations[1].Kind != ChangesRepeat {
			t.Fatalf("want the sequence repeat and the write delivered twice:\n%s", v)
		}
		for _, viol := range v.Violations {
			if len(viol.Ops) != 1 || viol.Ops[0].ID != r.ID {
				t.Fatalf("violation names %v", viol.Ops)
			}
		}
	})
	t.Run("missing acknowledged write", func(t *testing.T) {
		x := base()
		r := reader(x, 0, ev(1, "a", 1), ev(2, "a", 3))
		// a/v2 (#2) is missing, and the stream's a/v3 is fine.
		wantViolation(t, ChangeStreams(x.history(t)), ChangesMissing, 2, r.ID)
	})
	t.Run("out of commit order", func(t *testing.T) {
		x := base()
		r := reader(x, 0, ev(1, "a", 2), ev(2, "a", 1), ev(3, "a", 3))
		v := ChangeStreams(x.history(t))
		if len(v.Violations) != 2 || v.Violations[0].Kind != ChangesOrder || v.Violations[1].Kind != ChangesOrder {
			t.Fatalf("want version order and real-time order violations:\n%s", v)
		}
		if ids := v.Violations[1].Ops; len(ids) != 3 || ids[0].ID != 1 || ids[1].ID != 2 || ids[2].ID != r.ID {
			t.Fatalf("real-time order violation names %v", ids)
		}
	})
	t.Run("phantom", func(t *testing.T) {
		x := base()
		r := reader(x, 0, ev(1, "a", 1), ev(2, "a", 2), ev(3, "zz", 1), ev(4, "a", 3))
		wantViolation(t, ChangeStreams(x.history(t)), ChangesPhantom, r.ID)
	})
	t.Run("incomplete reader is not held to completeness", func(t *testing.T) {
		x := base()
		r := reader(x, 0, ev(1, "a", 1))
		x.ops[r.ID-1].Outcome = history.Unknown
		wantOK(t, ChangeStreams(x.history(t)))
		x.ops[r.ID-1].Outcome = history.OK
		x.ops[r.ID-1].Due = ms(15) // caught up by 15 ms: only #1 was due
		wantOK(t, ChangeStreams(x.history(t)))
	})
	t.Run("a retried create began with its first attempt", func(t *testing.T) {
		// Found by TestSimulatedHistoriesPass: e1's first attempt committed (seq 1) and timed
		// out; e2 was created meanwhile; e1's retry, begun after e2 completed, was answered by
		// the first attempt's record. Its event legitimately precedes e2's.
		x := &b{}
		mk := func(el, key, rec string, inv, comp int, out history.Outcome) {
			o := history.Op{Process: 1, Kind: history.Create, Coll: "set", Value: el, IdemKey: key, Invoke: ms(inv), Complete: ms(comp), Outcome: out}
			if out == history.OK {
				o.Rec, o.Version = rec, 1
			}
			x.add(o)
		}
		mk("e1", "k1", "", 0, 10, history.Unknown)
		mk("e2", "k2", "r2", 11, 12, history.OK)
		mk("e1", "k1", "r1", 20, 30, history.OK)
		set := func(seq int64, rec string) history.Event {
			return history.Event{Seq: seq, Coll: "set", Rec: rec, Op: "create", Version: 1}
		}
		reader(x, 0, set(1, "r1"), set(2, "r2"))
		wantOK(t, ChangeStreams(x.history(t)))
	})
	t.Run("create of unknown outcome explains one version-1 event", func(t *testing.T) {
		x := base()
		x.add(history.Op{Process: 3, Kind: history.Create, Coll: "set", Value: "e1", IdemKey: "k1", Invoke: ms(0), Complete: ms(5), Outcome: history.Unknown})
		set := func(seq int64, rec string) history.Event {
			return history.Event{Seq: seq, Coll: "set", Rec: rec, Op: "create", Version: 1}
		}
		reader(x, 0, ev(1, "a", 1), set(2, "u1"), ev(3, "a", 2), ev(4, "a", 3))
		wantOK(t, ChangeStreams(x.history(t)))
		r := reader(x, 0, ev(1, "a", 1), set(2, "u1"), set(3, "u2"), ev(4, "a", 2), ev(5, "a", 3))
		v := ChangeStreams(x.history(t))
		if len(v.Violations) != 1 || v.Violations[0].Kind != ChangesPhantom || v.Violations[0].Ops[0].ID != r.ID {
			t.Fatalf("want one phantom in the second reader:\n%s", v)
		}
	})
}

func TestAllAndSummary(t *testing.T) {
	var x b
	x.write(0, "a", "x", 0, 1, 0, 10, history.OK)
	w2 := x.write(0, "a", "y", 0, 2, 20, 30, history.OK)
	x.read(history.StrongRead, 1, "a", "x", 1, 40, 50)
	x.read(history.PlainRead, 1, "a", "x", 1, 6000, 6001)
	x.add(history.Op{Process: 2, Kind: history.TokenRead, Rec: "a", Value: "x", Version: 1, TokenOf: w2.ID, Invoke: ms(31), Complete: ms(32), Outcome: history.OK})
	x.add(history.Op{Process: 3, Kind: history.Create, Coll: "set", Value: "e1", IdemKey: "k1", Rec: "r1", Version: 1, Invoke: ms(0), Complete: ms(5), Outcome: history.OK})
	x.add(history.Op{Process: 3, Kind: history.SetRead, Coll: "set", Invoke: ms(100), Complete: ms(101), Outcome: history.OK})
	x.add(history.Op{Process: 4, Kind: history.Write, Coll: "regs", Rec: "b", Value: "v", Invoke: ms(0), Complete: ms(1), Outcome: history.Unknown})
	h := x.history(t)
	r := All(h, Config{})
	if r.OK() {
		t.Fatal("All accepted a broken history")
	}
	s := Summarize(h, r, []string{"kill api us-east at 3s"})
	if s.Operations != 8 || s.Acknowledged != 7 || s.Unknown != 1 || s.Lost != 1 ||
		s.StaleReads[history.PlainRead] != 1 || s.StaleReads[history.TokenRead] != 1 || s.Violations != 4 {
		t.Fatalf("summary %+v\n%s", s, r)
	}
	var md, txt strings.Builder
	if err := s.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := s.Text(&txt); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| lost acknowledged creates | 1 |", "| acme | regs/a | 3 | illegal |", "| acme | regs/b | 1 | ok |", "kill api us-east at 3s"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md.String())
		}
	}
	for _, want := range []string{"stale plain reads", "register acme regs/a (3 operations): illegal"} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("Text lacks %q:\n%s", want, txt.String())
		}
	}
	if strings.Contains(txt.String(), "regs/b") {
		t.Errorf("Text lists an ok register:\n%s", txt.String())
	}
	if !strings.Contains(r.String(), "#3 p1 acme strong-read regs/a") {
		t.Errorf("the report does not name the stale strong read:\n%s", r)
	}
}

// TestSummaryOfCachesAndChanges: the table counts cached reads, stale ones, the change-stream
// readers (ok and all), their events and the change-stream verdict.
func TestSummaryOfCachesAndChanges(t *testing.T) {
	var x b
	x.add(history.Op{Process: 0, Kind: history.Write, Rec: "a", Value: "x", Version: 1, Invoke: ms(0), Complete: ms(10), Due: ms(1010), Outcome: history.OK})
	x.add(history.Op{Process: 0, Kind: history.Write, Rec: "a", Value: "y", Version: 2, Invoke: ms(20), Complete: ms(30), Due: ms(1030), Outcome: history.OK})
	x.read(history.CachedRead, 1, "a", "x", 1, 500, 501)   // before v2 was due: fine
	x.read(history.CachedRead, 1, "a", "x", 1, 1100, 1101) // after: stale
	x.add(history.Op{Process: 2, Kind: history.Changes, Invoke: ms(0), Complete: ms(2000), Due: ms(1500), Outcome: history.OK,
		Events: []history.Event{{Seq: 1, Coll: "regs", Rec: "a", Op: "upsert", Version: 1}}})
	x.add(history.Op{Process: 3, Kind: history.Changes, Invoke: ms(0), Complete: ms(2000), Outcome: history.Unknown, Status: 503, Problem: "changes-unavailable"})
	h := x.history(t)
	r := All(h, Config{})
	s := Summarize(h, r, nil)
	if s.CachedReads != 2 || s.StaleReads[history.CachedRead] != 1 || s.ChangeReaders != 2 || s.ChangeReadersOK != 1 ||
		s.ChangeEvents != 1 || s.ChangeStream[ChangesMissing] != 1 || s.ChangesVerdict != "FAIL" {
		t.Fatalf("summary %+v\n%s", s, r)
	}
	var txt strings.Builder
	_ = s.Text(&txt)
	for _, want := range []string{"stale cached reads", "change-stream readers ok / all", "1 / 2", "change streams", "FAIL"} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("Text lacks %q:\n%s", want, txt.String())
		}
	}
	if s := Summarize(history.History{}, All(history.History{}, Config{}), nil); s.ChangesVerdict != "not run" {
		t.Errorf("no readers: verdict %q", s.ChangesVerdict)
	}
	// Without the missing write the checker accepts, yet one reader did not end ok.
	h.Ops = slices.DeleteFunc(h.Ops, func(o history.Op) bool { return o.Kind == history.Write && o.Version == 2 })
	if s := Summarize(h, All(h, Config{}), nil); s.ChangesVerdict != "unproven (1 of 2 readers did not end ok)" {
		t.Errorf("a reader not ok: verdict %q", s.ChangesVerdict)
	}
}
