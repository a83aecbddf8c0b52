package shardmap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func get(t *testing.T, url, token string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestWatchAPI(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.nodes[0]
	base := n.url() + "/internal/v1/shardmap"
	idx, err := n.node.Apply(ctxT(t, 10*time.Second), testTopology())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("auth required", func(t *testing.T) {
		for _, tok := range []string{"", "wrong", testToken + "x"} {
			resp, body := get(t, base, tok)
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("token %q: %d %s", tok, resp.StatusCode, body)
			}
		}
		req, _ := http.NewRequest(http.MethodPost, n.url()+"/internal/v1/shardmap/apply", bytes.NewReader([]byte{1}))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("apply without token: %d", resp.StatusCode)
		}
	})

	t.Run("full map", func(t *testing.T) {
		resp, body := get(t, base, testToken)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var w struct {
			Version   uint64 `json:"version"`
			SlotCount int    `json:"slot_count"`
		}
		if err := json.Unmarshal(body, &w); err != nil || w.Version < idx || w.SlotCount != 64 {
			t.Fatalf("body %+v %v", w, err)
		}
		if !bytes.Equal(body, n.node.Map().Canonical()) {
			t.Fatal("watch body is not the canonical encoding")
		}
		if resp.Header.Get(HeaderVersion) != strconv.FormatUint(w.Version, 10) {
			t.Fatalf("version header %q", resp.Header.Get(HeaderVersion))
		}
	})

	t.Run("304 on timeout", func(t *testing.T) {
		v := n.node.Map().Version()
		resp, _ := get(t, fmt.Sprintf("%s?after=%d&wait=50ms", base, v), testToken)
		if resp.StatusCode != http.StatusNotModified {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})

	t.Run("returns on change", func(t *testing.T) {
		v := n.node.Map().Version()
		type result struct {
			status int
			body   []byte
		}
		ch := make(chan result, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s?after=%d&wait=20s", base, v), nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				ch <- result{status: -1, body: []byte(err.Error())}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- result{resp.StatusCode, b}
		}()
		idx, err := n.node.Apply(ctxT(t, 10*time.Second), CreateTenant{Tenant: "acme", Region: "us-west"})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-ch:
			m, err := DecodeMap(r.body)
			if r.status != 200 || err != nil || m.Version() != idx {
				t.Fatalf("status %d err %v body %s", r.status, err, r.body)
			}
			if rt, _ := m.Lookup("acme"); rt.Shard != "us-west-1" {
				t.Fatalf("route %+v", rt)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("long-poll did not return on change")
		}
	})

	t.Run("bad params 400", func(t *testing.T) {
		for _, q := range []string{"after=x", "after=-1", "after=1&after=2", "after=1&wait=0s", "after=1&wait=banana", "after=1&wait=1h"} {
			resp, body := get(t, base+"?"+q, testToken)
			var p problem
			if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(body, &p) != nil || p.Status != 400 {
				t.Fatalf("%s: %d %s", q, resp.StatusCode, body)
			}
		}
	})

	t.Run("bad apply body 400", func(t *testing.T) {
		for _, body := range [][]byte{{}, {0x7f, '{', '}'}, {0xfe, '{', '}'}, {byte(CmdCreateTenant), 'x'}} {
			req, _ := http.NewRequest(http.MethodPost, n.url()+"/internal/v1/shardmap/apply", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 {
				t.Fatalf("body %q: %d %s", body, resp.StatusCode, b)
			}
		}
	})
}
