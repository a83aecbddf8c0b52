package shardmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/meridian-dev/meridian/shardmap/ids"
	"os"
	"regexp"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testTopology() Bootstrap {
	return Bootstrap{
		Regions: []string{"us-east", "us-west", "eu-west"},
		Shards: []Shard{
			{ID: "us-east-1", HomeRegion: "us-east", Database: "shard_us_east_1", Endpoints: map[string]string{"us-east": "127.0.0.1:5432", "eu-west": "127.0.0.1:5433"}},
			{ID: "us-west-1", HomeRegion: "us-west", Database: "shard_us_west_1"},
			{ID: "eu-west-1", HomeRegion: "eu-west", Database: "shard_eu_west_1"},
			{ID: "eu-west-2", HomeRegion: "eu-west", Database: "shard_eu_west_2"},
		},
		SlotCount: 64,
	}
}

// applyAll applies cmds to a fresh state at indexes 1.. and fails on the first error.
func applyAll(t testing.TB, cmds ...Command) *state {
	t.Helper()
	s := newState()
	for i, c := range cmds {
		next := s.clone()
		if err := next.apply(c, uint64(i+1), t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("command %d (%T): %v", i, c, err)
		}
		s = next
	}
	return s
}

// tryApply applies cmd to a clone; on error s is untouched, which the caller can check.
func tryApply(s *state, cmd Command, index uint64) (*state, error) {
	next := s.clone()
	if err := next.apply(cmd, index, t0.Add(time.Duration(index)*time.Second)); err != nil {
		return s, err
	}
	return next, nil
}

func TestLookupSlotAndPin(t *testing.T) {
	s := applyAll(t, testTopology(), CreateTenant{Tenant: "acme", Region: "eu-west"}, CreateTenant{Tenant: "globex", Region: "eu-west"}, CreateTenant{Tenant: "plain"})
	m := buildMap(s)
	if m.Version() != 4 {
		t.Fatalf("version %d, want 4", m.Version())
	}
	r, err := m.Lookup("acme")
	if err != nil {
		t.Fatal(err)
	}
	// Fewest pins, ties by id: acme -> eu-west-1, globex -> eu-west-2.
	if r.Shard != "eu-west-1" || r.HomeRegion != "eu-west" || !r.Pinned || r.Epoch != 1 || r.Version != 4 || r.Moving {
		t.Fatalf("acme route %+v", r)
	}
	if r, _ := m.Lookup("globex"); r.Shard != "eu-west-2" {
		t.Fatalf("globex route %+v", r)
	}
	r, err = m.Lookup("plain")
	if err != nil {
		t.Fatal(err)
	}
	want := s.slots[SlotOf("plain", 64)]
	if r.Shard != want || r.Pinned {
		t.Fatalf("plain route %+v, want shard %s unpinned", r, want)
	}
	if _, err := m.Lookup("Bad!"); !errors.Is(err, ErrBadTenantID) {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := emptyMap.Lookup("acme"); !errors.Is(err, ErrNotBootstrapped) {
		t.Fatalf("empty map: %v", err)
	}
	// Round-robin slot assignment over the given shard order.
	for i := 0; i < 8; i++ {
		if got, want := m.SlotShard(i), testTopology().Shards[i%4].ID; got != want {
			t.Fatalf("slot %d on %s, want %s", i, got, want)
		}
	}
}

func TestValidTenantIDMatchesRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{2,62}$`)
	cases := []string{"", "ab", "abc", "a-b", "-ab", "ab-", "ABC", "a_b", "acme-corp-1", "0ab", "a b",
		string(bytes.Repeat([]byte("a"), 63)), string(bytes.Repeat([]byte("a"), 64)), "é12"}
	for _, c := range cases {
		if got, want := ids.ValidTenant(c), re.MatchString(c); got != want {
			t.Errorf("ids.ValidTenant(%q) = %v, regexp says %v", c, got, want)
		}
	}
}

func FuzzValidTenantID(f *testing.F) {
	re := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{2,62}$`)
	for _, s := range []string{"acme", "a-", "-a-b", "ABC"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ids.ValidTenant(s) != re.MatchString(s) {
			t.Fatalf("ids.ValidTenant(%q) disagrees with the regexp", s)
		}
	})
}

