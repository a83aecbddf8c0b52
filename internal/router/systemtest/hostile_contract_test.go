package systemtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records/pgstore"
	"github.com/meridian-dev/meridian/internal/testenv"
)

// rawToken signs a compact HS256 JWT whose header and claims are written by hand, so a test can
// send what no JWT library would make (crit, a string exp).
func rawToken(header, claims string) string {
	b64 := base64.RawURLEncoding
	s := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, []byte(jwtSecret))
	mac.Write([]byte(s))
	return s + "." + b64.EncodeToString(mac.Sum(nil))
}

// wantProblemKind fails unless a is a problem+json answer of kind: its status, its type URI
// (one of alt slugs also accepted, for answers another part of the router owns) and a body that
// decodes.
func wantProblemKind(t *testing.T, a answer, kind problem.Kind, alt ...string) {
	t.Helper()
	if a.status >= 500 {
		t.Fatalf("answered %d, a 5xx for a client's bad input: %.300s", a.status, a.body)
	}
	if a.status != kind.Status || !strings.HasPrefix(a.header.Get("Content-Type"), problem.ContentType) {
		t.Fatalf("answered %d %q, want %d problem+json: %.300s", a.status, a.header.Get("Content-Type"), kind.Status, a.body)
	}
	var p problem.Problem
	if err := json.Unmarshal(a.body, &p); err != nil {
		t.Fatalf("problem body %.300s: %v", a.body, err)
	}
	slugs := append([]string{kind.Slug}, alt...)
	if !slices.ContainsFunc(slugs, func(s string) bool { return p.Type == problem.TypeBase+s }) || p.Status != kind.Status {
		t.Fatalf("problem %+v, want type %s", p, kind.Type())
	}
}

