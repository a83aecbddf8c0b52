package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/internal/testenv"
	"github.com/meridian-dev/meridian/migrations"
	"github.com/meridian-dev/meridian/replication"
)

// standbyEnv is one shard homed in eu-west on a real primary, with a real streaming standby that
// is us-east's copy, and two nodes: home (eu-west, takes the writes) and local (us-east, reads
// from its standby).
type standbyEnv struct {
	primary, standby *localsrv.Postgres
	db               string
	maps             *staticMap
	home, local      *env
}

const homeRegion = "eu-west"

func newStandbyEnv(t *testing.T, opts ...func(*nodeConfig)) *standbyEnv {
	t.Helper()
	ctx := context.Background()
	// synchronous_commit on, as in production: a commit is flushed, hence streamed, at once
	// (test clusters default to off, where the WAL writer ships it up to 200 ms later).
	primary := testenv.PostgresWith(t, localsrv.PostgresOptions{Settings: map[string]string{"synchronous_commit": "on"}})
	se := &standbyEnv{primary: primary, db: fmt.Sprintf("shard_sb_%d", dbSeq.Add(1))}
	if err := se.primary.CreateDatabase(ctx, se.db); err != nil {
		t.Fatal(err)
	}
	if res, err := migrations.Apply(ctx, map[string]string{"s1": se.primary.DSN(se.db)}); err != nil {
		t.Fatalf("migrations: %v %+v", err, res)
	}
	se.standby = testenv.Standby(t, se.primary)
	se.maps = &staticMap{version: 3, pins: map[string]string{}, def: "s1", shards: map[string]shards.Info{
		"s1": {ID: "s1", HomeRegion: homeRegion, Database: se.db,
			Endpoints: map[string]string{homeRegion: se.primary.Addr(), region: se.standby.Addr()}},
	}}
	se.home = se.node(t, homeRegion)
	se.local = se.node(t, region, opts...)
	return se
}

// node starts an API node of nodeRegion over the shared map.
func (se *standbyEnv) node(t *testing.T, nodeRegion string, opts ...func(*nodeConfig)) *env {
	t.Helper()
	e := &env{t: t, pg: se.primary, maps: se.maps, dbs: map[string]string{"s1": se.db}}
	e.startNode(nodeRegion, append([]func(*nodeConfig){func(nc *nodeConfig) { nc.Conns.MaxConns = 10 }}, opts...)...)
	return e
}

// waitReplayed waits until the standby has replayed the write behind a Consistency-Token.
func (se *standbyEnv) waitReplayed(t *testing.T, token string) {
	t.Helper()
	tok, err := replication.DecodeToken(token)
	if err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := se.standby.WaitReplayed(ctx, tok.LSN.String()); err != nil {
		t.Fatal(err)
	}
}

// setReplay pauses or resumes WAL replay on the standby (superuser).
func (se *standbyEnv) setReplay(t *testing.T, paused bool) {
	t.Helper()
	fn := "pg_wal_replay_resume()"
	if paused {
		fn = "pg_wal_replay_pause()"
	}
	if err := se.standby.Exec(context.Background(), "SELECT "+fn); err != nil {
		t.Fatal(err)
	}
}

func wantSource(t *testing.T, r result, status int, source string) {
	t.Helper()
	if r.StatusCode != status || r.Header.Get("X-Read-Source") != source {
		t.Fatalf("status %d source %q, want %d %q: %s", r.StatusCode, r.Header.Get("X-Read-Source"), status, source, r.Body)
	}
}

