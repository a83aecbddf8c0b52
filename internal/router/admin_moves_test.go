package router

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/shardmap"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// newMapRig is a rig whose router embeds a real one-node shard map (Raft on 127.0.0.1, data in
// t.TempDir()) with regions us-east and eu-west: shards us-east-1, eu-west-1, eu-west-2 and the
// draining us-east-9. The rig's API nodes record tenants as the real ones do.
func newMapRig(t *testing.T) (*rig, *shardmap.Node) {
	t.Helper()
	node, err := shardmap.NewNode(shardmap.NodeConfig{ID: "n0", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0",
		HTTPAddr: "http://127.0.0.1:1", Bootstrap: true, Token: "cluster-secret",
		Logger: slog.New(slog.DiscardHandler), Tune: func(c *raft.Config) {
			c.HeartbeatTimeout = 50 * time.Millisecond
			c.ElectionTimeout = 50 * time.Millisecond
			c.LeaderLeaseTimeout = 50 * time.Millisecond
			c.CommitTimeout = 5 * time.Millisecond
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Shutdown() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, cmd := range []shardmap.Command{
		shardmap.Bootstrap{Regions: []string{"us-east", "eu-west"}, SlotCount: 64, Shards: []shardmap.Shard{
			{ID: "us-east-1", HomeRegion: "us-east", Database: "d1"},
			{ID: "eu-west-1", HomeRegion: "eu-west", Database: "d2"},
			{ID: "eu-west-2", HomeRegion: "eu-west", Database: "d3"}}},
		shardmap.AddShard{Shard: shardmap.Shard{ID: "us-east-9", HomeRegion: "us-east", Database: "d9"}},
		shardmap.DrainShard{Shard: "us-east-9"},
	} {
		if _, err := node.Apply(ctx, cmd); err != nil {
			t.Fatalf("%T: %v", cmd, err)
		}
	}
	rg := newRig(t, func(c *Config) { c.Map = NodeMap{Node: node, Poll: time.Millisecond} })
	return rg, node
}

// wantKind checks a problem answer's status and slug.
func wantKind(t *testing.T, resp *http.Response, body []byte, status int, slug string) {
	t.Helper()
	wantStatus(t, resp, body, status)
	var p struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(body, &p); err != nil || !strings.HasSuffix(p.Type, "/"+slug) {
		t.Fatalf("problem %s, want kind %s", body, slug)
	}
}

// slotTenant returns a tenant id whose slot is on shard.
func slotTenant(t *testing.T, m *shardmap.Map, prefix, shard string) string {
	t.Helper()
	for i := range 1000 {
		id := prefix + "-" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		if r, _ := m.Lookup(id); r.Shard == shard {
			return id
		}
	}
	t.Fatalf("no tenant on %s", shard)
	return ""
}

func TestAdminMoves(t *testing.T) {
	rg, node := newMapRig(t)
	slotco := slotTenant(t, node.Map(), "slotco", "us-east-1")
	for _, body := range []string{`{"id":"` + slotco + `"}`, `{"id":"resco","region":"eu-west"}`} {
		resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, body)
		wantStatus(t, resp, b, 201)
	}
	resShard := node.Map().Pins()["resco"]
	otherEU := map[string]string{"eu-west-1": "eu-west-2", "eu-west-2": "eu-west-1"}[resShard]

	t.Run("admin scope", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{{"POST", "/admin/v1/moves"}, {"GET", "/admin/v1/moves"},
			{"GET", "/admin/v1/moves/mv-1"}, {"POST", "/admin/v1/moves/mv-1/cancel"}, {"GET", "/admin/v1/tenants"}} {
			resp, b := rg.do(t, tc.method, tc.path, tokAcme, `{"tenant":"`+slotco+`","to_shard":"eu-west-1"}`)
			wantKind(t, resp, b, 403, "forbidden")
			resp, b = rg.do(t, tc.method, tc.path, "", "")
			wantKind(t, resp, b, 401, "unauthorized")
		}
	})
	t.Run("bad bodies are 400", func(t *testing.T) {
		for _, body := range []string{`{"tenant":"` + slotco + `"}`, `{"to_shard":"eu-west-1"}`, `{"tenant":"A!","to_shard":"eu-west-1"}`,
			`{"tenant":"` + slotco + `","to_shard":"Bad Shard"}`, `{"tenant":"` + slotco + `","to_shard":"eu-west-1","x":1}`,
			`{"Tenant":"` + slotco + `","to_shard":"eu-west-1"}`, `{"tenant":"` + slotco + `","tenant":"` + slotco + `","to_shard":"eu-west-1"}`,
			`{"tenant":"` + slotco + `","to_shard":"eu-west-1"} {}`, `{"tenant":1,"to_shard":"eu-west-1"}`, `not json`, ``} {
			resp, b := rg.do(t, "POST", "/admin/v1/moves", tokAdmin, body)
			wantKind(t, resp, b, 400, "invalid-body")
		}
	})
	t.Run("unknown shard, unknown tenant", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"`+slotco+`","to_shard":"mars-1"}`)
		wantKind(t, resp, b, 400, "unknown-shard")
		resp, b = rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"neverco","to_shard":"eu-west-1"}`)
		wantKind(t, resp, b, 404, "tenant-not-found")
	})
	t.Run("conflicts are 409", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"`+slotco+`","to_shard":"us-east-1"}`)
		wantKind(t, resp, b, 409, "conflict") // already there
		resp, b = rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"`+slotco+`","to_shard":"us-east-9"}`)
		wantKind(t, resp, b, 409, "conflict") // draining
		resp, b = rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"resco","to_shard":"us-east-1"}`)
		wantKind(t, resp, b, 409, "region-pinned")
		if len(node.Map().Moves()) != 0 {
			t.Fatalf("a refused request recorded a move: %+v", node.Map().Moves())
		}
	})

	var first string
	t.Run("request, get, conflict while moving", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"`+slotco+`","to_shard":"eu-west-1"}`)
		wantStatus(t, resp, b, 202)
		var acc map[string]any
		_ = json.Unmarshal(b, &acc)
		first, _ = acc["id"].(string)
		if len(acc) != 2 || !strings.HasPrefix(first, "mv-") || acc["phase"] != "requested" ||
			resp.Header.Get("Location") != "/admin/v1/moves/"+first {
			t.Fatalf("answer %s, Location %q", b, resp.Header.Get("Location"))
		}
		// The move is in this router's copy when the answer is sent.
		if mv, ok := node.Map().ActiveMove(slotco); !ok || mv.ID != first || mv.From != "us-east-1" || mv.To != "eu-west-1" {
			t.Fatalf("map has %+v %v", mv, ok)
		}
		resp, b = rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"`+slotco+`","to_shard":"eu-west-2"}`)
		wantKind(t, resp, b, 409, "tenant-moving")

		resp, b = rg.do(t, "GET", "/admin/v1/moves/"+first, tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var got map[string]any
		_ = json.Unmarshal(b, &got)
		for _, k := range []string{"id", "tenant", "from_shard", "to_shard", "phase", "rows_copied", "rows_total",
			"repairs", "pause_ms", "error", "created_at", "updated_at"} {
			if _, ok := got[k]; !ok {
				t.Fatalf("GET answer %s lacks %s", b, k)
			}
		}
		if len(got) != 12 || got["tenant"] != slotco || got["from_shard"] != "us-east-1" || got["phase"] != "requested" {
			t.Fatalf("GET answer %s", b)
		}
		resp, b = rg.do(t, "HEAD", "/admin/v1/moves/"+first, tokAdmin, "")
		wantStatus(t, resp, b, 200)
		resp, b = rg.do(t, "GET", "/admin/v1/moves/mv-999999", tokAdmin, "")
		wantKind(t, resp, b, 404, "move-not-found")
		resp, b = rg.do(t, "GET", "/admin/v1/moves/"+strings.Repeat("m", 129), tokAdmin, "")
		wantKind(t, resp, b, 400, "invalid-path")
	})
	t.Run("region pin allows the region's other shard", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"resco","to_shard":"`+otherEU+`"}`)
		wantStatus(t, resp, b, 202)
	})

	t.Run("cancel", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/moves/"+first+"/cancel", tokAdmin, "")
		wantStatus(t, resp, b, 202)
		var mv shardmap.Move
		if err := json.Unmarshal(b, &mv); err != nil || mv.ID != first || mv.Phase != shardmap.PhaseCancelled {
			t.Fatalf("cancel answer %s", b)
		}
		if m, _ := node.Map().Move(first); m.Phase != shardmap.PhaseCancelled {
			t.Fatalf("map has %+v", m)
		}
		resp, b = rg.do(t, "POST", "/admin/v1/moves/"+first+"/cancel", tokAdmin, "")
		wantStatus(t, resp, b, 202) // a retried cancel
		resp, b = rg.do(t, "POST", "/admin/v1/moves/mv-999999/cancel", tokAdmin, "")
		wantKind(t, resp, b, 404, "move-not-found")

		// Walk resco's move to cutover as the controller would; then it is past cancelling.
		var resMove string
		for _, m := range node.Map().Moves() {
			if m.Tenant == "resco" {
				resMove = m.ID
			}
		}
		ctx := t.Context()
		var cursorAt uint64
		for _, cmd := range []shardmap.Command{shardmap.SetMovePhase{ID: resMove, Phase: shardmap.PhaseDualWrite},
			shardmap.SetMovePhase{ID: resMove, Phase: shardmap.PhaseBackfill},
			shardmap.MoveProgress{ID: resMove, CopiedUpTo: &shardmap.MoveKey{Collection: "notes", ID: "n-42"}}} {
			idx, err := node.Apply(ctx, cmd)
			if err != nil {
				t.Fatal(err)
			}
			cursorAt = idx
		}
		// The backfill's cursor is in the move's JSON once recorded (absent before: the GET
		// answer of the requested move above has 12 fields).
		if err := (NodeMap{Node: node}).WaitVersion(ctx, cursorAt); err != nil {
			t.Fatal(err)
		}
		resp, b = rg.do(t, "GET", "/admin/v1/moves/"+resMove, tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var withCursor map[string]any
		_ = json.Unmarshal(b, &withCursor)
		if c, _ := withCursor["copied_up_to"].(map[string]any); len(c) != 2 || c["collection"] != "notes" || c["id"] != "n-42" {
			t.Fatalf("GET answer in backfill with a cursor %s", b)
		}
		if _, err := node.Apply(ctx, shardmap.SetMovePhase{ID: resMove, Phase: shardmap.PhaseVerify}); err != nil {
			t.Fatal(err)
		}
		idx, err := node.Apply(ctx, shardmap.Cutover{ID: resMove})
		if err != nil {
			t.Fatal(err)
		}
		if err := (NodeMap{Node: node}).WaitVersion(ctx, idx); err != nil {
			t.Fatal(err)
		}
		resp, b = rg.do(t, "POST", "/admin/v1/moves/"+resMove+"/cancel", tokAdmin, "")
		wantKind(t, resp, b, 409, "move-not-cancellable")
		// After cutover resco is pinned to the other eu shard; its region pin still holds.
		rg.nodes["eu-west"].mu.Lock()
		rg.nodes["eu-west"].tenants["resco"] = otherEU
		rg.nodes["eu-west"].mu.Unlock()
		if _, err := node.Apply(ctx, shardmap.SetMovePhase{ID: resMove, Phase: shardmap.PhaseCleanup}); err != nil {
			t.Fatal(err)
		}
		if _, err := node.Apply(ctx, shardmap.SetMovePhase{ID: resMove, Phase: shardmap.PhaseDone}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 5*time.Second, func() error {
			if mv, ok := node.Map().ActiveMove("resco"); ok {
				return fmt.Errorf("resco still has move %+v", mv)
			}
			return nil
		})
		resp, b = rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"resco","to_shard":"us-east-1"}`)
		wantKind(t, resp, b, 409, "region-pinned")
		// A cancelled move frees the tenant for a new one.
		resp, b = rg.do(t, "POST", "/admin/v1/moves", tokAdmin, `{"tenant":"`+slotco+`","to_shard":"eu-west-2"}`)
		wantStatus(t, resp, b, 202)
	})

	t.Run("list", func(t *testing.T) {
		list := func(query string) []shardmap.Move {
			t.Helper()
			resp, b := rg.do(t, "GET", "/admin/v1/moves"+query, tokAdmin, "")
			wantStatus(t, resp, b, 200)
			var ans struct {
				Items []shardmap.Move `json:"items"`
			}
			if err := json.Unmarshal(b, &ans); err != nil || ans.Items == nil {
				t.Fatalf("list answer %s", b)
			}
			return ans.Items
		}
		all := list("")
		if len(all) != 3 {
			t.Fatalf("%d moves, want 3", len(all))
		}
		for i := 1; i < len(all); i++ {
			if all[i-1].CreatedAt.Before(all[i].CreatedAt) || compareMoveIDs(all[i-1].ID, all[i].ID) < 0 {
				t.Fatalf("not newest first: %+v", all)
			}
		}
		if got := list("?tenant=" + slotco); len(got) != 2 || got[0].Phase != shardmap.PhaseRequested || got[1].ID != first {
			t.Fatalf("tenant filter: %+v", got)
		}
		if got := list("?tenant=" + slotco + "&phase=cancelled"); len(got) != 1 || got[0].ID != first {
			t.Fatalf("tenant+phase filter: %+v", got)
		}
		if got := list("?phase=done"); len(got) != 1 || got[0].Tenant != "resco" {
			t.Fatalf("phase filter: %+v", got)
		}
		if got := list("?tenant=neverco"); len(got) != 0 {
			t.Fatalf("unknown tenant: %+v", got)
		}
		for _, q := range []string{"?phase=bogus", "?tenant=BAD", "?limit=1", "?tenant=a&tenant=b", "?phase=done&phase=failed", "?tenant=%zz"} {
			resp, b := rg.do(t, "GET", "/admin/v1/moves"+q, tokAdmin, "")
			wantKind(t, resp, b, 400, "invalid-query")
		}
	})
}

func TestAdminTenantsList(t *testing.T) {
	rg, node := newMapRig(t)
	pinned := []string{"alpha", "bravo", "charlie", "delta", "echo"}
	for _, id := range pinned {
		resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, `{"id":"`+id+`","region":"eu-west"}`)
		wantStatus(t, resp, b, 201)
	}
	// A slot-placed tenant: only its shard's rows know it (the map has no entry for it).
	slotco := slotTenant(t, node.Map(), "slotco", "us-east-1")
	resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, `{"id":"`+slotco+`"}`)
	wantStatus(t, resp, b, 201)
	pins := node.Map().Pins()
	// alpha also has a row on us-east-1 (a copy awaiting cleanup): listed once, on its pin.
	rg.nodes["us-east"].mu.Lock()
	rg.nodes["us-east"].extraRows = map[string][]string{"us-east-1": {"alpha"}}
	rg.nodes["us-east"].mu.Unlock()
	names := slices.Sorted(slices.Values(append(slices.Clone(pinned), slotco)))

	get := func(query string, pinnedOnly bool) (TenantsAnswer, *http.Response) {
		t.Helper()
		resp, b := rg.do(t, "GET", "/admin/v1/tenants"+query, tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var ans TenantsAnswer
		if err := json.Unmarshal(b, &ans); err != nil || ans.Items == nil || ans.PinnedOnly != pinnedOnly {
			t.Fatalf("answer %s, want pinned_only %v", b, pinnedOnly)
		}
		return ans, resp
	}
	ans, resp := get("", false)
	if len(ans.Items) != len(names) || ans.NextCursor != nil || resp.Header.Get("Link") != "" {
		t.Fatalf("all: %+v", ans)
	}
	for i, it := range ans.Items {
		if it.ID != names[i] {
			t.Fatalf("item %d: %+v, want %s", i, it, names[i])
		}
		if it.ID == slotco {
			if it.Shard != "us-east-1" || it.HomeRegion != "us-east" || it.Pinned || it.Region != "" || it.Epoch != 1 || it.Moving {
				t.Fatalf("slot-placed item: %+v", it)
			}
			continue
		}
		if it.Shard != pins[it.ID] || it.HomeRegion != "eu-west" || !it.Pinned || it.Region != "eu-west" || it.Epoch != 1 || it.Moving {
			t.Fatalf("item %d: %+v", i, it)
		}
	}

	// Pages of 1 and 2 through the cursor, with the Link header: every tenant once, in order.
	for _, limit := range []string{"1", "2"} {
		var seen []string
		query := "?limit=" + limit
		for range 2 * len(names) {
			ans, resp := get(query, false)
			for _, it := range ans.Items {
				seen = append(seen, it.ID)
			}
			if ans.NextCursor == nil {
				break
			}
			link := resp.Header.Get("Link")
			if !strings.HasSuffix(link, `>; rel="next"`) || !strings.Contains(link, url.QueryEscape(*ans.NextCursor)) {
				t.Fatalf("Link %q for cursor %q", link, *ans.NextCursor)
			}
			query = "?limit=" + limit + "&cursor=" + url.QueryEscape(*ans.NextCursor)
		}
		if !slices.Equal(seen, names) {
			t.Fatalf("pages of %s gave %v, want %v", limit, seen, names)
		}
	}

	// The shard filter, and a cursor bound to it; the extra row of alpha on us-east-1 is not
	// alpha's placement.
	if ans, _ := get("?shard=us-east-1", false); len(ans.Items) != 1 || ans.Items[0].ID != slotco {
		t.Fatalf("shard us-east-1: %+v, want only %s", ans.Items, slotco)
	}
	shard := pins["alpha"]
	var want []string
	for _, id := range pinned {
		if pins[id] == shard {
			want = append(want, id)
		}
	}
	ans, _ = get("?shard="+shard, false)
	if len(ans.Items) != len(want) {
		t.Fatalf("shard %s: %+v, want %v", shard, ans.Items, want)
	}
	first, _ := get("?limit=1", false)
	for _, q := range []string{
		"?shard=" + shard + "&cursor=" + url.QueryEscape(*first.NextCursor), // made for another filter
		"?cursor=" + url.QueryEscape(*first.NextCursor+"x"),                 // altered
		"?cursor=abc", "?cursor=",
	} {
		resp, b := rg.do(t, "GET", "/admin/v1/tenants"+q, tokAdmin, "")
		wantKind(t, resp, b, 400, "invalid-cursor")
	}
	for _, q := range []string{"?limit=0", "?limit=201", "?limit=x", "?limit=-1", "?shard=Bad!", "?region=eu-west", "?limit=1&limit=2"} {
		resp, b := rg.do(t, "GET", "/admin/v1/tenants"+q, tokAdmin, "")
		wantKind(t, resp, b, 400, "invalid-query")
	}
	resp, b = rg.do(t, "GET", "/admin/v1/tenants?shard=mars-1", tokAdmin, "")
	wantKind(t, resp, b, 400, "unknown-shard")
	resp, b = rg.do(t, "GET", "/admin/v1/tenants", tokAcme, "")
	wantKind(t, resp, b, 403, "forbidden")

	// An API node that cannot list its shards (no worker role): the map's pins, said so.
	rg.nodes["us-east"].mu.Lock()
	rg.nodes["us-east"].listStatus = http.StatusNotImplemented
	rg.nodes["us-east"].mu.Unlock()
	if ans, _ := get("", true); len(ans.Items) != len(pinned) || slices.ContainsFunc(ans.Items, func(it TenantListItem) bool { return it.ID == slotco }) {
		t.Fatalf("pinned-only list: %+v", ans.Items)
	}
	// One that fails: 503, not a short list.
	rg.nodes["us-east"].mu.Lock()
	rg.nodes["us-east"].listStatus = http.StatusInternalServerError
	rg.nodes["us-east"].mu.Unlock()
	resp, b = rg.do(t, "GET", "/admin/v1/tenants", tokAdmin, "")
	wantKind(t, resp, b, 503, "service-unavailable")
}

// TestAdminMovesWithoutMap: a router whose map has no local copy answers 503, never panics.
func TestAdminMovesWithoutMap(t *testing.T) {
	rg := newRig(t, nil) // fakeMap: View is nil
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/admin/v1/moves", ""}, {"GET", "/admin/v1/moves/mv-1", ""}, {"POST", "/admin/v1/moves/mv-1/cancel", ""},
		{"GET", "/admin/v1/tenants", ""}, {"POST", "/admin/v1/moves", `{"tenant":"acme","to_shard":"eu-west-1"}`},
	} {
		resp, b := rg.do(t, tc.method, tc.path, tokAdmin, tc.body)
		wantKind(t, resp, b, 503, "service-unavailable")
		if resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s %s: no Retry-After", tc.method, tc.path)
		}
	}
}

func FuzzDecodeMoveRequest(f *testing.F) {
	for _, s := range []string{`{"tenant":"acme","to_shard":"eu-west-1"}`, `{"tenant":"acme"}`, `{}`, `[]`, `{"tenant":"a","to_shard":"b"} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tenant, to, err := DecodeMoveRequest(b)
		if err == nil && (tenant == "" || to == "") {
			t.Fatalf("accepted %q: %q %q", b, tenant, to)
		}
	})
}

