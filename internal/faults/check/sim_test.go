package check

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// The property tests generate valid histories from a sequential simulation — every operation
// takes effect at one instant (its point) inside a random window [invoke, complete] — and
// check that every checker accepts them; then they break one operation and check that the
// right checker rejects it, naming that operation.

const simBound = 50 * time.Millisecond // the plain-read bound of simulated histories

// change is one state of a register: the version and value it took at point.
type change struct {
	point   time.Duration
	value   string
	version int64
}

type simulation struct {
	rnd     *rand.Rand
	x       b
	now     time.Duration
	states  map[regKey][]change
	points  map[int64]time.Duration // op id → point, for acknowledged writes
	seq     map[string]int64
	events  map[string][]history.Event
	members map[[2]string][]history.Element // tenant, collection → records
	elems   int
}

var (
	simTenants = []string{"acme", "globex"}
	simRecs    = []string{"a", "b", "c"}
)

func newSimulation(seed uint64) *simulation {
	return &simulation{
		rnd:     rand.New(rand.NewPCG(seed, 0x5eed)),
		states:  make(map[regKey][]change),
		points:  make(map[int64]time.Duration),
		seq:     make(map[string]int64),
		events:  make(map[string][]history.Event),
		members: make(map[[2]string][]history.Element),
	}
}

func (s *simulation) dur(maxMS int) time.Duration {
	return time.Duration(s.rnd.IntN(maxMS*1000+1)) * time.Microsecond
}

// window returns an invocation and completion around the point p.
func (s *simulation) window(p time.Duration) (time.Duration, time.Duration) {
	return max(0, p-s.dur(5)), p + s.dur(5)
}

func (s *simulation) current(k regKey) change {
	cs := s.states[k]
	if len(cs) == 0 {
		return change{}
	}
	return cs[len(cs)-1]
}

// at returns the register's state at time q.
func (s *simulation) at(k regKey, q time.Duration) change {
	c := change{}
	for _, x := range s.states[k] {
		if x.point > q {
			break
		}
		c = x
	}
	return c
}

func (s *simulation) commit(tenant, coll, rec string, version int64, op string) {
	s.seq[tenant]++
	s.events[tenant] = append(s.events[tenant], history.Event{Seq: s.seq[tenant], Coll: coll, Rec: rec, Op: op, Version: version})
}

func (s *simulation) run(steps int) history.History {
	for range steps {
		s.now += time.Millisecond + s.dur(2)
		tenant := simTenants[s.rnd.IntN(len(simTenants))]
		rec := simRecs[s.rnd.IntN(len(simRecs))]
		k := regKey{tenant, "regs/" + rec}
		switch n := s.rnd.IntN(100); {
		case n < 30:
			s.write(tenant, rec, k)
		case n < 45:
			s.read(history.StrongRead, tenant, rec, k, s.now)
		case n < 60:
			s.boundedRead(history.PlainRead, tenant, rec, k, func(w history.Op) time.Duration { return w.Complete + simBound })
		case n < 70:
			s.boundedRead(history.CachedRead, tenant, rec, k, func(w history.Op) time.Duration { return w.Due })
		case n < 80:
			s.tokenRead(tenant, rec, k)
		default:
			s.create(tenant)
		}
	}
	end := s.now + time.Second
	for _, t := range simTenants {
		coll := [2]string{t, "set"}
		s.x.add(history.Op{Process: 20, Tenant: t, Kind: history.SetRead, Coll: "set", Elements: slices.Clone(s.members[coll]), Invoke: end, Complete: end + time.Millisecond, Outcome: history.OK, Status: 200})
		evs := s.events[t]
		s.x.add(history.Op{Process: 21, Tenant: t, Region: "us-west", Kind: history.Changes, Events: slices.Clone(evs), Invoke: 0, Complete: end, Outcome: history.OK, Status: 200})
		if len(evs) > 2 {
			from := int64(s.rnd.IntN(len(evs) - 1))
			s.x.add(history.Op{Process: 22, Tenant: t, Region: "eu-west", Kind: history.Changes, From: from, Events: slices.Clone(evs[from:]), Invoke: 0, Complete: end, Outcome: history.OK, Status: 200})
		}
	}
	return history.History{Header: history.Header{Format: history.FormatV1}, Ops: s.x.ops}
}