// walkTo returns a state with move "m1" for tenant acme (pinned to eu-west-1) in phase p.
func walkTo(t testing.TB, p Phase) *state {
	t.Helper()
	cmds := []Command{testTopology(), CreateTenant{Tenant: "acme", Region: "eu-west"}, RequestMove{ID: "m1", Tenant: "acme", To: "us-east-1"}}
	path := map[Phase][]Command{
		PhaseRequested: nil,
		PhaseDualWrite: {SetMovePhase{ID: "m1", Phase: PhaseDualWrite}},
		PhaseBackfill:  {SetMovePhase{ID: "m1", Phase: PhaseDualWrite}, SetMovePhase{ID: "m1", Phase: PhaseBackfill}},
		PhaseVerify:    {SetMovePhase{ID: "m1", Phase: PhaseDualWrite}, SetMovePhase{ID: "m1", Phase: PhaseBackfill}, SetMovePhase{ID: "m1", Phase: PhaseVerify}},
	}
	path[PhaseCutover] = append(append([]Command{}, path[PhaseVerify]...), Cutover{ID: "m1"})
	path[PhaseCleanup] = append(append([]Command{}, path[PhaseCutover]...), SetMovePhase{ID: "m1", Phase: PhaseCleanup})
	path[PhaseDone] = append(append([]Command{}, path[PhaseCleanup]...), SetMovePhase{ID: "m1", Phase: PhaseDone})
	path[PhaseCancelled] = []Command{SetMovePhase{ID: "m1", Phase: PhaseCancelled}}
	path[PhaseFailed] = []Command{SetMovePhase{ID: "m1", Phase: PhaseFailed, Error: "boom"}}
	s := applyAll(t, append(cmds, path[p]...)...)
	if got := s.moves["m1"].Phase; got != p {
		t.Fatalf("walked to %s, want %s", got, p)
	}
	return s
}

var allPhases = []Phase{PhaseRequested, PhaseDualWrite, PhaseBackfill, PhaseVerify, PhaseCutover, PhaseCleanup, PhaseDone, PhaseCancelled, PhaseFailed}

func TestPhaseTransitionGuards(t *testing.T) {
	allowed := map[[2]Phase]bool{
		{PhaseRequested, PhaseDualWrite}: true, {PhaseRequested, PhaseCancelled}: true, {PhaseRequested, PhaseFailed}: true,
		{PhaseDualWrite, PhaseBackfill}: true, {PhaseDualWrite, PhaseCancelled}: true, {PhaseDualWrite, PhaseFailed}: true,
		{PhaseBackfill, PhaseVerify}: true, {PhaseBackfill, PhaseCancelled}: true, {PhaseBackfill, PhaseFailed}: true,
		{PhaseVerify, PhaseCutover}: true, {PhaseVerify, PhaseCancelled}: true, {PhaseVerify, PhaseFailed}: true,
		{PhaseCutover, PhaseCleanup}: true, {PhaseCutover, PhaseFailed}: true,
		{PhaseCleanup, PhaseDone}: true, {PhaseCleanup, PhaseFailed}: true,
	}
	for _, from := range allPhases {
		for _, to := range allPhases {
			t.Run(fmt.Sprintf("%s->%s", from, to), func(t *testing.T) {
				s := walkTo(t, from)
				before := s.canonical()
				var cmd Command = SetMovePhase{ID: "m1", Phase: to, Error: "why"}
				if to == PhaseCutover {
					cmd = Cutover{ID: "m1"}
				}
				next, err := tryApply(s, cmd, 100)
				if allowed[[2]Phase{from, to}] {
					if err != nil {
						t.Fatalf("want allowed, got %v", err)
					}
					if next.moves["m1"].Phase != to || next.version != 100 {
						t.Fatalf("phase %s version %d", next.moves["m1"].Phase, next.version)
					}
					r, _ := buildMap(next).Lookup("acme")
					if r.Moving != !to.Terminal() {
						t.Fatalf("moving=%v in %s", r.Moving, to)
					}
					return
				}
				if !errors.Is(err, ErrBadPhaseTransition) {
					t.Fatalf("want ErrBadPhaseTransition, got %v", err)
				}
				if !bytes.Equal(before, next.canonical()) {
					t.Fatal("rejected command changed the state")
				}
			})
		}
	}
	// SetMovePhase can never reach cutover, even from verify.
	if _, err := tryApply(walkTo(t, PhaseVerify), SetMovePhase{ID: "m1", Phase: PhaseCutover}, 100); !errors.Is(err, ErrBadPhaseTransition) {
		t.Fatalf("SetMovePhase(cutover): %v", err)
	}
}