func TestStandbyReads(t *testing.T) {
	se := newStandbyEnv(t)
	se.maps.pins["acme"], se.maps.pins["other"] = "s1", "s1"
	for _, tn := range []string{"acme", "other"} {
		if r := se.home.do("POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"`+tn+`","shard":"s1"}`, nil); r.StatusCode != 201 {
			t.Fatalf("create tenant %s: %d %s", tn, r.StatusCode, r.Body)
		}
	}
	rw := "Bearer " + se.home.token("acme", "data:read data:write")
	w := se.home.do("PUT", "/v1/collections/notes/records/n1", rw, `{"data":{"v":"one"}}`, nil)
	if w.StatusCode != 201 {
		t.Fatalf("put: %d %s", w.StatusCode, w.Body)
	}
	// The local node refuses the write: the tenant is homed in eu-west.
	wantProblem(t, se.local.do("PUT", "/v1/collections/notes/records/n1", rw, `{"data":{}}`, nil), 421)
	se.waitReplayed(t, w.Header.Get("Consistency-Token"))

	path := "/v1/collections/notes/records/n1"
	r := se.local.do("GET", path, rw, "", nil)
	wantSource(t, r, 200, "replica")
	if rec := decodeRecord(t, r.Body); rec.Version != 1 || !jsonEqual(rec.Data, `{"v":"one"}`) {
		t.Fatalf("replica read %+v", rec)
	}
	wantSource(t, se.local.do("GET", "/v1/collections/notes/records", rw, "", nil), 200, "replica")
	wantSource(t, se.local.do("GET", "/v1/collections/notes/records?ids=n1,zz", rw, "", nil), 200, "replica")
	// Row-level security holds on the standby: another tenant of the shard sees nothing.
	ro := "Bearer " + se.home.token("other", "data:read")
	wantSource(t, se.local.do("GET", path, ro, "", nil), 404, "replica")
	if r := se.local.do("GET", "/v1/collections/notes/records", ro, "", nil); r.Header.Get("X-Read-Source") != "replica" || !strings.Contains(r.Body, `"items":[]`) {
		t.Fatalf("other tenant's list on the replica: %v %s", r.Header, r.Body)
	}
	// The home node reads its own primary.
	wantSource(t, se.home.do("GET", path, rw, "", nil), 200, "primary")

	t.Run("strong", func(t *testing.T) {
		r := se.local.do("GET", path, rw, "", map[string]string{"Prefer": "consistency=strong"})
		wantSource(t, r, 200, "primary")
		if r.Header.Get("Preference-Applied") != "consistency=strong" {
			t.Fatalf("Preference-Applied %q", r.Header.Get("Preference-Applied"))
		}
		wantSource(t, se.local.do("GET", "/v1/collections/notes/records?ids=n1", rw, "", map[string]string{"Prefer": "consistency=strong"}), 200, "primary")
	})

	t.Run("malformed token", func(t *testing.T) {
		for _, tok := range []string{"garbage!", "MTpzMTowLzE2QjM3NDg", replication.Token{Shard: "S_1", LSN: 1}.Encode()} {
			wantProblem(t, se.local.do("GET", path, rw, "", map[string]string{"Consistency-Token": tok}), 400)
			wantProblem(t, se.local.do("GET", "/v1/collections/notes/records", rw, "", map[string]string{"Consistency-Token": tok}), 400)
			wantProblem(t, se.home.do("GET", path, rw, "", map[string]string{"Consistency-Token": tok}), 400)
		}
	})

	t.Run("read your writes", func(t *testing.T) {
		sources := map[string]int{}
		for i := range 50 {
			body := fmt.Sprintf(`{"data":{"v":%d}}`, i)
			w := se.home.do("PUT", path, rw, body, nil)
			if w.StatusCode != 200 {
				t.Fatalf("put %d: %d %s", i, w.StatusCode, w.Body)
			}
			want := decodeRecord(t, w.Body).Version
			hdr := map[string]string{"Consistency-Token": w.Header.Get("Consistency-Token")}
			var got record
			if i%2 == 0 {
				r := se.local.do("GET", path, rw, "", hdr)
				if r.StatusCode != 200 {
					t.Fatalf("read %d: %d %s", i, r.StatusCode, r.Body)
				}
				sources[r.Header.Get("X-Read-Source")]++
				got = decodeRecord(t, r.Body)
			} else {
				r := se.local.do("GET", "/v1/collections/notes/records?ids=n1", rw, "", hdr)
				var lb listBody
				if r.StatusCode != 200 || json.Unmarshal([]byte(r.Body), &lb) != nil || len(lb.Items) != 1 {
					t.Fatalf("batch read %d: %d %s", i, r.StatusCode, r.Body)
				}
				sources[r.Header.Get("X-Read-Source")]++
				got = lb.Items[0]
			}
			if got.Version != want || !jsonEqual(got.Data, fmt.Sprintf(`{"v":%d}`, i)) {
				t.Fatalf("write %d: read version %d %s after writing version %d", i, got.Version, got.Data, want)
			}
		}
		if sources["replica"]+sources["primary"] != 50 {
			t.Fatalf("sources %v", sources)
		}
		t.Logf("read-your-writes sources: %v", sources)
	})

	var lastTok string
	t.Run("paused replay", func(t *testing.T) {
		w := se.home.do("PUT", path, rw, `{"data":{"v":"before"}}`, nil)
		se.waitReplayed(t, w.Header.Get("Consistency-Token"))
		se.setReplay(t, true)
		defer se.setReplay(t, false)
		w = se.home.do("PATCH", path, rw, `{"data":{"v":"paused"}}`, map[string]string{"Content-Type": "application/merge-patch+json"})
		if w.StatusCode != 200 {
			t.Fatalf("patch: %d %s", w.StatusCode, w.Body)
		}
		want := decodeRecord(t, w.Body).Version
		lastTok = w.Header.Get("Consistency-Token")
		// With its token the read waits, then goes to the primary and sees the write.
		r := se.local.do("GET", path, rw, "", map[string]string{"Consistency-Token": w.Header.Get("Consistency-Token")})
		wantSource(t, r, 200, "primary")
		if got := decodeRecord(t, r.Body); got.Version != want {
			t.Fatalf("token read got version %d, want %d", got.Version, want)
		}
		// Without it, the standby (lag under 5 s) answers with what it has replayed.
		r = se.local.do("GET", path, rw, "", nil)
		wantSource(t, r, 200, "replica")
		if got := decodeRecord(t, r.Body); got.Version != want-1 {
			t.Fatalf("default read got version %d, want the replayed %d", got.Version, want-1)
		}
		// A token of another shard does not hold the read back.
		other := replication.Token{Shard: "s9", LSN: 1 << 40}.Encode()
		wantSource(t, se.local.do("GET", path, rw, "", map[string]string{"Consistency-Token": other}), 200, "replica")
	})
	se.waitReplayed(t, lastTok) // replay resumed

	t.Run("stopped standby", func(t *testing.T) {
		if err := se.standby.Stop(); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			r := se.local.do("GET", path, rw, "", nil)
			wantSource(t, r, 200, "primary")
			if i == 0 {
				continue
			}
			wantSource(t, se.local.do("GET", "/v1/collections/notes/records?limit=5", rw, "", nil), 200, "primary")
		}
	})
}

