package nemesis

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/sim"
)

// fakeMoves is a router's admin API for moves: a shard map with two shards per region and
// pinned tenants, POST /admin/v1/moves (409 tenant-moving for a tenant with an active move,
// 409 region-pinned for a shard of another region), and moves that advance one phase per GET
// while the controller runs (ctl), ending done.
type fakeMoves struct {
	mu      sync.Mutex
	pins    map[string]string
	moves   map[string]*moveAnswer
	n       int
	ctl     func() bool
	pinned  int // requests refused region-pinned
	healthz int
}

var fakePhases = []string{"requested", "dual_write", "backfill", "verify", "cutover", "cleanup", "done"}

func (f *fakeMoves) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	shards := []map[string]string{}
	for _, reg := range []string{"eu-west", "us-east"} {
		for i := 1; i <= 2; i++ {
			shards = append(shards, map[string]string{"id": fmt.Sprintf("%s-%d", reg, i), "home_region": reg, "state": "active"})
		}
	}
	active := func(t string) *moveAnswer {
		for _, mv := range f.moves {
			if mv.Tenant == t && !terminal(mv.Phase) {
				return mv
			}
		}
		return nil
	}
	switch {
	case r.URL.Path == "/healthz":
		f.healthz++
	case r.Method == http.MethodGet && r.URL.Path == "/admin/v1/shardmap":
		_ = json.NewEncoder(w).Encode(map[string]any{"shards": shards, "pins": f.pins})
	case r.Method == http.MethodPost && r.URL.Path == "/admin/v1/moves":
		var req struct{ Tenant, To_shard string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		if active(req.Tenant) != nil {
			w.WriteHeader(http.StatusConflict)
			fmt.Fprint(w, `{"type":"https://meridian.dev/problems/tenant-moving"}`)
			return
		}
		if strings.TrimSuffix(strings.TrimSuffix(req.To_shard, "-1"), "-2") != strings.TrimSuffix(strings.TrimSuffix(f.pins[req.Tenant], "-1"), "-2") {
			f.pinned++
			w.WriteHeader(http.StatusConflict)
			fmt.Fprint(w, `{"type":"https://meridian.dev/problems/region-pinned"}`)
			return
		}
		f.n++
		mv := &moveAnswer{ID: fmt.Sprintf("mv-%d", f.n), Tenant: req.Tenant, From: f.pins[req.Tenant], To: req.To_shard, Phase: "requested"}
		f.moves[mv.ID] = mv
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(mv)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/admin/v1/moves/"):
		mv := f.moves[strings.TrimPrefix(r.URL.Path, "/admin/v1/moves/")]
		if mv == nil {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if f.ctl() && !terminal(mv.Phase) {
			for i, p := range fakePhases {
				if p == mv.Phase {
					mv.Phase = fakePhases[i+1]
					break
				}
			}
			if mv.Phase == "done" {
				f.pins[mv.Tenant] = mv.To
				mv.PauseMS, mv.RowsCopied = 12, 40
			}
		}
		_ = json.NewEncoder(w).Encode(mv)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// TestMovesAndControllerKill: a move is requested to the other shard of the tenant's region
// and carried past its step while it runs; a second move asked of the same tenant in the next
// step takes the next tenant; a controller kill is restarted (waiting for its /healthz) before
// the moves are waited for at the end, and no move advances while it is down; every move ends
// done and the log says so.
func TestMovesAndControllerKill(t *testing.T) {
	l := &fakeLauncher{}
	fm := &fakeMoves{pins: map[string]string{"ta": "eu-west-1", "tb": "us-east-2"}, moves: map[string]*moveAnswer{},
		ctl: func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.procs[0].Running
		}}
	srv := httptest.NewServer(fm)
	defer srv.Close()
	l.procs = []sim.ProcessInfo{{Name: "rebalancer", Kind: sim.KindRebalancer, Region: "eu-west", URL: srv.URL, Running: true}}
	cf := &sim.ClusterFile{AdminToken: "adm", Regions: map[string]sim.RegionEndpoints{"eu-west": {Router: srv.URL}}}
	start := time.Now()
	n := New(Config{Launcher: l, Cluster: cf, Now: func() time.Duration { return time.Since(start) }, Tenants: []string{"ta", "tb"}})
	n.Run(context.Background(), []Step{
		{At: 0, Hold: 20 * time.Millisecond, Faults: []Fault{{Kind: Move, Target: "tenant-0"}, {Kind: KillRebalancer, Target: "rebalancer"}}},
		{At: 40 * time.Millisecond, Hold: 20 * time.Millisecond, Faults: []Fault{{Kind: Move, Target: "tenant-0"}}},
	})
	log := strings.Join(n.Log(), "\n")
	if want := "kill rebalancer,restart rebalancer"; strings.Join(l.calls, ",") != want {
		t.Errorf("calls %v, want %s", l.calls, want)
	}
	if fm.healthz == 0 {
		t.Error("the restarted controller's /healthz was never polled")
	}
	ms := n.Moves()
	if len(ms) != 2 || ms[0].Tenant != "ta" || ms[0].From != "eu-west-1" || ms[0].To != "eu-west-2" ||
		ms[1].Tenant != "tb" || ms[1].From != "us-east-2" || ms[1].To != "us-east-1" {
		t.Fatalf("moves %+v\nlog:\n%s", ms, log)
	}
	for _, m := range ms {
		if m.Phase != "done" || m.Ended == 0 || m.PauseMS != 12 {
			t.Errorf("move %+v did not end done", m)
		}
	}
	if fm.pinned != 0 {
		t.Errorf("%d move requests left the tenant's region", fm.pinned)
	}
	for _, want := range []string{"inject move ta", "inject kill-rebalancer rebalancer", "inject move tb",
		"move mv-1 of ta: eu-west-1→eu-west-2 requested", "still running", "move mv-1 of ta: done after", "move mv-2 of tb: done after", "heal move ta"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "FAILED") || n.Injected() != 3 {
		t.Errorf("injected %d, log:\n%s", n.Injected(), log)
	}
	// The controller came back before the moves were waited for (else they never end).
	if i, j := strings.Index(log, "heal kill-rebalancer"), strings.Index(log, "move mv-1 of ta: done"); i < 0 || j < i {
		t.Errorf("the move ended before the controller was back:\n%s", log)
	}
	if err := n.HealAll(context.Background()); err != nil {
		t.Errorf("HealAll: %v", err)
	}
	if !strings.Contains(strings.Join(n.Log(), "\n"), "every move ended (2 of 2 done)") {
		t.Errorf("log:\n%s", strings.Join(n.Log(), "\n"))
	}
}