func TestCutoverPinsAndBumpsEpoch(t *testing.T) {
	s := walkTo(t, PhaseCutover)
	r, err := buildMap(s).Lookup("acme")
	if err != nil {
		t.Fatal(err)
	}
	if r.Shard != "us-east-1" || r.Epoch != 2 || !r.Pinned || !r.Moving {
		t.Fatalf("after cutover %+v", r)
	}
	s = walkTo(t, PhaseDone)
	if r, _ := buildMap(s).Lookup("acme"); r.Moving || r.Epoch != 2 {
		t.Fatalf("after done %+v", r)
	}
}

func TestCommandGuards(t *testing.T) {
	moving := walkTo(t, PhaseBackfill)
	base := applyAll(t, testTopology(), CreateTenant{Tenant: "acme", Region: "eu-west"})
	drained := applyAll(t, testTopology(), AddShard{Shard: Shard{ID: "x-1", HomeRegion: "us-east", Database: "x"}}, DrainShard{Shard: "x-1"})
	tests := []struct {
		name string
		s    *state
		cmd  Command
		want error
	}{
		{"not bootstrapped", newState(), CreateTenant{Tenant: "acme"}, ErrNotBootstrapped},
		{"bootstrap twice", base, testTopology(), ErrAlreadyBootstrapped},
		{"bootstrap no shards", newState(), Bootstrap{Regions: []string{"a"}}, ErrBadCommand},
		{"bootstrap shard in unknown region", newState(), Bootstrap{Regions: []string{"a"}, Shards: []Shard{{ID: "s", HomeRegion: "b", Database: "d"}}}, ErrUnknownRegion},
		{"bootstrap bad slot count", newState(), Bootstrap{Regions: []string{"a"}, Shards: []Shard{{ID: "s", HomeRegion: "a", Database: "d"}}, SlotCount: -1}, ErrBadCommand},
		{"add region twice", base, AddRegion{Region: "us-east"}, ErrRegionExists},
		{"add shard twice", base, AddShard{Shard: Shard{ID: "us-east-1", HomeRegion: "us-east", Database: "d"}}, ErrShardExists},
		{"add shard bad id", base, AddShard{Shard: Shard{ID: "Bad", HomeRegion: "us-east", Database: "d"}}, ErrBadCommand},
		{"add shard unknown endpoint region", base, AddShard{Shard: Shard{ID: "n", HomeRegion: "us-east", Database: "d", Endpoints: map[string]string{"mars": "x:1"}}}, ErrUnknownRegion},
		{"drain unknown", base, DrainShard{Shard: "nope"}, ErrUnknownShard},
		{"drain with slots", base, DrainShard{Shard: "us-east-1"}, ErrShardHasSlots},
		{"drain twice", drained, DrainShard{Shard: "x-1"}, ErrShardDraining},
		{"assign to draining", drained, AssignSlots{Slots: []int{1}, Shard: "x-1"}, ErrShardDraining},
		{"assign bad slot", base, AssignSlots{Slots: []int{64}, Shard: "us-east-1"}, ErrBadSlot},
		{"assign negative slot", base, AssignSlots{Slots: []int{-1}, Shard: "us-east-1"}, ErrBadSlot},
		{"assign unknown shard", base, AssignSlots{Slots: []int{1}, Shard: "nope"}, ErrUnknownShard},
		{"create bad id", base, CreateTenant{Tenant: "A"}, ErrBadTenantID},
		{"create pinned twice", base, CreateTenant{Tenant: "acme"}, ErrTenantExists},
		{"create unknown region", base, CreateTenant{Tenant: "newco", Region: "mars"}, ErrUnknownRegion},
		{"create moving", moving, CreateTenant{Tenant: "acme"}, ErrTenantExists},
		{"create in region without active shard", applyAll(t, testTopology(), AddRegion{Region: "ap-south"}), CreateTenant{Tenant: "newco", Region: "ap-south"}, ErrNoShardInRegion},
		{"move while moving", moving, RequestMove{ID: "m2", Tenant: "acme", To: "us-west-1"}, ErrTenantMoving},
		{"move same id", moving, RequestMove{ID: "m1", Tenant: "other", To: "us-west-1"}, ErrMoveExists},
		{"move to own shard", base, RequestMove{Tenant: "acme", To: "eu-west-1"}, ErrSameShard},
		{"move to unknown shard", base, RequestMove{Tenant: "acme", To: "nope"}, ErrUnknownShard},
		{"move to draining shard", drained, RequestMove{Tenant: "acme", To: "x-1"}, ErrShardDraining},
		{"move bad tenant", base, RequestMove{Tenant: "A!", To: "us-east-1"}, ErrBadTenantID},
		{"phase of unknown move", base, SetMovePhase{ID: "nope", Phase: PhaseDone}, ErrUnknownMove},
		{"cutover unknown move", base, Cutover{ID: "nope"}, ErrUnknownMove},
		{"progress unknown move", base, MoveProgress{ID: "nope"}, ErrUnknownMove},
		{"progress negative", moving, MoveProgress{ID: "m1", RowsCopied: ptr(int64(-1))}, ErrBadCommand},
		{"first write negative", moving, MoveProgress{ID: "m1", FirstWriteMS: ptr(int64(-1))}, ErrBadCommand},
		{"progress on finished move", walkTo(t, PhaseDone), MoveProgress{ID: "m1", RowsCopied: ptr(int64(1))}, ErrBadPhaseTransition},
		{"cursor before backfill", walkTo(t, PhaseDualWrite), MoveProgress{ID: "m1", CopiedUpTo: &MoveKey{Collection: "items", ID: "r1"}}, ErrBadPhaseTransition},
		{"cursor in verify", walkTo(t, PhaseVerify), MoveProgress{ID: "m1", RowsCopied: ptr(int64(1)), CopiedUpTo: &MoveKey{Collection: "items", ID: "r1"}}, ErrBadPhaseTransition},
		{"cursor too long", moving, MoveProgress{ID: "m1", CopiedUpTo: &MoveKey{Collection: "items", ID: string(bytes.Repeat([]byte("r"), maxMoveKeyPart+1))}}, ErrBadCommand},
		{"register without addr", newState(), RegisterNode{ID: "n1"}, ErrBadCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.s.canonical()
			got, err := tryApply(tc.s, tc.cmd, 1000)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !bytes.Equal(before, got.canonical()) || !bytes.Equal(before, tc.s.canonical()) {
				t.Fatal("rejected command changed the state")
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestMoveProgressAndDefaultID(t *testing.T) {
	s := applyAll(t, testTopology(), RequestMove{Tenant: "acme", To: "us-west-1"})
	id := MoveIDForIndex(2)
	mv, ok := buildMap(s).Move(id)
	if !ok || mv.Phase != PhaseRequested || mv.Tenant != "acme" || mv.From != s.slots[SlotOf("acme", 64)] {
		t.Fatalf("move %+v ok=%v", mv, ok)
	}
	s2, err := tryApply(s, MoveProgress{ID: id, RowsCopied: ptr(int64(5)), RowsTotal: ptr(int64(10))}, 3)
	if err != nil {
		t.Fatal(err)
	}
	s3, err := tryApply(s2, MoveProgress{ID: id, Repairs: ptr(int64(2)), PauseMS: ptr(int64(7)), FirstWriteMS: ptr(int64(9))}, 4)
	if err != nil {
		t.Fatal(err)
	}
	mv = s3.moves[id]
	if mv.RowsCopied != 5 || mv.RowsTotal != 10 || mv.Repairs != 2 || mv.PauseMS != 7 || mv.FirstWriteMS != 9 || !mv.UpdatedAt.Equal(t0.Add(4*time.Second)) || !mv.CreatedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("progress %+v", mv)
	}
}

// TestBackfillCursor: MoveProgress records the backfill's cursor (with the counters, in one
// command), a later one replaces it, one without it leaves it alone, and the move's JSON (what
// the admin API answers) carries it as {"collection","id"} only once it is set.
func TestBackfillCursor(t *testing.T) {
	s := walkTo(t, PhaseBackfill)
	if b, _ := json.Marshal(s.moves["m1"]); bytes.Contains(b, []byte("copied_up_to")) {
		t.Fatalf("a move without a cursor encodes it: %s", b)
	}
	s, err := tryApply(s, MoveProgress{ID: "m1", RowsCopied: ptr(int64(1000)), CopiedUpTo: &MoveKey{Collection: "items", ID: "r00999"}}, 10)
	if err != nil {
		t.Fatal(err)
	}
	s, err = tryApply(s, MoveProgress{ID: "m1", RowsCopied: ptr(int64(3000)), CopiedUpTo: &MoveKey{Collection: "items", ID: "r02999"}}, 11)
	if err != nil {
		t.Fatal(err)
	}
	s, err = tryApply(s, MoveProgress{ID: "m1", RowsCopied: ptr(int64(3500))}, 12)
	if err != nil {
		t.Fatal(err)
	}
	mv, _ := buildMap(s).Move("m1")
	if mv.CopiedUpTo != (MoveKey{Collection: "items", ID: "r02999"}) || mv.RowsCopied != 3500 {
		t.Fatalf("move %+v", mv)
	}
	b, _ := json.Marshal(mv)
	if !bytes.Contains(b, []byte(`"copied_up_to":{"collection":"items","id":"r02999"}`)) {
		t.Fatalf("move JSON %s", b)
	}
	// It survives a snapshot, and stays (meaningless) after the backfill.
	s, err = tryApply(s, SetMovePhase{ID: "m1", Phase: PhaseVerify}, 13)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, s); err != nil {
		t.Fatal(err)
	}
	got, err := readSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.canonical(), got.canonical()) || got.moves["m1"].CopiedUpTo != mv.CopiedUpTo {
		t.Fatalf("snapshot round trip differs:\n%s\n%s", s.canonical(), got.canonical())
	}
}

// TestOlderEncodingsWithoutCursor: a snapshot and a MoveProgress entry written before
// copied_up_to existed (testdata, made by the code of then) decode and re-encode byte for byte.
func TestOlderEncodingsWithoutCursor(t *testing.T) {
	old, err := os.ReadFile("testdata/snapshot-before-copied-up-to.txt")
	if err != nil {
		t.Fatal(err)
	}
	s, err := readSnapshot(bytes.NewReader(old))
	if err != nil {
		t.Fatal(err)
	}
	if mv := s.moves["m1"]; mv.Phase != PhaseBackfill || mv.RowsCopied != 1500 || mv.CopiedUpTo != (MoveKey{}) {
		t.Fatalf("decoded move %+v", mv)
	}
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, s); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), old) {
		t.Fatalf("snapshot re-encoded differently:\nwas %s\nnow %s", old, buf.Bytes())
	}
	entry := append([]byte{byte(CmdMoveProgress)}, `{"at":1767323045000000000,"cmd":{"id":"m1","rows_copied":1500}}`...)
	cmd, at, err := decodeEntry(entry)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := cmd.(MoveProgress); !ok || p.CopiedUpTo != nil {
		t.Fatalf("decoded %+v", p)
	}
	again, err := encodeEntry(cmd, at)
	if err != nil || !bytes.Equal(again, entry) {
		t.Fatalf("entry re-encoded as %q (%v), was %q", again, err, entry)
	}
}

