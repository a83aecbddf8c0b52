package nemesis

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/sim"
)

// A move fault (kind Move) asks the routers' admin API for a move of one of the workload's
// tenants (Config.Tenants) to another active shard homed in the tenant's region (the workload
// creates every tenant with its home region, and the map pins it there: a move out of it is
// refused 409 region-pinned), and the controller (`rebalancer serve`) drives it. A move is
// not bounded by its step: it takes at least the controller's propagation delay and cleanup
// grace (2 s + 10 s by default), longer than most holds, and a move running through the next
// steps' faults (a controller kill, an API node kill, a partition, another move) is what the
// suite wants to see. So at a step's end a move that has reached done, failed or cancelled is
// healed (logged with its outcome) and one still running stays active into the next steps,
// and the end of Run and HealAll wait until every move is over (a tenant with no active move)
// before the final reads. Several moves run at once when steps combine or overlap; a tenant
// is never asked for a second move while its first runs (the map allows one).

// MoveRecord is one move the nemesis requested and what became of it.
type MoveRecord struct {
	ID, Tenant, From, To string
	// Requested is when it was requested, Ended when the nemesis saw it end (0: not yet), on
	// the run's clock.
	Requested, Ended time.Duration
	// Phase is the last phase seen (done, failed or cancelled once it ended).
	Phase string
	// Error is the controller's error of a failed move.
	Error   string
	PauseMS int64
	Rows    int64
	Repairs int64
}

// Moves lists the moves the nemesis requested, in request order.
func (n *Nemesis) Moves() []MoveRecord {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.moves)
}

// movesDone counts the moves that ended done.
func movesDone(ms []MoveRecord) int {
	d := 0
	for _, m := range ms {
		if m.Phase == "done" {
			d++
		}
	}
	return d
}

// mapSummary is the part of GET /admin/v1/shardmap a move needs.
type mapSummary struct {
	Shards []struct {
		ID         string `json:"id"`
		HomeRegion string `json:"home_region"`
		State      string `json:"state"`
	} `json:"shards"`
	Pins map[string]string `json:"pins"`
}

// moveAnswer is a move as the admin API shows it.
type moveAnswer struct {
	ID         string `json:"id"`
	Tenant     string `json:"tenant"`
	From       string `json:"from_shard"`
	To         string `json:"to_shard"`
	Phase      string `json:"phase"`
	RowsCopied int64  `json:"rows_copied"`
	Repairs    int64  `json:"repairs"`
	PauseMS    int64  `json:"pause_ms"`
	Error      string `json:"error"`
}

func terminal(phase string) bool { return phase == "done" || phase == "failed" || phase == "cancelled" }

// adminAnswer is one admin API answer.
type adminAnswer struct {
	status  int
	body    []byte
	problem string
}

