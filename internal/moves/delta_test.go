package moves

import (
	"fmt"
	"sync"
	"testing"

	"github.com/meridian-dev/meridian/shardmap"
)

// unmirrored is a client write committed on the source that no API node mirrored (its map did
// not show the move yet, or the mirror failed): only verify can bring it to the target.
func unmirrored(t *testing.T, st *fakeStore, want map[Key]frow, id string, data string, deleted bool) {
	t.Helper()
	k := Key{Collection: "items", ID: id}
	if err := st.clientWrite("use-1", "acme", k, data, deleted); err != nil {
		t.Error(err)
		return
	}
	want[k] = st.snapshot("use-1", "acme")[k]
}

// TestDeltaVerifyCatchesWritesAroundTheFence writes unmirrored changes during the full pass,
// during the delta passes and just before the fence, and checks the move ends with the target
// equal to the source while the verify under the fence compares only the keys written since
// the last pass (no full scan under the fence).
func TestDeltaVerifyCatchesWritesAroundTheFence(t *testing.T) {
	client := newTestMap(t)
	st := newFakeStore()
	st.seed("use-1", "acme", seedRows)
	want := st.snapshot("use-1", "acme")
	var mu sync.Mutex
	fenced := false
	var scansUnderFence, keysUnderFence int
	st.before = func(method string, n int) error {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case method == "VerifyBatch" && n == 1:
			// During the full pass: with more than VerifyThreshold of them, a delta pass must run.
			for i := range 15 {
				unmirrored(t, st, want, fmt.Sprintf("r%05d", i), "during-full", false)
			}
			unmirrored(t, st, want, "fresh-1", "created", false)
		case method == "ChangedKeys" && n == 1:
			// During the first delta pass: a delete and an update the next delta must catch.
			unmirrored(t, st, want, "r00020", "", true)
			unmirrored(t, st, want, "r00021", "during-delta", false)
		case method == "Fence":
			// The last writes before the fence: only the final delta sees them.
			unmirrored(t, st, want, "r00030", "just-before-fence", false)
			unmirrored(t, st, want, "fresh-2", "created", false)
			fenced = true
		case fenced && method == "VerifyBatch":
			scansUnderFence++
		}
		return nil
	}
	st.hook = func(method string, n int) error {
		mu.Lock()
		defer mu.Unlock()
		if fenced && method == "ChangedKeys" {
			keysUnderFence++
		}
		return nil
	}
	id := requestMove(t, client, "acme", "euw-1")
	start(t, testConfig(t, client, st, newFakeLease(), "c1"))
	mv := waitPhase(t, client, id, shardmap.PhaseDone)
	checkMoved(t, client, st, want)
	mu.Lock()
	defer mu.Unlock()
	if scansUnderFence != 0 {
		t.Errorf("%d full verify batches under the fence, want 0 (a delta)", scansUnderFence)
	}
	if keysUnderFence != 1 {
		t.Errorf("ChangedKeys under the fence %d times, want 1", keysUnderFence)
	}
	if got := st.count("ChangedKeys"); got < 2 {
		t.Errorf("ChangedKeys called %d times, want a delta pass before the fence and one under it", got)
	}
	// 16 repaired by the full pass, 2 by the delta pass, 2 under the fence.
	if mv.Repairs != 20 {
		t.Errorf("repairs = %d, want 20", mv.Repairs)
	}
	if got := st.count("PrecopyTarget"); got < 1 {
		t.Error("PrecopyTarget never called")
	}
	if tr, _ := st.tenantRow("euw-1", "acme"); tr.changeSeq != seedRows+20 {
		t.Errorf("target change_seq = %d, want the source's %d", tr.changeSeq, seedRows+20)
	}
}

// TestDeltaVerifyFallsBackWhenOutboxPruned prunes the source's outbox of the writes a delta
// would list: the controller must compare every key instead, and still move the data right.
func TestDeltaVerifyFallsBackWhenOutboxPruned(t *testing.T) {
	client := newTestMap(t)
	st := newFakeStore()
	st.seed("use-1", "acme", seedRows)
	want := st.snapshot("use-1", "acme")
	var once sync.Once
	st.before = func(method string, n int) error {
		if method == "Fence" {
			once.Do(func() {
				unmirrored(t, st, want, "r00007", "pruned-from-outbox", false)
				st.prune("use-1", "acme", 1<<40)
			})
		}
		return nil
	}
	id := requestMove(t, client, "acme", "euw-1")
	start(t, testConfig(t, client, st, newFakeLease(), "c1"))
	waitPhase(t, client, id, shardmap.PhaseDone)
	checkMoved(t, client, st, want)
	if got := st.count("VerifyBatch"); got < 2*(seedRows/batch) {
		t.Errorf("VerifyBatch called %d times: want a second full pass after the outbox was pruned", got)
	}
}