// FuzzTenantCursor: any cursor either is refused or yields a valid tenant id, and a cursor the
// router made decodes to what it was made from, for its own shard filter only.
func FuzzTenantCursor(f *testing.F) {
	s := &Server{cfg: Config{ClusterToken: "cluster-secret"}}
	f.Add(s.encodeTenantCursor("acme", ""), "", "acme")
	f.Add(s.encodeTenantCursor("globex", "eu-west-1"), "eu-west-1", "globex")
	f.Add("abc.def", "", "acme")
	f.Fuzz(func(t *testing.T, cur, shard, last string) {
		if got, err := s.decodeTenantCursor(cur, shard); err == nil {
			if !ids.ValidTenant(got) {
				t.Fatalf("cursor %q gave bad id %q", cur, got)
			}
			if cur != s.encodeTenantCursor(got, shard) {
				t.Fatalf("cursor %q accepted, but the router spells it %q", cur, s.encodeTenantCursor(got, shard))
			}
		}
		// The handler refuses a shard filter that is not a shard id before it looks at a
		// cursor, so only those (and none) need to round-trip.
		if !ids.ValidTenant(last) || (shard != "" && !ids.ValidShard(shard)) {
			return
		}
		enc := s.encodeTenantCursor(last, shard)
		if got, err := s.decodeTenantCursor(enc, shard); err != nil || got != last {
			t.Fatalf("round trip of %q/%q: %q %v", last, shard, got, err)
		}
		if _, err := s.decodeTenantCursor(enc, shard+"x"); err == nil {
			t.Fatalf("cursor for %q accepted for another filter", shard)
		}
	})
}