// admin sends an admin request to the routers, in region order, until one answers below 500
// (a router down or cut off, or one without the map, is skipped).
func (n *Nemesis) admin(ctx context.Context, method, path string, body []byte) (adminAnswer, error) {
	regions := make([]string, 0, len(n.cfg.Cluster.Regions))
	for r := range n.cfg.Cluster.Regions {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	var last error = errors.New("no router")
	for _, r := range regions {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, _ := http.NewRequestWithContext(ctx, method, n.cfg.Cluster.Regions[r].Router+path, rd)
		req.Header.Set("Authorization", "Bearer "+n.cfg.Cluster.AdminToken)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := n.client.Do(req)
		if err != nil {
			last = fmt.Errorf("via %s: %w", r, err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		resp.Body.Close()
		if err != nil {
			last = fmt.Errorf("via %s: %w", r, err)
			continue
		}
		a := adminAnswer{status: resp.StatusCode, body: b}
		if resp.StatusCode >= 400 {
			var p struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(b, &p) == nil && p.Type != "" {
				a.problem = p.Type[strings.LastIndexByte(p.Type, '/')+1:]
			}
		}
		if resp.StatusCode >= 500 {
			last = fmt.Errorf("via %s: %d %s", r, a.status, a.problem)
			continue
		}
		return a, nil
	}
	return adminAnswer{}, last
}

// moveTenant resolves a move fault's target ("tenant-<i>": the i-th of Config.Tenants, or the
// next one after it without a move of this nemesis running) and requests its move to another
// active shard of its region; it returns the tenant.
func (n *Nemesis) moveTenant(ctx context.Context, target string) (string, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(target, "tenant-"))
	if err != nil || !strings.HasPrefix(target, "tenant-") || i < 0 {
		return "", fmt.Errorf("move target %q is not tenant-<i>", target)
	}
	ts := n.cfg.Tenants
	if len(ts) == 0 {
		return "", errors.New("no tenants to move (Config.Tenants is empty)")
	}
	a, err := n.admin(ctx, http.MethodGet, "/admin/v1/shardmap", nil)
	if err != nil {
		return "", err
	}
	if a.status != http.StatusOK {
		return "", fmt.Errorf("shardmap: %d %s", a.status, a.problem)
	}
	var m mapSummary
	if err := json.Unmarshal(a.body, &m); err != nil {
		return "", fmt.Errorf("shardmap: %w", err)
	}
	home := map[string]string{}
	for _, s := range m.Shards {
		home[s.ID] = s.HomeRegion
	}
	n.mu.Lock()
	moving := map[string]bool{}
	for _, f := range n.active {
		if f.Kind == Move {
			moving[f.Target] = true
		}
	}
	n.mu.Unlock()
	var tenant string
	for k := range ts {
		t := ts[(i+k)%len(ts)]
		if !moving[t] {
			tenant = t
			break
		}
	}
	if tenant == "" {
		return "", errors.New("every tenant is moving")
	}
	from, ok := m.Pins[tenant]
	if !ok {
		return "", fmt.Errorf("tenant %s is not pinned in the map", tenant)
	}
	// The tenant was created in its shard's home region and moves keep it there.
	var cands []string
	for _, s := range m.Shards {
		if s.ID != from && s.HomeRegion == home[from] && s.State == "active" {
			cands = append(cands, s.ID)
		}
	}
	slices.Sort(cands)
	if len(cands) == 0 {
		return "", fmt.Errorf("no other active shard in %s for %s", home[from], tenant)
	}
	to := cands[i%len(cands)]
	body, _ := json.Marshal(map[string]string{"tenant": tenant, "to_shard": to})
	a, err = n.admin(ctx, http.MethodPost, "/admin/v1/moves", body)
	if err != nil {
		return "", err
	}
	var mv moveAnswer
	switch {
	case a.status == http.StatusAccepted:
		if err := json.Unmarshal(a.body, &mv); err != nil || mv.ID == "" {
			return "", fmt.Errorf("move answer %q: %v", a.body, err)
		}
	case a.status == http.StatusConflict && a.problem == "tenant-moving":
		// A move of ours whose request's answer was lost, or one nobody asked for: follow it.
		if mv, err = n.activeMove(ctx, tenant); err != nil {
			return "", err
		}
		n.logf("move of %s: %s was already running (%s→%s, %s); following it", tenant, mv.ID, mv.From, mv.To, mv.Phase)
		from, to = mv.From, mv.To
	default:
		return "", fmt.Errorf("POST /admin/v1/moves %s→%s: %d %s", tenant, to, a.status, a.problem)
	}
	n.mu.Lock()
	n.moves = append(n.moves, MoveRecord{ID: mv.ID, Tenant: tenant, From: from, To: to, Requested: n.cfg.Now(), Phase: mv.Phase})
	n.mu.Unlock()
	n.logf("move %s of %s: %s→%s requested", mv.ID, tenant, from, to)
	return tenant, nil
}

// activeMove is the tenant's unfinished move.
func (n *Nemesis) activeMove(ctx context.Context, tenant string) (moveAnswer, error) {
	a, err := n.admin(ctx, http.MethodGet, "/admin/v1/moves?tenant="+url.QueryEscape(tenant), nil)
	if err != nil {
		return moveAnswer{}, err
	}
	var ans struct {
		Items []moveAnswer `json:"items"`
	}
	if a.status != http.StatusOK || json.Unmarshal(a.body, &ans) != nil {
		return moveAnswer{}, fmt.Errorf("moves of %s: %d %s", tenant, a.status, a.problem)
	}
	for _, mv := range ans.Items {
		if !terminal(mv.Phase) {
			return mv, nil
		}
	}
	return moveAnswer{}, fmt.Errorf("tenant %s is moving, yet no move of it is active", tenant)
}

// lastMove is the index of the tenant's newest move in n.moves (-1: none). Callers hold n.mu.
func (n *Nemesis) lastMove(tenant string) int {
	for i := len(n.moves) - 1; i >= 0; i-- {
		if n.moves[i].Tenant == tenant {
			return i
		}
	}
	return -1
}

// moveOver reports whether the tenant's move has ended (done, failed or cancelled), once;
// with wait it polls until it has, for at most MoveTimeout or until ctx ends. The record
// keeps the last phase seen, and the end is logged with the move's figures.
func (n *Nemesis) moveOver(ctx context.Context, tenant string, wait bool) (bool, error) {
	n.mu.Lock()
	i := n.lastMove(tenant)
	var id string
	if i >= 0 {
		id = n.moves[i].ID
	}
	n.mu.Unlock()
	if id == "" {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.MoveTimeout)
	defer cancel()
	var last error
	for {
		a, err := n.admin(ctx, http.MethodGet, "/admin/v1/moves/"+url.PathEscape(id), nil)
		var mv moveAnswer
		switch {
		case err != nil:
			last = err
		case a.status != http.StatusOK:
			last = fmt.Errorf("move %s: %d %s", id, a.status, a.problem)
		case json.Unmarshal(a.body, &mv) != nil:
			last = fmt.Errorf("move %s: undecodable %q", id, a.body)
		default:
			last = nil
			n.mu.Lock()
			r := &n.moves[i]
			r.Phase, r.Error, r.PauseMS, r.Rows, r.Repairs = mv.Phase, mv.Error, mv.PauseMS, mv.RowsCopied, mv.Repairs
			if terminal(mv.Phase) {
				r.Ended = n.cfg.Now()
			}
			rec := *r
			n.mu.Unlock()
			if terminal(mv.Phase) {
				msg := ""
				if mv.Error != "" {
					msg = ", error: " + mv.Error
				}
				n.logf("move %s of %s: %s after %.1fs (pause %d ms, %d rows copied, %d repairs%s)",
					id, tenant, mv.Phase, (rec.Ended - rec.Requested).Seconds(), mv.PauseMS, mv.RowsCopied, mv.Repairs, msg)
				return true, nil
			}
			if !wait {
				n.logf("move %s of %s: in %s, still running", id, tenant, mv.Phase)
				return false, nil
			}
		}
		if !wait && last != nil {
			return false, last
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("move %s of %s not over after %v: %w", id, tenant, n.cfg.MoveTimeout, errors.Join(last, ctx.Err()))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitHealthz polls url/healthz until it answers 200, within ReadyTimeout (the controller has
// no /readyz).
func (n *Nemesis) waitHealthz(ctx context.Context, p sim.ProcessInfo) error {
	return n.waitPath(ctx, p.URL, "/healthz")
}