// TestHostileContract: through a real router and real API nodes, each input a hostile or
// clumsy client may send that DESIGN.md §4 "Exact shapes and rules" forbids gets its exact 4xx
// problem+json with its type slug, never a 5xx, and changes nothing: the record it aims at and
// the victim tenant's records are as they were.
func TestHostileContract(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	for _, id := range []string{"victim", "attacker"} {
		c.createTenant("us-east", id, "us-east")
	}
	victim, attacker := dataToken(t, "victim"), dataToken(t, "attacker")
	const path = "/v1/collections/notes/records/shared"
	list := "/v1/collections/notes/records"
	seed := func(tok, who string) map[string]any {
		// About 600 KiB, so a PATCH adding as much again would take the data over 1 MiB.
		a := c.do("us-west", "PUT", path, tok, `{"data":{"owner":"`+who+`","fill":"`+strings.Repeat("f", 600<<10)+`"}}`)
		if a.status != 201 {
			t.Fatalf("seed %s: %d %.300s", who, a.status, a.body)
		}
		var m map[string]any
		if err := json.Unmarshal(a.body, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	victimBefore, attackerBefore := seed(victim, "victim"), seed(attacker, "attacker")

	exp := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	iat := strconv.FormatInt(time.Now().Add(-time.Minute).Unix(), 10)
	goodClaims := `{"sub":"u","tenant":"attacker","scope":"data:read data:write","iat":` + iat + `,"exp":` + exp + `}`
	hdr := func(kv ...string) []string { return kv }
	nul := url.QueryEscape(`"\u0000"`)
	tests := []struct {
		name, method, path, tok, body string
		hdr                           []string
		kind                          problem.Kind
		alt                           []string
	}{
		{"upper-case member", "PUT", path, attacker, `{"DATA":{"owner":"x"}}`, nil, problem.InvalidBody, nil},
		{"member twice in two cases", "PUT", path, attacker, `{"data":{"owner":"x"},"DATA":{"owner":"y"}}`, nil, problem.InvalidBody, nil},
		{"member twice", "PUT", path, attacker, `{"data":{"owner":"x"},"data":{"owner":"y"}}`, nil, problem.InvalidBody, nil},
		{"member twice inside data", "POST", list, attacker, `{"data":{"owner":"x","owner":"y"}}`, nil, problem.InvalidBody, nil},
		{"trailing data", "PUT", path, attacker, `{"data":{"owner":"x"}}{"data":{}}`, nil, problem.InvalidBody, nil},
		{"patch member in another case", "PATCH", path, attacker, `{"Data":{"owner":"x"}}`, nil, problem.InvalidBody, nil},
		{"malformed query", "GET", list + "?limit=%zz", attacker, "", nil, problem.InvalidQuery, nil},
		{"semicolon in query", "GET", list + "?limit=5;order=id", attacker, "", nil, problem.InvalidQuery, nil},
		{"malformed batch query", "GET", list + "?ids=shared&fields=%", attacker, "", nil, problem.InvalidQuery, nil},
		{"weak If-Match on PUT", "PUT", path, attacker, `{"data":{"owner":"x"}}`, hdr("If-Match", `W/"1"`), problem.PreconditionFailed, nil},
		{"weak If-Match on PATCH", "PATCH", path, attacker, `{"data":{"owner":"x"}}`, hdr("If-Match", `W/"1"`), problem.PreconditionFailed, nil},
		{"weak If-Match on DELETE", "DELETE", path, attacker, "", hdr("If-Match", `W/"1"`), problem.PreconditionFailed, nil},
		{"If-None-Match * on PUT over a record", "PUT", path, attacker, `{"data":{"owner":"x"}}`, hdr("If-None-Match", "*"), problem.PreconditionFailed, nil},
		{"patch past 1 MiB", "PATCH", path, attacker, `{"data":{"pad":"` + strings.Repeat("p", 600<<10) + `"}}`, nil, problem.ContentTooLarge, nil},
		{"where value the database rejects", "GET", list + "?where[owner]=" + nul, attacker, "", nil, problem.ValueRejected, nil},
		{"where number out of range", "GET", list + "?where[n]=1e999999999", attacker, "", nil, problem.ValueRejected, nil},
		{"data number out of range", "PUT", path, attacker, `{"data":{"n":1e999999999}}`, nil, problem.ValueRejected, nil},
		{"JWT with crit", "GET", path, rawToken(`{"alg":"HS256","typ":"JWT","crit":["exp"]}`, goodClaims), "", nil, problem.Unauthorized, nil},
		{"JWT with a string exp", "GET", path, rawToken(`{"alg":"HS256","typ":"JWT"}`,
			`{"sub":"u","tenant":"victim","scope":"data:read data:write","iat":`+iat+`,"exp":"`+exp+`"}`), "", nil, problem.Unauthorized, nil},
		{"JWT with a string iat", "PUT", path, rawToken(`{"alg":"HS256","typ":"JWT"}`,
			`{"sub":"u","tenant":"victim","scope":"data:read data:write","iat":"`+iat+`","exp":`+exp+`}`), `{"data":{"owner":"x"}}`, nil, problem.Unauthorized, nil},
		// The router's admin decoder follows the same rules (its handler owns the slug).
		{"admin member in another case", "POST", "/admin/v1/tenants", adminToken(t), `{"ID":"intruder"}`, nil, problem.InvalidBody, []string{"bad-request"}},
		{"admin member twice", "POST", "/admin/v1/tenants", adminToken(t), `{"id":"intruder","id":"victim"}`, nil, problem.InvalidBody, []string{"bad-request"}},
		{"admin trailing data", "POST", "/admin/v1/tenants", adminToken(t), `{"id":"intruder"} x`, nil, problem.InvalidBody, []string{"bad-request"}},
	}
	// The well-formed token the JWT cases tamper with is accepted, so what they test is the rule.
	if a := c.do("us-east", "GET", path, rawToken(`{"alg":"HS256","typ":"JWT"}`, goodClaims), ""); a.status != 200 {
		t.Fatalf("hand-made token without the flaw: %d %.300s", a.status, a.body)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, via := range []string{"us-east", "eu-west"} {
				wantProblemKind(t, c.do(via, tt.method, tt.path, tt.tok, tt.body, tt.hdr...), tt.kind, tt.alt...)
			}
		})
	}
	// Nothing changed: both records as seeded, one live record each, no tenant "intruder".
	for _, x := range []struct {
		tok    string
		tenant string
		before map[string]any
	}{{victim, "victim", victimBefore}, {attacker, "attacker", attackerBefore}} {
		a := c.do("us-east", "GET", path, x.tok, "", "Prefer", "consistency=strong")
		var now map[string]any
		if err := json.Unmarshal(a.body, &now); err != nil || a.status != 200 ||
			now["version"] != x.before["version"] || fmt.Sprint(now["data"]) != fmt.Sprint(x.before["data"]) {
			t.Fatalf("%s's record: %d version %v → %v (%v)", x.tenant, a.status, x.before["version"], now["version"], err)
		}
		if n := c.rows(c.shards["us-east"], x.tenant, ""); n != 1 {
			t.Fatalf("%s has %d live records, want 1", x.tenant, n)
		}
	}
	if a := c.do("us-east", "GET", "/admin/v1/tenants/intruder", adminToken(t), ""); a.status != 404 {
		t.Fatalf("tenant intruder: %d %.300s", a.status, a.body)
	}
}

