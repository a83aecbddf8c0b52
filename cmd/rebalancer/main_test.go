package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAdmin is an httptest admin API: one move that advances a phase per GET.
type fakeAdmin struct {
	mu      sync.Mutex
	moves   map[string]*moveView
	script  []moveView // states a followed move goes through, one per GET
	gets    int
	created []string
}

const adminToken = "admin-test-token"

func newFakeAdmin(t *testing.T) (*fakeAdmin, *httptest.Server) {
	f := &fakeAdmin{moves: map[string]*moveView{}}
	mux := http.NewServeMux()
	problem := func(w http.ResponseWriter, status int, title, detail string) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(problem{Status: status, Title: title, Detail: detail})
	}
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+adminToken {
				problem(w, 401, "Unauthorized", "bad token")
				return
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			h(w, r)
		}
	}
	mux.HandleFunc("POST /admin/v1/moves", auth(func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Tenant, To_shard string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			problem(w, 400, "Bad Request", err.Error())
			return
		}
		if req.To_shard == "use-1" {
			problem(w, 409, "Conflict", "tenant acme is already on use-1")
			return
		}
		id := fmt.Sprintf("mv-%d", 10+len(f.created))
		f.created = append(f.created, req.Tenant+"->"+req.To_shard)
		now := time.Now().UTC()
		f.moves[id] = &moveView{ID: id, Tenant: req.Tenant, From: "use-1", To: req.To_shard, Phase: "requested", CreatedAt: now, UpdatedAt: now}
		w.WriteHeader(202)
		json.NewEncoder(w).Encode(map[string]string{"id": id, "phase": "requested"})
	}))
	mux.HandleFunc("GET /admin/v1/moves/{id}", auth(func(w http.ResponseWriter, r *http.Request) {
		mv, ok := f.moves[r.PathValue("id")]
		if !ok {
			problem(w, 404, "Not Found", "no move "+r.PathValue("id"))
			return
		}
		if f.gets < len(f.script) {
			s := f.script[f.gets]
			s.ID, s.Tenant, s.From, s.To, s.CreatedAt = mv.ID, mv.Tenant, mv.From, mv.To, mv.CreatedAt
			*mv = s
		}
		f.gets++
		json.NewEncoder(w).Encode(mv)
	}))
	mux.HandleFunc("GET /admin/v1/moves", auth(func(w http.ResponseWriter, r *http.Request) {
		var out []moveView
		for _, mv := range f.moves {
			if t := r.URL.Query().Get("tenant"); t == "" || t == mv.Tenant {
				out = append(out, *mv)
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"moves": out})
	}))
	mux.HandleFunc("POST /admin/v1/moves/{id}/cancel", auth(func(w http.ResponseWriter, r *http.Request) {
		mv, ok := f.moves[r.PathValue("id")]
		switch {
		case !ok:
			problem(w, 404, "Not Found", "no move")
		case mv.Phase == "cutover" || mv.terminal():
			problem(w, 409, "Conflict", "move is past its cutover")
		default:
			mv.Phase = "cancelled"
			w.WriteHeader(202)
		}
	}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return f, srv
}

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errb, envOf(env))
	return code, out.String(), errb.String()
}

func TestMoveWaitShowsProgressAndFigures(t *testing.T) {
	f, srv := newFakeAdmin(t)
	start := time.Now().UTC()
	f.script = []moveView{
		{Phase: "dual_write"},
		{Phase: "backfill", RowsTotal: 3000, RowsCopied: 1000},
		{Phase: "backfill", RowsTotal: 3000, RowsCopied: 2000},
		{Phase: "verify", RowsTotal: 3000, RowsCopied: 3000, Repairs: 4},
		{Phase: "cutover", RowsTotal: 3000, RowsCopied: 3000, Repairs: 4, PauseMS: 37},
		{Phase: "done", RowsTotal: 3000, RowsCopied: 3000, Repairs: 4, PauseMS: 37, UpdatedAt: start.Add(12 * time.Second)},
	}
	env := map[string]string{"MERIDIAN_ROUTER_URL": srv.URL, "MERIDIAN_ADMIN_TOKEN": adminToken}
	code, out, errOut := runCLI(t, env, "move", "acme", "--to", "euw-1", "--wait", "--interval", "10ms")
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut)
	}
	for _, want := range []string{"move mv-10 requested: acme -> euw-1", "mv-10: acme use-1 -> euw-1: done", "rows      3000/3000", "repairs   4", "pause_ms  37", "rows/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "backfill") || !strings.Contains(errOut, "3000") {
		t.Errorf("no progress bar with the phase and rows on stderr:\n%q", errOut)
	}
}