func (s *simulation) write(tenant, rec string, k regKey) {
	cur := s.current(k)
	inv, comp := s.window(s.now)
	o := history.Op{Process: s.rnd.IntN(8), Tenant: tenant, Kind: history.Write, Coll: "regs", Rec: rec, Value: fmt.Sprintf("v%d", s.rnd.IntN(4)), Invoke: inv, Complete: comp}
	if cur.version > 0 && s.rnd.IntN(2) == 0 {
		o.IfMatch = cur.version
	}
	apply := true
	switch n := s.rnd.IntN(100); {
	case n < 75:
		o.Outcome, o.Status = history.OK, 200
	case n < 85:
		o.Outcome, o.Complete = history.Unknown, comp+s.dur(20) // happened; the client gave up
	case n < 92:
		o.Outcome, o.Complete, apply = history.Unknown, comp+s.dur(20), false // never arrived
	default:
		o.IfMatch = cur.version + 1 + int64(s.rnd.IntN(3)) // a stale expectation: refused
		o.Outcome, o.Status, o.Problem, apply = history.Fail, 412, "precondition-failed", false
	}
	if apply {
		next := change{point: s.now, value: o.Value, version: cur.version + 1}
		s.states[k] = append(s.states[k], next)
		s.commit(tenant, "regs", rec, next.version, "put")
		if o.Outcome == history.OK {
			o.Version = next.version
			o.Due = o.Complete + s.dur(30)
		}
	}
	w := s.x.add(o)
	if apply && o.Outcome == history.OK {
		s.points[w.ID] = s.now
	}
}

func (s *simulation) read(kind history.Kind, tenant, rec string, k regKey, q time.Duration) history.Op {
	inv, comp := s.window(s.now)
	return s.readAt(kind, tenant, rec, k, q, inv, comp)
}

func (s *simulation) readAt(kind history.Kind, tenant, rec string, k regKey, q, inv, comp time.Duration) history.Op {
	c := s.at(k, q)
	return s.x.add(history.Op{Process: s.rnd.IntN(8), Tenant: tenant, Kind: kind, Coll: "regs", Rec: rec, Value: c.value, Version: c.version, Invoke: inv, Complete: comp, Outcome: history.OK, Status: 200})
}

// boundedRead returns the state at a random time no earlier than the last point of a write
// due before the read began.
func (s *simulation) boundedRead(kind history.Kind, tenant, rec string, k regKey, due func(history.Op) time.Duration) {
	inv, comp := s.window(s.now)
	lo := time.Duration(0)
	for _, w := range s.x.ops {
		if w.Kind == history.Write && w.Outcome == history.OK && w.Tenant == tenant && w.Rec == rec && due(w) < inv {
			lo = max(lo, s.points[w.ID])
		}
	}
	q := lo + time.Duration(s.rnd.Int64N(int64(s.now-lo)+1))
	s.readAt(kind, tenant, rec, k, q, inv, comp)
}

func (s *simulation) tokenRead(tenant, rec string, k regKey) {
	inv, comp := s.window(s.now)
	var tokens []history.Op
	for _, w := range s.x.ops {
		if w.Kind == history.Write && w.Outcome == history.OK && w.Tenant == tenant && w.Rec == rec && w.Complete < inv {
			tokens = append(tokens, w)
		}
	}
	if len(tokens) == 0 {
		s.readAt(history.StrongRead, tenant, rec, k, s.now, inv, comp)
		return
	}
	w := tokens[s.rnd.IntN(len(tokens))]
	p := s.points[w.ID]
	q := p + time.Duration(s.rnd.Int64N(int64(s.now-p)+1))
	o := s.readAt(history.TokenRead, tenant, rec, k, q, inv, comp)
	s.x.ops[o.ID-1].TokenOf = w.ID
}

