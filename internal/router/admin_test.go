package router

import (
	"encoding/json"
	"testing"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

func TestAdminTenants(t *testing.T) {
	rg := newRig(t, nil)
	rg.m.createFn = func(id, region string) (Route, error) {
		if region == "eu-west" {
			rg.m.set(id, Route{Shard: "eu-west-1", HomeRegion: "eu-west", Pinned: true}, rg.m.Version()+1)
		}
		return rg.m.Lookup(id)
	}
	t.Run("tenant token is forbidden", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAcme, `{"id":"newco"}`)
		wantStatus(t, resp, b, 403)
		resp, b = rg.do(t, "GET", "/admin/v1/shardmap", "", "")
		wantStatus(t, resp, b, 401)
	})
	t.Run("create with region", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, `{"id":"newco","region":"eu-west"}`)
		wantStatus(t, resp, b, 201)
		var got map[string]any
		_ = json.Unmarshal(b, &got)
		want := map[string]any{"id": "newco", "shard": "eu-west-1", "home_region": "eu-west", "pinned": true}
		if len(got) != len(want) {
			t.Fatalf("answer %s", b)
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("answer %s: %s = %v, want %v", b, k, got[k], v)
			}
		}
		if rg.nodes["eu-west"].tenants["newco"] != "eu-west-1" {
			t.Fatalf("tenant not recorded on the home region's shard: %v", rg.nodes["eu-west"].tenants)
		}
	})
	t.Run("create by placement", func(t *testing.T) {
		resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, `{"id":"slotco"}`)
		wantStatus(t, resp, b, 201)
		if rg.nodes["us-east"].tenants["slotco"] != "us-east-1" {
			t.Fatal("tenant not recorded on its slot's shard")
		}
	})
	t.Run("existing is 409", func(t *testing.T) {
		for _, body := range []string{`{"id":"newco"}`, `{"id":"slotco"}`, `{"id":"newco","region":"eu-west"}`} {
			resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, body)
			wantStatus(t, resp, b, 409)
		}
	})
	t.Run("bad input is 400", func(t *testing.T) {
		for _, body := range []string{`{"id":"X"}`, `{"id":"ab"}`, `{"id":"okco","region":"mars"}`,
			`{"id":"okco","extra":1}`, `{"id":"okco"} {}`, `not json`, ``} {
			resp, b := rg.do(t, "POST", "/admin/v1/tenants", tokAdmin, body)
			wantStatus(t, resp, b, 400)
		}
	})
	t.Run("get", func(t *testing.T) {
		resp, b := rg.do(t, "GET", "/admin/v1/tenants/newco", tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var got map[string]any
		_ = json.Unmarshal(b, &got)
		if got["shard"] != "eu-west-1" || got["home_region"] != "eu-west" || got["pinned"] != true ||
			got["epoch"] != float64(0) || got["moving"] != false || got["limits"] == nil || len(got) != 7 {
			t.Fatalf("GET answer %s", b)
		}
		resp, b = rg.do(t, "GET", "/admin/v1/tenants/neverco", tokAdmin, "")
		wantStatus(t, resp, b, 404)
		resp, b = rg.do(t, "GET", "/admin/v1/tenants/BAD", tokAdmin, "")
		wantStatus(t, resp, b, 400)
	})
	t.Run("shardmap and regions", func(t *testing.T) {
		resp, b := rg.do(t, "GET", "/admin/v1/shardmap", tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var sm MapSummary
		if err := json.Unmarshal(b, &sm); err != nil || sm.Version == 0 || len(sm.Regions) != 2 || sm.SlotCount != 1024 {
			t.Fatalf("shardmap %s", b)
		}
		resp, b = rg.do(t, "GET", "/admin/v1/regions", tokAdmin, "")
		wantStatus(t, resp, b, 200)
		var ra RegionsAnswer
		if err := json.Unmarshal(b, &ra); err != nil || ra.Leader == "" || len(ra.Regions) != 2 ||
			ra.Regions[0].ID != "eu-west" || len(ra.Regions[0].Members) != 1 || ra.Regions[0].Members[0].Role != "api" {
			t.Fatalf("regions %s", b)
		}
	})
}

func FuzzDecodeCreateTenant(f *testing.F) {
	for _, s := range []string{`{"id":"acme"}`, `{"id":"acme","region":"eu-west"}`, `{"id":1}`, `{}`, `[]`, `{"id":"a"} x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id, _, err := DecodeCreateTenant(b)
		if err == nil && !ids.ValidTenant(id) {
			t.Fatalf("accepted bad id %q", id)
		}
	})
}

func FuzzParseTraceparent(f *testing.F) {
	for _, s := range []string{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", "00-0-0-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tid, fl, ok := ParseTraceparent(s)
		if ok && (len(tid) != 32 || len(fl) != 2) {
			t.Fatalf("accepted %q as %q %q", s, tid, fl)
		}
		next := NextTraceparent(s)
		ntid, nfl, nok := ParseTraceparent(next)
		if !nok || len(next) != 55 || next[:3] != "00-" {
			t.Fatalf("NextTraceparent(%q) = %q is invalid", s, next)
		}
		if ok && (ntid != tid || nfl != fl) {
			t.Fatalf("NextTraceparent(%q) = %q: want trace %s flags %s continued", s, next, tid, fl)
		}
		if !ok && nfl != "01" {
			t.Fatalf("NextTraceparent(%q) = %q: a new trace is sampled", s, next)
		}
		if got := RequestID(s); got == "" || len(got) > 128 {
			t.Fatalf("RequestID(%q) = %q", s, got)
		}
	})
}
