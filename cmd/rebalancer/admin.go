package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// clusterFile is the part of .meridian/cluster.json (DESIGN.md §4a; sim.ClusterFile) the CLI
// reads. It is declared here so the CLI does not link the launcher.
type clusterFile struct {
	Regions map[string]struct {
		Router   string `json:"router"`
		Postgres struct {
			Shards map[string]string `json:"shards"`
		} `json:"postgres"`
	} `json:"regions"`
	AdminToken   string `json:"admin_token"`
	ClusterToken string `json:"cluster_token"`
}

// target is where the operator commands send their requests.
type target struct {
	routers []string // base URLs, tried in order
	token   string
	cluster *clusterFile // nil when found from the environment
}

// errUsage marks bad input: exit status 2.
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// moveView is a move as the admin API answers it (GET /admin/v1/moves/{id}).
type moveView struct {
	ID         string `json:"id"`
	Tenant     string `json:"tenant"`
	From       string `json:"from_shard"`
	To         string `json:"to_shard"`
	Phase      string `json:"phase"`
	RowsCopied int64  `json:"rows_copied"`
	RowsTotal  int64  `json:"rows_total"`
	Repairs    int64  `json:"repairs"`
	PauseMS    int64  `json:"pause_ms"`
	FirstWrite int64  `json:"first_write_ms"`
	// CopiedUpTo is the backfill's cursor (every key <= it copied); nil until recorded.
	CopiedUpTo *moveKey  `json:"copied_up_to,omitempty"`
	Error      string    `json:"error"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// moveKey is a record key as a move's JSON carries it.
type moveKey struct {
	Collection string `json:"collection"`
	ID         string `json:"id"`
}

func (m moveView) terminal() bool {
	return m.Phase == "done" || m.Phase == "cancelled" || m.Phase == "failed"
}

// problem is an RFC 9457 answer of the admin API.
type problem struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Type   string `json:"type"`
}

// apiError is a non-2xx answer.
type apiError struct {
	status int
	p      problem
}

func (e *apiError) Error() string {
	msg := e.p.Title
	if msg == "" {
		msg = http.StatusText(e.status)
	}
	if e.p.Detail != "" {
		msg += ": " + e.p.Detail
	}
	return fmt.Sprintf("%d %s", e.status, msg)
}

// client calls the admin API of the target's routers, moving to the next router when one
// cannot be reached.
type client struct {
	t    *target
	http *http.Client
}

func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	var lastErr error
	for _, base := range c.t.routers {
		req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.t.token)
		req.Header.Set("Accept", "application/json")
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.http.Do(req)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				return err
			}
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode/100 != 2 {
			e := &apiError{status: resp.StatusCode}
			_ = json.Unmarshal(b, &e.p)
			return e
		}
		if out == nil || len(bytes.TrimSpace(b)) == 0 {
			return nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
		}
		return nil
	}
	return fmt.Errorf("no router reachable (%s): %w", strings.Join(c.t.routers, ", "), lastErr)
}

func (c *client) createMove(ctx context.Context, tenant, to string) (moveView, error) {
	var mv moveView
	err := c.do(ctx, http.MethodPost, "/admin/v1/moves", map[string]string{"tenant": tenant, "to_shard": to}, &mv)
	return mv, err
}

func (c *client) getMove(ctx context.Context, id string) (moveView, error) {
	var mv moveView
	err := c.do(ctx, http.MethodGet, "/admin/v1/moves/"+url.PathEscape(id), nil, &mv)
	return mv, err
}

func (c *client) cancelMove(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/admin/v1/moves/"+url.PathEscape(id)+"/cancel", nil, nil)
}

// listMoves returns moves newest first; the answer may be a list or {"moves": [...]}.
func (c *client) listMoves(ctx context.Context, tenant, phase string) ([]moveView, error) {
	q := url.Values{}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	if phase != "" {
		q.Set("phase", phase)
	}
	path := "/admin/v1/moves"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, path, nil, &raw); err != nil {
		return nil, err
	}
	var list []moveView
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var wrapped struct {
		Moves []moveView `json:"moves"`
		Items []moveView `json:"items"`
	}
	if err := json.Unmarshal(raw, &wrapped); err != nil {
		return nil, fmt.Errorf("GET %s: bad answer: %w", path, err)
	}
	return append(wrapped.Moves, wrapped.Items...), nil
}

// shardMapView is GET /admin/v1/shardmap.
type shardMapView struct {
	Version uint64 `json:"version"`
	Shards  []struct {
		ID         string `json:"id"`
		HomeRegion string `json:"home_region"`
		State      string `json:"state"`
	} `json:"shards"`
	Pins  map[string]string `json:"pins"`
	Moves []moveView        `json:"moves"`
	// TenantRegions is the region each tenant was created with, when the map records it.
	TenantRegions map[string]string `json:"tenant_regions"`
}

func (c *client) shardMap(ctx context.Context) (shardMapView, error) {
	var m shardMapView
	err := c.do(ctx, http.MethodGet, "/admin/v1/shardmap", nil, &m)
	return m, err
}
