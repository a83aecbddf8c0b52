package router

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// fakeEdge is an EdgeCache holding records by tenant|shard|epoch|coll|id.
type fakeEdge struct {
	mu      sync.Mutex
	entries map[string]records.Record
	lookups []string
	counted map[string]int
}

func edgeKey(tenant, shard string, epoch uint64, coll, id string) string {
	return strings.Join([]string{tenant, shard, string(rune('0' + epoch)), coll, id}, "|")
}

func (f *fakeEdge) Record(_ context.Context, tenant, shard string, epoch uint64, coll, id string) (records.Record, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := edgeKey(tenant, shard, epoch, coll, id)
	f.lookups = append(f.lookups, k)
	if r, ok := f.entries[k]; ok {
		return r, "hit"
	}
	return records.Record{}, "miss"
}

func (f *fakeEdge) Count(result string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counted[result]++
}

func (f *fakeEdge) seen() (lookups, bypasses int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.lookups), f.counted["bypass"]
}

// TestEdgeAnswersPlainRecordGET: a plain record GET whose entry the edge holds is answered by
// the router — after authentication and scope, with the node's body and headers and the
// router's own — and never reaches an API node; every read the node must judge itself is
// forwarded, most without a lookup.
func TestEdgeAnswersPlainRecordGET(t *testing.T) {
	edge := &fakeEdge{entries: map[string]records.Record{}, counted: map[string]int{}}
	rg := newRig(t, func(c *Config) { c.Edge = edge })
	rg.m.set("acme", Route{Shard: "us-east-1", HomeRegion: "us-east", Epoch: 3}, 5)
	rg.m.set("mover", Route{Shard: "us-east-1", HomeRegion: "us-east", Epoch: 3, Moving: true}, 5)
	ts := time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)
	rec := records.Record{ID: "x", Collection: "c", Version: 7, CreatedAt: ts, UpdatedAt: ts.Add(time.Second),
		Data: json.RawMessage(`{"a": [1, 2], "b": "<tag>"}`)}
	edge.entries[edgeKey("acme", "us-east-1", 3, "c", "x")] = rec
	edge.entries[edgeKey("mover", "us-east-1", 3, "c", "x")] = rec
	node := rg.nodes["us-east"]

	resp, b := rg.do(t, "GET", "/v1/collections/c/records/x", tokAcme, "", "X-Request-Id", "req-9")
	wantStatus(t, resp, b, 200)
	want, _ := records.AppendJSON(nil, rec)
	if string(b) != string(want) {
		t.Fatalf("edge body %s, want %s", b, want)
	}
	for k, v := range map[string]string{
		"Content-Type": "application/json; charset=utf-8", "ETag": `"7"`, "X-Read-Source": "cache",
		HeaderServedRegion: "us-east", "Vary": "Accept-Encoding", HeaderRequestID: "req-9",
		HeaderShardmapVersion: "5", "Content-Length": strconv.Itoa(len(want)),
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if resp.Header.Get("Content-Encoding") != "" {
		t.Errorf("edge answer is encoded: %q", resp.Header.Get("Content-Encoding"))
	}
	if n := node.hits.Load(); n != 0 {
		t.Fatalf("an edge hit reached the API node (%d requests)", n)
	}

	// Authentication and scope come first.
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", "", "")
	wantStatus(t, resp, b, 401)
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", "acme|u1|data:write", "")
	wantStatus(t, resp, b, 403)
	// Another tenant's token never reads acme's entry: the tenant is the token's.
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", "other|u1|data:read", "")
	wantStatus(t, resp, b, 200)
	if resp.Header.Get("X-Read-Source") == "cache" || node.hits.Load() != 1 {
		t.Fatalf("another tenant's read: source %q, node requests %d", resp.Header.Get("X-Read-Source"), node.hits.Load())
	}

	lookups0, bypass0 := edge.seen()
	forwarded := []struct {
		name, method, path, token, body string
		hdr                             []string
		lookup, bypass                  bool
	}{
		{"query string", "GET", "/v1/collections/c/records/x?fields=a", tokAcme, "", nil, false, true},
		{"strong", "GET", "/v1/collections/c/records/x", tokAcme, "", []string{"Prefer", "consistency=strong"}, false, true},
		{"no-cache", "GET", "/v1/collections/c/records/x", tokAcme, "", []string{"Cache-Control", "no-cache"}, false, true},
		{"pragma", "GET", "/v1/collections/c/records/x", tokAcme, "", []string{"Pragma", "no-cache"}, false, true},
		{"token", "GET", "/v1/collections/c/records/x", tokAcme, "", []string{"Consistency-Token", "abc"}, false, true},
		{"conditional", "GET", "/v1/collections/c/records/x", tokAcme, "", []string{"If-None-Match", `"7"`}, false, true},
		{"range", "GET", "/v1/collections/c/records/x", tokAcme, "", []string{"Range", "bytes=0-1"}, false, true},
		{"a body", "GET", "/v1/collections/c/records/x", tokAcme, "{}", nil, false, true},
		{"a moving tenant", "GET", "/v1/collections/c/records/x", "mover|u1|data:read", "", nil, false, true},
		{"no entry", "GET", "/v1/collections/c/records/y", tokAcme, "", nil, true, false},
		{"HEAD", "HEAD", "/v1/collections/c/records/x", tokAcme, "", nil, false, false},
		{"a list", "GET", "/v1/collections/c/records", tokAcme, "", nil, false, false},
		{"an invalid id", "GET", "/v1/collections/c/records/x:y", tokAcme, "", nil, false, false},
		{"an escaped path", "GET", "/v1/collections/c/records/%78", tokAcme, "", nil, false, false},
		{"a longer path", "GET", "/v1/collections/c/records/x/y", tokAcme, "", nil, false, false},
		{"a write", "PUT", "/v1/collections/c/records/x", tokAcme, `{"data":{}}`, nil, false, false},
	}
	for _, tc := range forwarded {
		t.Run(tc.name, func(t *testing.T) {
			before := node.hits.Load()
			l0, b0 := edge.seen()
			resp, b := rg.do(t, tc.method, tc.path, tc.token, tc.body, tc.hdr...)
			wantStatus(t, resp, b, 200)
			if node.hits.Load() != before+1 || resp.Header.Get("X-Read-Source") == "cache" {
				t.Fatalf("not forwarded: node requests %d → %d, source %q", before, node.hits.Load(), resp.Header.Get("X-Read-Source"))
			}
			l1, b1 := edge.seen()
			if (l1 > l0) != tc.lookup || (b1 > b0) != tc.bypass {
				t.Fatalf("lookups %d → %d, bypasses %d → %d; want lookup %v, bypass %v", l0, l1, b0, b1, tc.lookup, tc.bypass)
			}
		})
	}
	if l, bp := edge.seen(); l-lookups0 != 1 || bp-bypass0 != 9 {
		t.Fatalf("lookups %d, bypasses %d over the forwarded reads", l-lookups0, bp-bypass0)
	}

	// A tenant whose reads go to another region (its home, the local nodes being down) is that
	// region's to answer.
	rg.m.set("euco", Route{Shard: "eu-west-1", HomeRegion: "eu-west", Epoch: 2}, 5)
	edge.entries[edgeKey("euco", "eu-west-1", 2, "c", "x")] = rec
	rg.ups.mu.Lock()
	rg.ups.nodes[0].down = true
	rg.ups.mu.Unlock()
	resp, b = rg.do(t, "GET", "/v1/collections/c/records/x", tokEuco, "")
	wantStatus(t, resp, b, 200)
	if got := resp.Header.Get(HeaderServedRegion); got != "eu-west" || resp.Header.Get("X-Read-Source") == "cache" {
		t.Fatalf("read of a tenant served in its home region: served by %q from %q", got, resp.Header.Get("X-Read-Source"))
	}
}