// create adds an element, with retries of unknown outcomes under the same key.
func (s *simulation) create(tenant string) {
	s.elems++
	el, key, rec := fmt.Sprintf("e%d", s.elems), fmt.Sprintf("k%d", s.elems), fmt.Sprintf("r%d", s.elems)
	base := history.Op{Process: s.rnd.IntN(8), Tenant: tenant, Kind: history.Create, Coll: "set", Value: el, IdemKey: key}
	inv, comp := s.window(s.now)
	applied := false
	apply := func() {
		if !applied {
			applied = true
			s.members[[2]string{tenant, "set"}] = append(s.members[[2]string{tenant, "set"}], history.Element{Rec: rec, Value: el})
			s.commit(tenant, "set", rec, 1, "create")
		}
	}
	for attempt := 0; ; attempt++ {
		o := base
		o.Invoke, o.Complete = inv, comp
		switch n := s.rnd.IntN(100); {
		case n < 60 || attempt == 3:
			apply()
			o.Outcome, o.Status, o.Rec, o.Version = history.OK, 201, rec, 1
			s.x.add(o)
			return
		case n < 75:
			apply()
			o.Outcome = history.Unknown
		case n < 90:
			o.Outcome = history.Unknown
		default:
			if applied {
				continue // a retry of an applied create is answered by its record, never refused
			}
			o.Outcome, o.Status, o.Problem = history.Fail, 429, "rate-limited"
			s.x.add(o)
			return
		}
		s.x.add(o)
		if s.rnd.IntN(3) == 0 {
			return // the client gives up
		}
		inv, comp = comp+time.Millisecond, comp+time.Millisecond+s.dur(5)
	}
}

func simulate(seed uint64) history.History { return newSimulation(seed).run(300) }

func simConfig() Config { return Config{MaxStaleness: simBound, KeyTimeout: time.Minute} }

func TestSimulatedHistoriesPass(t *testing.T) {
	kinds := make(map[history.Kind]int)
	outcomes := make(map[history.Outcome]int)
	for seed := range uint64(40) {
		h := simulate(seed)
		if err := h.Validate(); err != nil {
			t.Fatalf("seed %d: the simulation made an invalid history: %v", seed, err)
		}
		for _, o := range h.Ops {
			kinds[o.Kind]++
			outcomes[o.Outcome]++
		}
		r := All(h, simConfig())
		if !r.OK() {
			t.Fatalf("seed %d: a valid history was rejected:\n%s", seed, r)
		}
		// Replay: the file holds the same history, judged the same.
		var buf bytes.Buffer
		if err := history.Encode(&buf, h); err != nil {
			t.Fatal(err)
		}
		back, err := history.Decode(&buf)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if again := All(back, simConfig()); !again.OK() || len(again.Verdicts[0].Keys) != len(r.Verdicts[0].Keys) {
			t.Fatalf("seed %d: the replayed history is judged differently:\n%s", seed, again)
		}
	}
	// The generator must exercise what the checkers claim to handle.
	for _, k := range []history.Kind{history.Write, history.StrongRead, history.PlainRead, history.TokenRead, history.CachedRead, history.Create, history.SetRead, history.Changes} {
		if kinds[k] == 0 {
			t.Errorf("the simulation made no %s", k)
		}
	}
	for _, o := range []history.Outcome{history.OK, history.Fail, history.Unknown} {
		if outcomes[o] == 0 {
			t.Errorf("the simulation made no %s outcome", o)
		}
	}
}

// mutation breaks one operation of a valid history (in place) and says which checker must
// reject it, with which violation kind, naming which op id; ok false means the history has
// no operation it can break.
type mutation func(h *history.History, rnd *rand.Rand) (checker func(history.History) Verdict, kind string, id int64, ok bool)

func pick(rnd *rand.Rand, h *history.History, f func(o history.Op) bool) int {
	var idx []int
	for i, o := range h.Ops {
		if f(o) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return -1
	}
	return idx[rnd.IntN(len(idx))]
}