// TestStandbyLagFallsBack: a standby lagging more than max_staleness no longer serves default
// reads.
func TestStandbyLagFallsBack(t *testing.T) {
	se := newStandbyEnv(t, func(nc *nodeConfig) {
		nc.Store.MaxStaleness = 300 * time.Millisecond
		nc.Store.StandbyInterval = 20 * time.Millisecond
	})
	se.maps.pins["acme"] = "s1"
	if r := se.home.do("POST", "/internal/v1/tenants", "Bearer cluster-token", `{"id":"acme","shard":"s1"}`, nil); r.StatusCode != 201 {
		t.Fatalf("create tenant: %d %s", r.StatusCode, r.Body)
	}
	rw := "Bearer " + se.home.token("acme", "data:read data:write")
	path := "/v1/collections/notes/records/n1"
	w := se.home.do("PUT", path, rw, `{"data":{"v":1}}`, nil)
	se.waitReplayed(t, w.Header.Get("Consistency-Token"))
	wantSource(t, se.local.do("GET", path, rw, "", nil), 200, "replica")

	se.setReplay(t, true)
	defer se.setReplay(t, false)
	if w := se.home.do("PUT", path, rw, `{"data":{"v":2}}`, nil); w.StatusCode != 200 {
		t.Fatalf("put: %d %s", w.StatusCode, w.Body)
	}
	// Once the unreplayed WAL is older than 300 ms, reads go to the primary and see version 2.
	testenv.WaitFor(t, 10*time.Second, func() error {
		r := se.local.do("GET", path, rw, "", nil)
		if r.Header.Get("X-Read-Source") != "primary" {
			return fmt.Errorf("still served by %q", r.Header.Get("X-Read-Source"))
		}
		if got := decodeRecord(t, r.Body); got.Version != 2 {
			return fmt.Errorf("primary read version %d", got.Version)
		}
		return nil
	})
}