func TestEntryRoundTripAndUnknownTypes(t *testing.T) {
	cmds := []Command{testTopology(), AddRegion{Region: "x"}, AddShard{Shard: Shard{ID: "a", HomeRegion: "x", Database: "d"}}, DrainShard{Shard: "a"},
		AssignSlots{Slots: []int{1, 2}, Shard: "a"}, CreateTenant{Tenant: "acme", Region: "x"}, RequestMove{Tenant: "acme", To: "a"},
		SetMovePhase{ID: "m", Phase: PhaseFailed, Error: "e"}, MoveProgress{ID: "m", PauseMS: ptr(int64(3)), CopiedUpTo: &MoveKey{Collection: "c", ID: "i"}}, Cutover{ID: "m"}, RegisterNode{ID: "n", HTTPAddr: "http://x"},
		SetTenantLimits{Tenant: "acme", Set: TenantLimits{RPS: 2.5, Concurrency: 3}, Reset: []string{LimitBurst}},
		AcquireLease{Name: "rebalancer", Holder: "ctl-1", TTL: 10 * time.Second}, ReleaseLease{Name: "rebalancer", Holder: "ctl-1"},
		PruneMoves{Before: t0.Add(-time.Hour)}}
	for _, c := range cmds {
		b, err := encodeEntry(c, t0)
		if err != nil {
			t.Fatal(err)
		}
		got, at, err := decodeEntry(b)
		if err != nil {
			t.Fatalf("%T: %v", c, err)
		}
		gj, _ := json.Marshal(got)
		cj, _ := json.Marshal(c)
		if got.Type() != c.Type() || !bytes.Equal(gj, cj) || !at.Equal(t0) {
			t.Fatalf("round trip %#v -> %#v", c, got)
		}
	}
	if _, _, err := decodeEntry([]byte{0x7f, '{', '}'}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, _, err := decodeEntry([]byte{0xfe, '{', '}'}); !errors.Is(err, errIgnored) {
		t.Fatalf("unknown ignorable type: %v", err)
	}
	if _, _, err := decodeEntry([]byte{byte(CmdCutover), '{'}); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("bad json: %v", err)
	}
}