func TestMoveWaitEndingFailedExits1(t *testing.T) {
	f, srv := newFakeAdmin(t)
	f.script = []moveView{{Phase: "backfill"}, {Phase: "failed", Error: "copy batch: target unreachable"}}
	env := map[string]string{"MERIDIAN_ROUTER_URL": srv.URL, "MERIDIAN_ADMIN_TOKEN": adminToken}
	code, out, errOut := runCLI(t, env, "move", "acme", "--to", "euw-1", "--wait", "--interval", "10ms")
	if code != 1 || !strings.Contains(out, "error     copy batch: target unreachable") || !strings.Contains(errOut, "ended failed") {
		t.Errorf("exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
}

func TestStatusAndCancel(t *testing.T) {
	f, srv := newFakeAdmin(t)
	env := map[string]string{"MERIDIAN_ROUTER_URL": srv.URL, "MERIDIAN_ADMIN_TOKEN": adminToken}
	if code, _, e := runCLI(t, env, "move", "acme", "--to", "euw-1"); code != 0 {
		t.Fatalf("move: %d %s", code, e)
	}
	code, out, _ := runCLI(t, env, "status")
	if code != 0 || !strings.Contains(out, "mv-10") || !strings.Contains(out, "requested") {
		t.Errorf("status: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, env, "status", "mv-10", "--once")
	if code != 0 || !strings.Contains(out, "move mv-10: acme use-1 -> euw-1: requested") {
		t.Errorf("status ID --once: %d\n%s", code, out)
	}
	f.mu.Lock()
	f.moves["mv-10"].Phase = "backfill"
	f.moves["mv-10"].CopiedUpTo = &moveKey{Collection: "notes", ID: "n-42"}
	f.mu.Unlock()
	code, out, _ = runCLI(t, env, "status", "mv-10", "--once")
	if code != 0 || !strings.Contains(out, "cursor    notes/n-42") {
		t.Errorf("status ID --once in backfill with a cursor: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, env, "cancel", "mv-10")
	if code != 0 || !strings.Contains(out, "cancel requested") {
		t.Errorf("cancel: %d\n%s", code, out)
	}
	f.mu.Lock()
	f.moves["mv-10"].Phase = "cutover"
	f.mu.Unlock()
	code, _, errOut := runCLI(t, env, "cancel", "mv-10")
	if code != 1 || !strings.Contains(errOut, "409 Conflict: move is past its cutover") {
		t.Errorf("cancel after cutover: %d %s", code, errOut)
	}
	code, _, errOut = runCLI(t, env, "status", "mv-99", "--once")
	if code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("status of an unknown move: %d %s", code, errOut)
	}
}

func TestErrorsAndExitCodes(t *testing.T) {
	_, srv := newFakeAdmin(t)
	good := map[string]string{"MERIDIAN_ROUTER_URL": srv.URL, "MERIDIAN_ADMIN_TOKEN": adminToken}
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(adminToken+"\n"), 0o600)
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		code    int
		errWant string
	}{
		{"no command", good, nil, 2, "usage"},
		{"unknown command", good, []string{"frobnicate"}, 2, "unknown command"},
		{"help", good, []string{"-h"}, 0, ""},
		{"subcommand help", good, []string{"move", "-h"}, 0, "usage: rebalancer move"},
		{"version", good, []string{"--version"}, 0, ""},
		{"move without tenant", good, []string{"move", "--to", "euw-1"}, 2, "want 1 arguments"},
		{"move without --to", good, []string{"move", "acme"}, 2, "--to SHARD is required"},
		{"bad tenant id", good, []string{"move", "ACME!", "--to", "euw-1"}, 2, "not a tenant id"},
		{"bad flag", good, []string{"status", "--bogus"}, 2, "flag provided but not defined"},
		{"too many args", good, []string{"cancel", "a", "b"}, 2, "want 1 arguments"},
		{"no cluster", map[string]string{}, []string{"status", "--cluster", filepath.Join(t.TempDir(), "none.json")}, 2, "no cluster file"},
		{"url without token", map[string]string{"MERIDIAN_ROUTER_URL": srv.URL}, []string{"status"}, 2, "MERIDIAN_ADMIN_TOKEN"},
		{"bad token", map[string]string{"MERIDIAN_ROUTER_URL": srv.URL, "MERIDIAN_ADMIN_TOKEN": "nope"}, []string{"status"}, 1, "401"},
		{"token from file", map[string]string{"MERIDIAN_ROUTER_URL": srv.URL, "MERIDIAN_ADMIN_TOKEN_FILE": tokenFile}, []string{"status"}, 0, ""},
		{"refused move", good, []string{"move", "acme", "--to", "use-1"}, 1, "409 Conflict: tenant acme is already on use-1"},
		{"router down", map[string]string{"MERIDIAN_ROUTER_URL": "http://127.0.0.1:1", "MERIDIAN_ADMIN_TOKEN": "x"}, []string{"status"}, 1, "no router reachable"},
		{"serve without map", map[string]string{}, []string{"serve"}, 2, "-map-addrs"},
		{"serve bad env", map[string]string{"MERIDIAN_MOVE_BATCH_SIZE": "lots"}, []string{"serve"}, 2, "MERIDIAN_MOVE_BATCH_SIZE"},
		{"verify not moving needs --to", good, []string{"verify"}, 2, "want 1 arguments"},
		{"plan negative max", good, []string{"plan", "--max-moves", "-1"}, 2, "--max-moves"},
		// The compose tool service: no admin API configured, the map nodes are → the map view.
		{"status from the map", map[string]string{"MERIDIAN_MAP_ADDRS": "http://127.0.0.1:1", "MERIDIAN_CLUSTER_TOKEN": "t"},
			[]string{"status", "--timeout", "300ms", "--cluster", filepath.Join(t.TempDir(), "none.json")}, 1, "no shard map from http://127.0.0.1:1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.errWant) {
				t.Errorf("exit %d, want %d; stderr %q should contain %q", code, tc.code, errOut, tc.errWant)
			}
		})
	}
}

func TestClusterFile(t *testing.T) {
	_, srv := newFakeAdmin(t)
	dir := t.TempDir()
	cf := fmt.Sprintf(`{"regions":{"us-east":{"router":%q,"api":[],"postgres":{"shards":{"use-1":"postgres://x"}}}},"admin_token":%q,"cluster_token":"ct"}`, srv.URL, adminToken)
	path := filepath.Join(dir, "cluster.json")
	os.WriteFile(path, []byte(cf), 0o600)
	code, out, errOut := runCLI(t, map[string]string{}, "status", "--cluster", path)
	if code != 0 || !strings.Contains(out, "no moves") {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}
}