// TestDeltaVerifyWaitsForPendingWrites keeps more than MaxFinalDelta writes pending at the first
// check: the controller must run delta passes (and copy ahead again) before it fences, so the
// fence never waits on a large delta.
func TestDeltaVerifyWaitsForPendingWrites(t *testing.T) {
	client := newTestMap(t)
	st := newFakeStore()
	st.seed("use-1", "acme", seedRows)
	want := st.snapshot("use-1", "acme")
	var once sync.Once
	st.hook = func(method string, n int) error {
		if method == "PrecopyTarget" {
			once.Do(func() {
				for i := range 60 {
					unmirrored(t, st, want, fmt.Sprintf("r%05d", i%seedRows), fmt.Sprintf("w%d", i), false)
				}
			})
		}
		return nil
	}
	var atFence int64 = -1
	st.before = func(method string, n int) error {
		if method == "Fence" {
			tr, _ := st.tenantRow("euw-1", "acme")
			src, _ := st.tenantRow("use-1", "acme")
			atFence = src.changeSeq - tr.changeSeq // writes not yet copied ahead
		}
		return nil
	}
	cfg := testConfig(t, client, st, newFakeLease(), "c1")
	cfg.MaxFinalDelta = 10
	id := requestMove(t, client, "acme", "euw-1")
	start(t, cfg)
	waitPhase(t, client, id, shardmap.PhaseDone)
	checkMoved(t, client, st, want)
	if st.count("PrecopyTarget") < 2 {
		t.Errorf("PrecopyTarget called %d times, want again after 60 > copyFactor × MaxFinalDelta writes", st.count("PrecopyTarget"))
	}
	if atFence < 0 || atFence > copyFactor*10 {
		t.Errorf("%d writes not copied ahead at the fence, want 0..copyFactor × MaxFinalDelta (40)", atFence)
	}
}

// TestDeltaVerifyProgressesWhileWritesOutpaceTheCopy: each copy ahead of the fence sees more than
// MaxFinalDelta new writes (a busy tenant, a slow copy). The controller must still run a delta
// pass between two copies — it once re-ran the copy forever and never compared a key — and
// cut over once the writes calm down.
func TestDeltaVerifyProgressesWhileWritesOutpaceTheCopy(t *testing.T) {
	client := newTestMap(t)
	st := newFakeStore()
	st.seed("use-1", "acme", seedRows)
	want := st.snapshot("use-1", "acme")
	var mu sync.Mutex
	var calls []string
	st.hook = func(method string, n int) error {
		mu.Lock()
		calls = append(calls, method)
		mu.Unlock()
		if method == "PrecopyTarget" && n <= 5 {
			for i := range 60 {
				unmirrored(t, st, want, fmt.Sprintf("r%05d", (n*30+i)%seedRows), fmt.Sprintf("busy-%d-%d", n, i), false)
			}
		}
		return nil
	}
	cfg := testConfig(t, client, st, newFakeLease(), "c1")
	cfg.MaxFinalDelta = 10
	id := requestMove(t, client, "acme", "euw-1")
	start(t, cfg)
	waitPhase(t, client, id, shardmap.PhaseDone)
	checkMoved(t, client, st, want)
	mu.Lock()
	defer mu.Unlock()
	last := ""
	for _, c := range calls {
		if c == "PrecopyTarget" && last == "PrecopyTarget" {
			t.Fatalf("two copies ahead of the fence with no delta pass between them: %v", calls)
		}
		if c == "PrecopyTarget" || c == "ChangedKeys" {
			last = c
		}
	}
	if st.count("PrecopyTarget") < 2 {
		t.Errorf("PrecopyTarget called %d times, want it repeated after a busy copy", st.count("PrecopyTarget"))
	}
}

// TestDeltaVerifyCutsOverWhenPendingStopsShrinking: the tenant writes steadily, so every delta
// pass leaves about as many writes pending as the one before, above MaxFinalDelta (a distant
// target: the passes cannot get it lower). The controller must cut over once that count stops
// shrinking — it once looped until the test's deadline — and the final delta must still bring
// every write across.
func TestDeltaVerifyCutsOverWhenPendingStopsShrinking(t *testing.T) {
	client := newTestMap(t)
	st := newFakeStore()
	st.seed("use-1", "acme", seedRows)
	want := st.snapshot("use-1", "acme")
	var mu sync.Mutex
	round := 0
	st.hook = func(method string, n int) error {
		if method != "ChangedKeys" && (method != "VerifyBatch" || n != 1) {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		round++
		for i := range 20 { // more than MaxFinalDelta (10) per pass, for ever
			k := Key{Collection: "items", ID: fmt.Sprintf("r%05d", (round*20+i)%seedRows)}
			if err := st.clientWrite("use-1", "acme", k, fmt.Sprintf("steady-%d-%d", round, i), false); err != nil {
				return nil // fenced: the client's write was refused, nothing changed
			}
			want[k] = st.snapshot("use-1", "acme")[k]
		}
		return nil
	}
	cfg := testConfig(t, client, st, newFakeLease(), "c1")
	cfg.MaxFinalDelta = 10
	id := requestMove(t, client, "acme", "euw-1")
	start(t, cfg)
	waitPhase(t, client, id, shardmap.PhaseDone)
	mu.Lock()
	defer mu.Unlock()
	checkMoved(t, client, st, want)
}
