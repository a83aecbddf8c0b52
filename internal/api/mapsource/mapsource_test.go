package mapsource

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/shardmap"
)

type fixed struct{ m *shardmap.Map }

func (f fixed) Map() *shardmap.Map                        { return f.m }
func (f fixed) WaitVersion(context.Context, uint64) error { return nil }
func (f fixed) Age() time.Duration                        { return time.Second }

func TestAdapter(t *testing.T) {
	slots := `"` + strings.Repeat(`s1","`, 3) + `s1"`
	m, err := shardmap.DecodeMap([]byte(`{"version":7,"slot_count":4,"regions":["us-east","eu-west"],
		"shards":[{"id":"s1","home_region":"us-east","database":"d1","endpoints":{"us-east":"h:1"},"state":"active"},
		          {"id":"s2","home_region":"eu-west","database":"d2","endpoints":{"eu-west":"h:2"},"state":"active"}],
		"slots":[` + slots + `],"pins":{"acme":"s2"},"epochs":{"acme":3},"moves":[],"nodes":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	a := Adapter{Src: fixed{m}}
	r, err := a.Lookup("acme")
	if err != nil || r.Shard != "s2" || r.HomeRegion != "eu-west" || r.Epoch != 3 || r.MapVersion != 7 {
		t.Fatalf("acme: %+v %v", r, err)
	}
	if r, _ := a.Lookup("other"); r.Shard != "s1" {
		t.Fatalf("other: %+v", r)
	}
	if _, err := a.Lookup("BAD"); err == nil {
		t.Fatal("bad tenant accepted")
	}
	if s, ok := a.ShardInfo("s2"); !ok || s.Database != "d2" || s.Endpoints["eu-west"] != "h:2" {
		t.Fatalf("shard: %+v", s)
	}
	if len(a.Shards()) != 2 || a.Version() != 7 {
		t.Fatal("shards/version")
	}
	if home, ok := a.ShardHome("s2"); !ok || home != "eu-west" {
		t.Fatalf("home of s2: %q %v", home, ok)
	}
	if _, ok := a.ShardHome("s9"); ok {
		t.Fatal("unknown shard has a home")
	}
	if ids := a.ShardIDs(); len(ids) != 2 || !((ids[0] == "s1" && ids[1] == "s2") || (ids[0] == "s2" && ids[1] == "s1")) {
		t.Fatalf("shard ids %v", ids)
	}
}

// TestAdapterMirrorTo: a tenant's route names its move's target while the move is in
// dual_write, backfill or verify, and nothing before (requested), from the cutover on, or after
// the move ended.
func TestAdapterMirrorTo(t *testing.T) {
	slots := `"` + strings.Repeat(`s1","`, 3) + `s1"`
	m, err := shardmap.DecodeMap([]byte(`{"version":9,"slot_count":4,"regions":["us-east","eu-west"],
		"shards":[{"id":"s1","home_region":"us-east","database":"d1","endpoints":{"us-east":"h:1"},"state":"active"},
		          {"id":"s2","home_region":"eu-west","database":"d2","endpoints":{"eu-west":"h:2"},"state":"active"}],
		"slots":[` + slots + `],"pins":{"cut":"s2"},"epochs":{"cut":2},"nodes":{},
		"moves":[{"id":"m1","tenant":"dual","from_shard":"s1","to_shard":"s2","phase":"dual_write"},
		         {"id":"m2","tenant":"fill","from_shard":"s1","to_shard":"s2","phase":"backfill"},
		         {"id":"m3","tenant":"check","from_shard":"s1","to_shard":"s2","phase":"verify"},
		         {"id":"m4","tenant":"asked","from_shard":"s1","to_shard":"s2","phase":"requested"},
		         {"id":"m5","tenant":"cut","from_shard":"s1","to_shard":"s2","phase":"cutover"},
		         {"id":"m6","tenant":"gone","from_shard":"s1","to_shard":"s2","phase":"done"},
		         {"id":"m7","tenant":"check","from_shard":"s1","to_shard":"s2","phase":"cancelled"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	a := Adapter{Src: fixed{m}}
	for tenant, want := range map[string]string{"dual": "s2", "fill": "s2", "check": "s2", "asked": "", "cut": "", "gone": "", "other": ""} {
		r, err := a.Lookup(tenant)
		if err != nil || r.MirrorTo != want {
			t.Errorf("%s: %+v %v, want MirrorTo %q", tenant, r, err, want)
		}
	}
	if r, _ := a.Lookup("cut"); r.Shard != "s2" || r.Epoch != 2 {
		t.Errorf("cut: %+v", r)
	}
}