// freeAddr returns a loopback address nothing listens on (yet), so a router can be given an API
// node's URL before the node, which needs the router's URL, starts.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRejectedFiltersKeepReplicaReads: one shard homed in us-east whose us-west copy is a real
// streaming standby; a router and an API node in us-west, whose reads go to that standby. One
// tenant sends where[] values the database rejects — on the standby, with a Consistency-Token,
// and strong (on the primary) — and gets 400 value-rejected each time; another tenant's reads
// through the same router keep X-Read-Source: replica. The API node counts a standby unhealthy
// after a single failure, so one request counted against it would send them to the primary.
func TestRejectedFiltersKeepReplicaReads(t *testing.T) {
	primary, standby, db := shardWithStandby(t)
	verifier, err := auth.NewVerifier(auth.Config{Secret: []byte(jwtSecret)})
	if err != nil {
		t.Fatal(err)
	}
	// The router knows the API nodes from static lists (their addresses are taken first).
	nodeAddr := map[string]string{"us-east": freeAddr(t), "us-west": freeAddr(t)}
	static := map[string][]string{}
	for reg, addr := range nodeAddr {
		static[reg] = []string{"http://" + addr}
	}
	rt := startRouter(t, routerOptions{id: "us-west-router", region: "us-west", dataDir: t.TempDir(),
		raftAddr: "127.0.0.1:0", bootstrap: true, verifier: verifier, raftTune: fastRaft,
		redisAddr: testenv.Redis(t).Addr(), upstreamTimeout: 3 * time.Second, staticAPI: static,
		log: testLogger().With("node", "us-west-router")})
	bootstrapShardWithStandby(t, rt, db, primary, standby)
	for reg, addr := range nodeAddr {
		// The store's standby health as sensitive as it gets: one failure counted against the
		// standby makes it unhealthy, and no status check clears that for a second — far longer
		// than an attacker's reads and the victim's read right after them take. (Not longer:
		// the primary is sampled once an interval, and the standby's proven staleness must stay
		// under the 5 s bound.)
		startAPINode(t, reg, addr, rt.URL, verifier, func(c *pgstore.Config) {
			c.StandbyInterval, c.StandbyFailures = time.Second, 1
		})
	}
	// Tenants are created through the admin API once the router knows the home region's node.
	for _, id := range []string{"victim", "attacker"} {
		testenv.WaitFor(t, 15*time.Second, func() error {
			a, err := send("POST", rt.URL+"/admin/v1/tenants", adminToken(t), `{"id":"`+id+`","region":"us-east"}`)
			if err != nil || a.status != 201 {
				return fmt.Errorf("create %s: %d %.200s %v", id, a.status, a.body, err)
			}
			return nil
		})
	}
	victim, attacker := dataToken(t, "victim"), dataToken(t, "attacker")
	do := func(method, path, tok, body string, hdr ...string) answer {
		t.Helper()
		a, err := send(method, rt.URL+path, tok, body, hdr...)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return a
	}
	const path = "/v1/collections/notes/records/r1"
	var writeToken string // the attacker's, the last write
	for _, tok := range []string{victim, attacker} {
		a := do("PUT", path, tok, `{"data":{"owner":"me"}}`)
		if a.status != 201 {
			t.Fatalf("seed: %d %.300s", a.status, a.body)
		}
		writeToken = a.header.Get("Consistency-Token")
	}
	victimRead := func() error {
		a, err := send("GET", rt.URL+path, victim, "")
		if err != nil || a.status != 200 || a.header.Get("X-Read-Source") != "replica" || a.header.Get("X-Served-Region") != "us-west" {
			return fmt.Errorf("victim's read: %d source %q region %q (%v)", a.status, a.header.Get("X-Read-Source"), a.header.Get("X-Served-Region"), err)
		}
		return nil
	}
	// The standby has replayed both seeds once the victim's read, and the attacker's read with
	// its own write's token, are served by it.
	testenv.WaitFor(t, 15*time.Second, victimRead)
	testenv.WaitFor(t, 15*time.Second, func() error {
		a, err := send("GET", rt.URL+path, attacker, "", "Consistency-Token", writeToken)
		if err != nil || a.status != 200 || a.header.Get("X-Read-Source") != "replica" {
			return fmt.Errorf("attacker's read with its token: %d source %q (%v)", a.status, a.header.Get("X-Read-Source"), err)
		}
		return nil
	})

	list := "/v1/collections/notes/records"
	nul := url.QueryEscape(`"\u0000"`)
	for _, tc := range []struct {
		name, path string
		hdr        []string
		source     string
	}{
		{"NUL in a where string", list + "?where[owner]=" + nul, nil, "replica"},
		{"where number out of range", list + "?where[n]=1e999999999", nil, "replica"},
		{"with the attacker's Consistency-Token", list + "?where[owner]=" + nul, []string{"Consistency-Token", writeToken}, "replica"},
		{"strong", list + "?where[owner]=" + nul, []string{"Prefer", "consistency=strong"}, "primary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 5 {
				a := do("GET", tc.path, attacker, "", tc.hdr...)
				wantProblemKind(t, a, problem.ValueRejected)
				if src := a.header.Get("X-Read-Source"); src != tc.source {
					t.Fatalf("attacker's rejected read from %q, want %q", src, tc.source)
				}
				if strings.Contains(string(a.body), "jsonb") || strings.Contains(string(a.body), "numeric") ||
					strings.Contains(string(a.body), "Unicode") {
					t.Fatalf("problem carries the database's text: %s", a.body)
				}
			}
			if err := victimRead(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