func FuzzDecodeEntry(f *testing.F) {
	b, _ := encodeEntry(testTopology(), t0)
	f.Add(b)
	b, _ = encodeEntry(MoveProgress{ID: "m", RowsCopied: ptr(int64(1))}, t0)
	f.Add(b)
	f.Add([]byte{0x81, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, at, err := decodeEntry(b)
		if err != nil {
			return
		}
		// Anything that decodes must apply (or be rejected) without panicking, and re-encode.
		s := applyAll(t, testTopology())
		_, _ = tryApply(s, cmd, 10)
		if _, err := encodeEntry(cmd, at); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

func TestSnapshotRoundTripBytes(t *testing.T) {
	s := walkTo(t, PhaseCleanup)
	s, _ = tryApply(s, CreateTenant{Tenant: "zeta", Region: "us-west"}, 50)
	s.nodes["n1"] = "http://127.0.0.1:1"
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, s); err != nil {
		t.Fatal(err)
	}
	got, err := readSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.canonical(), got.canonical()) {
		t.Fatalf("snapshot round trip differs:\n%s\n%s", s.canonical(), got.canonical())
	}
	if _, err := readSnapshot(bytes.NewReader([]byte("{\"format\":\"other\"}\n{}"))); err == nil {
		t.Fatal("foreign snapshot accepted")
	}
}

func FuzzDecodeMap(f *testing.F) {
	f.Add(buildMap(walkTo(f, PhaseVerify)).Canonical())
	f.Add([]byte(`{"slot_count":2,"slots":["a"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMap(b)
		if err != nil {
			return
		}
		for _, id := range []string{"acme", "globex", "tenant-1"} {
			m.Lookup(id) // must not panic
		}
		if m2, err := DecodeMap(m.Canonical()); err != nil || !bytes.Equal(m2.Canonical(), m.Canonical()) {
			t.Fatalf("canonical not stable: %v", err)
		}
	})
}

func FuzzParseWatchParams(f *testing.F) {
	f.Add("5", "1s")
	f.Add("-1", "x")
	f.Fuzz(func(t *testing.T, after, wait string) {
		_, _, w, err := parseWatchParams(map[string][]string{"after": {after}, "wait": {wait}})
		if err == nil && (w <= 0 || w > maxWatchWait) {
			t.Fatalf("accepted wait %v", w)
		}
	})
}