var mutations = map[string]mutation{
	"lost write": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.SetRead && len(o.Elements) > 0 })
		if i < 0 {
			return nil, "", 0, false
		}
		byValue := make(map[string]history.Op)
		for _, o := range h.Ops {
			if o.Kind == history.Create && o.Outcome == history.OK && o.Tenant == h.Ops[i].Tenant {
				byValue[o.Value] = o
			}
		}
		for j, e := range h.Ops[i].Elements {
			if c, ok := byValue[e.Value]; ok {
				h.Ops[i].Elements = slices.Delete(slices.Clone(h.Ops[i].Elements), j, j+1)
				return SetComplete, LostCreate, c.ID, true
			}
		}
		return nil, "", 0, false
	},
	"duplicated create": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.SetRead && len(o.Elements) > 0 })
		if i < 0 {
			return nil, "", 0, false
		}
		e := h.Ops[i].Elements[rnd.IntN(len(h.Ops[i].Elements))]
		h.Ops[i].Elements = append(slices.Clone(h.Ops[i].Elements), history.Element{Rec: "dup-" + e.Rec, Value: e.Value})
		return SetComplete, DuplicateCreate, h.Ops[i].ID, true
	},
	"stale token read": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.TokenRead })
		if i < 0 {
			return nil, "", 0, false
		}
		w := h.ByID()[h.Ops[i].TokenOf]
		h.Ops[i].Version = w.Version - 1
		return TokenReads, StaleTokenRead, h.Ops[i].ID, true
	},
	"stale plain read": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		floor := func(r history.Op) int64 {
			f := int64(0)
			for _, w := range h.Ops {
				if w.Kind == history.Write && w.Outcome == history.OK && w.Tenant == r.Tenant && w.Key() == r.Key() && w.Complete+simBound < r.Invoke {
					f = max(f, w.Version)
				}
			}
			return f
		}
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.PlainRead && floor(o) > 0 })
		if i < 0 {
			return nil, "", 0, false
		}
		h.Ops[i].Version = floor(h.Ops[i]) - 1
		return func(h history.History) Verdict { return PlainReads(h, simBound) }, StaleRead, h.Ops[i].ID, true
	},
	"non-linearizable read": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.StrongRead })
		if i < 0 {
			return nil, "", 0, false
		}
		h.Ops[i].Value, h.Ops[i].Version = "never written", max(1, h.Ops[i].Version)
		return func(h history.History) Verdict { return Linearizable(h, time.Minute) }, NotLinearizable, h.Ops[i].ID, true
	},
	"change stream gap": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.Changes && len(o.Events) > 2 })
		if i < 0 {
			return nil, "", 0, false
		}
		j := 1 + rnd.IntN(len(h.Ops[i].Events)-2)
		h.Ops[i].Events = slices.Delete(slices.Clone(h.Ops[i].Events), j, j+1)
		return ChangeStreams, ChangesGap, h.Ops[i].ID, true
	},
	"change stream repeat": func(h *history.History, rnd *rand.Rand) (func(history.History) Verdict, string, int64, bool) {
		i := pick(rnd, h, func(o history.Op) bool { return o.Kind == history.Changes && len(o.Events) > 0 })
		if i < 0 {
			return nil, "", 0, false
		}
		j := rnd.IntN(len(h.Ops[i].Events))
		h.Ops[i].Events = slices.Insert(slices.Clone(h.Ops[i].Events), j+1, h.Ops[i].Events[j])
		return ChangeStreams, ChangesRepeat, h.Ops[i].ID, true
	},
}

func TestMutatedHistoriesFail(t *testing.T) {
	for name, m := range mutations {
		t.Run(name, func(t *testing.T) {
			applied := 0
			for seed := range uint64(20) {
				h := simulate(seed)
				rnd := rand.New(rand.NewPCG(seed, 1))
				checker, kind, id, ok := m(&h, rnd)
				if !ok {
					continue
				}
				applied++
				v := checker(h)
				found := false
				for _, x := range v.Violations {
					for _, o := range x.Ops {
						found = found || (x.Kind == kind && o.ID == id)
					}
				}
				if !found {
					t.Fatalf("seed %d: no %s violation naming #%d:\n%s", seed, kind, id, v)
				}
			}
			if applied < 10 {
				t.Fatalf("the mutation applied to only %d of 20 histories", applied)
			}
		})
	}
}
