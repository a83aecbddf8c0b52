package router

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/strictjson"
	"github.com/meridian-dev/meridian/shardmap"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// MoveMap is what the move routes and the tenants list (DESIGN.md §4a) need from the shard map;
// ShardMap embeds it.
type MoveMap interface {
	// View is the local map copy, an immutable snapshot read without locks; nil when the
	// map is not available.
	View() *shardmap.Map
	// RequestMove records a move of tenant to shard to (shardmap.RequestMove, its id chosen by
	// the map), waits until the local copy has it and returns it. Errors wrap shardmap's
	// sentinels (ErrTenantMoving, ErrSameShard, ErrUnknownShard, ErrShardDraining, …).
	RequestMove(ctx context.Context, tenant, to string) (shardmap.Move, error)
	// CancelMove sets a move's phase to cancelled (shardmap.SetMovePhase), waits until the local
	// copy has it and returns the move. shardmap.ErrUnknownMove and ErrBadPhaseTransition are
	// reported as such.
	CancelMove(ctx context.Context, id string) (shardmap.Move, error)
}

// cancellable lists the phases a move may be cancelled from: before cutover the source is
// authoritative and was never fenced, so dropping the target loses nothing.
var cancellable = []shardmap.Phase{shardmap.PhaseRequested, shardmap.PhaseDualWrite, shardmap.PhaseBackfill, shardmap.PhaseVerify}

// knownPhases are the values ?phase= accepts.
var knownPhases = []shardmap.Phase{shardmap.PhaseRequested, shardmap.PhaseDualWrite, shardmap.PhaseBackfill,
	shardmap.PhaseVerify, shardmap.PhaseCutover, shardmap.PhaseCleanup, shardmap.PhaseDone,
	shardmap.PhaseCancelled, shardmap.PhaseFailed}

// maxMoveID bounds a move id in a path (the map refuses longer ids).
const maxMoveID = 128

// moveRequest is the body of POST /admin/v1/moves.
type moveRequest struct {
	Tenant  string `json:"tenant"`
	ToShard string `json:"to_shard"`
}

// MoveAccepted is the answer of POST /admin/v1/moves.
type MoveAccepted struct {
	ID    string         `json:"id"`
	Phase shardmap.Phase `json:"phase"`
}

// MovesAnswer is the body of GET /admin/v1/moves.
type MovesAnswer struct {
	Items []shardmap.Move `json:"items"`
}

// DecodeMoveRequest parses a POST /admin/v1/moves body strictly (internal/strictjson): exactly
// {"tenant":…,"to_shard":…}, a valid tenant id and a well-formed shard id. Its errors are in our
// own words, fit for a problem detail.
func DecodeMoveRequest(body []byte) (tenant, toShard string, err error) {
	var req moveRequest
	if err := strictjson.Decode(body, &req); err != nil {
		return "", "", fmt.Errorf("body must be {\"tenant\":...,\"to_shard\":...}: %w", err)
	}
	if !ids.ValidTenant(req.Tenant) {
		return "", "", fmt.Errorf("tenant must match %s", ids.TenantPattern)
	}
	if !ids.ValidShard(req.ToShard) {
		return "", "", fmt.Errorf("to_shard must match %s", ids.NamePattern)
	}
	return req.Tenant, req.ToShard, nil
}

// view is the local map copy, or a 503 answered.
func (s *Server) view(c *gin.Context) (*shardmap.Map, bool) {
	v := s.cfg.Map.View()
	if v == nil || v.SlotCount() == 0 {
		c.Header("Retry-After", "1")
		s.kindProblem(c, problem.ServiceUnavailable, "shard map not available")
		return nil, false
	}
	return v, true
}

// createMove starts a tenant move (DESIGN.md §4a, §8). Checks, in order: the body (400), the
// target shard exists (400 unknown-shard), the tenant exists on its shard (404), then the
// conflicts (409): the tenant is already there or the target is draining (conflict), the tenant
// was created with a region and the target is homed elsewhere (region-pinned), the tenant has
// an unfinished move (tenant-moving). The map repeats the rules it owns when it applies the command, so a race
// with another request ends in the same 409.
func (s *Server) createMove(c *gin.Context) {
	body, ok := s.readBody(c)
	if !ok {
		return
	}
	tenant, to, err := DecodeMoveRequest(body)
	if err != nil {
		s.kindProblem(c, problem.InvalidBody, err.Error())
		return
	}
	stateOf(c).tenant = tenant
	v, ok := s.view(c)
	if !ok {
		return
	}
	target, ok := v.Shard(to)
	if !ok {
		s.kindProblem(c, problem.UnknownShard, "no shard "+to+" in the shard map")
		return
	}
	route, err := s.cfg.Map.Lookup(tenant)
	if err != nil {
		c.Header("Retry-After", "1")
		s.kindProblem(c, problem.ServiceUnavailable, "shard map not available")
		return
	}
	ctx := c.Request.Context()
	if _, err := s.tenantOnShard(ctx, tenant, route); err != nil {
		if errors.Is(err, ErrTenantNotFound) {
			s.kindProblem(c, problem.TenantNotFound, "tenant "+tenant+" not found")
			return
		}
		s.adminUpstreamFailure(c, err)
		return
	}
	if route.Shard == to {
		s.kindProblem(c, problem.Conflict, "tenant "+tenant+" is already on shard "+to)
		return
	}
	if target.State != shardmap.ShardActive {
		s.kindProblem(c, problem.Conflict, "shard "+to+" is draining and takes no tenants")
		return
	}
	if region, pinned := v.TenantRegion(tenant); pinned && target.HomeRegion != region {
		s.kindProblem(c, problem.RegionPinned, fmt.Sprintf(
			"tenant %s was created in region %s; shard %s is homed in %s", tenant, region, to, target.HomeRegion))
		return
	}
	if mv, ok := v.ActiveMove(tenant); ok {
		s.kindProblem(c, problem.TenantMoving, fmt.Sprintf("tenant %s has move %s in phase %s", tenant, mv.ID, mv.Phase))
		return
	}
	mv, err := s.cfg.Map.RequestMove(ctx, tenant, to)
	if err != nil {
		s.moveMapError(c, err, tenant, to)
		return
	}
	s.log(c).Info("move requested", "move_id", mv.ID, "from_shard", mv.From, "to_shard", mv.To)
	c.Header("Location", "/admin/v1/moves/"+url.PathEscape(mv.ID))
	c.JSON(http.StatusAccepted, MoveAccepted{ID: mv.ID, Phase: mv.Phase})
}

// moveMapError answers an error of RequestMove. The rules are checked before the command, so
// a rule broken here lost a race (or the local copy lagged); the answer is the same.
func (s *Server) moveMapError(c *gin.Context, err error, tenant, to string) {
	switch {
	case errors.Is(err, shardmap.ErrTenantMoving):
		s.kindProblem(c, problem.TenantMoving, "tenant "+tenant+" has a move that is not finished")
	case errors.Is(err, shardmap.ErrSameShard):
		s.kindProblem(c, problem.Conflict, "tenant "+tenant+" is already on shard "+to)
	case errors.Is(err, shardmap.ErrShardDraining):
		s.kindProblem(c, problem.Conflict, "shard "+to+" is draining and takes no tenants")
	case errors.Is(err, shardmap.ErrUnknownShard):
		s.kindProblem(c, problem.UnknownShard, "no shard "+to+" in the shard map")
	default:
		s.log(c).Warn("recording a move failed", "err", err)
		c.Header("Retry-After", "1")
		s.kindProblem(c, problem.ServiceUnavailable, "the shard map did not record the move; retry")
	}
}

// movePathID is the path's move id, or a 400 answered.
func (s *Server) movePathID(c *gin.Context) (string, bool) {
	id := c.Param("id")
	if id == "" || len(id) > maxMoveID {
		s.kindProblem(c, problem.InvalidPath, fmt.Sprintf("move id must be 1 to %d bytes", maxMoveID))
		return "", false
	}
	return id, true
}

// pathMove is the move the path names, or false once the answer (400, 503 or 404) is written.
func (s *Server) pathMove(c *gin.Context) (shardmap.Move, bool) {
	id, ok := s.movePathID(c)
	if !ok {
		return shardmap.Move{}, false
	}
	v, ok := s.view(c)
	if !ok {
		return shardmap.Move{}, false
	}
	mv, ok := v.Move(id)
	if !ok {
		s.kindProblem(c, problem.MoveNotFound, "no move "+id)
		return shardmap.Move{}, false
	}
	stateOf(c).tenant = mv.Tenant
	return mv, true
}

func (s *Server) getMove(c *gin.Context) {
	if mv, ok := s.pathMove(c); ok {
		c.JSON(http.StatusOK, mv)
	}
}

// cancelMove cancels a move before its cutover (202 with the move); a move already cancelled
// answers 202 again (a retried cancel), one at or past cutover, done or failed answers 409.
func (s *Server) cancelMove(c *gin.Context) {
	mv, ok := s.pathMove(c)
	if !ok {
		return
	}
	id := mv.ID
	switch {
	case mv.Phase == shardmap.PhaseCancelled:
		c.JSON(http.StatusAccepted, mv)
		return
	case !slices.Contains(cancellable, mv.Phase):
		s.kindProblem(c, problem.MoveNotCancellable, fmt.Sprintf(
			"move %s is in phase %s; only a move in requested, dual_write, backfill or verify can be cancelled", id, mv.Phase))
		return
	}
	mv, err := s.cfg.Map.CancelMove(c.Request.Context(), id)
	switch {
	case errors.Is(err, shardmap.ErrUnknownMove):
		s.kindProblem(c, problem.MoveNotFound, "no move "+id)
	case errors.Is(err, shardmap.ErrBadPhaseTransition):
		// The controller moved it on (to cutover, or failed it) since the check above.
		s.kindProblem(c, problem.MoveNotCancellable, "move "+id+" left its cancellable phases")
	case err != nil:
		s.log(c).Warn("cancelling a move failed", "err", err)
		c.Header("Retry-After", "1")
		s.kindProblem(c, problem.ServiceUnavailable, "the shard map did not record the cancel; retry")
	default:
		s.log(c).Info("move cancelled", "move_id", mv.ID)
		c.JSON(http.StatusAccepted, mv)
	}
}

// query parses the request's query string and refuses parameters other than allowed and
// parameters given twice; a 400 is answered when it returns false.
func (s *Server) query(c *gin.Context, allowed ...string) (url.Values, bool) {
	q, err := url.ParseQuery(c.Request.URL.RawQuery)
	if err != nil {
		s.kindProblem(c, problem.InvalidQuery, "malformed query string")
		return nil, false
	}
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if !slices.Contains(allowed, k) {
			s.kindProblem(c, problem.InvalidQuery, fmt.Sprintf("unknown parameter %q (allowed: %s)", k, strings.Join(allowed, ", ")))
			return nil, false
		}
		if len(q[k]) > 1 {
			s.kindProblem(c, problem.InvalidQuery, fmt.Sprintf("parameter %q given more than once", k))
			return nil, false
		}
	}
	return q, true
}

// listMoves answers the map's moves, newest first (by creation time, then id), filtered by
// ?tenant= and ?phase=. Finished moves are listed until the controller prunes them.
func (s *Server) listMoves(c *gin.Context) {
	q, ok := s.query(c, "tenant", "phase")
	if !ok {
		return
	}
	tenant, phase := q.Get("tenant"), shardmap.Phase(q.Get("phase"))
	if q.Has("tenant") && !ids.ValidTenant(tenant) {
		s.kindProblem(c, problem.InvalidQuery, "tenant must match "+ids.TenantPattern)
		return
	}
	if q.Has("phase") && !slices.Contains(knownPhases, phase) {
		s.kindProblem(c, problem.InvalidQuery, "phase must be one of requested, dual_write, backfill, verify, cutover, cleanup, done, cancelled, failed")
		return
	}
	v, ok := s.view(c)
	if !ok {
		return
	}
	out := MovesAnswer{Items: []shardmap.Move{}}
	for _, mv := range v.Moves() {
		if (tenant == "" || mv.Tenant == tenant) && (phase == "" || mv.Phase == phase) {
			out.Items = append(out.Items, mv)
		}
	}
	slices.SortFunc(out.Items, func(a, b shardmap.Move) int {
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), compareMoveIDs(b.ID, a.ID))
	})
	c.JSON(http.StatusOK, out)
}

// compareMoveIDs orders the map's own ids (mv-<raft index>) by index, others by text.
func compareMoveIDs(a, b string) int {
	ai, aerr := strconv.ParseUint(strings.TrimPrefix(a, "mv-"), 10, 64)
	bi, berr := strconv.ParseUint(strings.TrimPrefix(b, "mv-"), 10, 64)
	if aerr == nil && berr == nil && strings.HasPrefix(a, "mv-") && strings.HasPrefix(b, "mv-") {
		return cmp.Compare(ai, bi)
	}
	return strings.Compare(a, b)
}

// Tenant list bounds, as on /v1 lists (DESIGN.md §4).
const (
	defaultTenantsLimit = 50
	maxTenantsLimit     = 200
)

// TenantListItem is one tenant in GET /admin/v1/tenants: its placement, the region it was
// created in (absent for a tenant created without one), its write epoch and whether it is moving.
type TenantListItem struct {
	ID         string `json:"id"`
	Shard      string `json:"shard"`
	HomeRegion string `json:"home_region"`
	Pinned     bool   `json:"pinned"`
	Region     string `json:"region,omitempty"`
	Epoch      uint64 `json:"epoch"`
	Moving     bool   `json:"moving"`
}

// TenantsAnswer is the body of GET /admin/v1/tenants. PinnedOnly says the list holds only the
// tenants the map pins (created with a region, or moved): the answer when an API node cannot
// list its shard's tenant rows (it has no worker-role connections), since slot-placed tenants
// are recorded only on their shards (docs/router.md, "Admin API").
type TenantsAnswer struct {
	Items      []TenantListItem `json:"items"`
	NextCursor *string          `json:"next_cursor"`
	PinnedOnly bool             `json:"pinned_only"`
}

// shardTenants is one shard's answer to GET /internal/v1/tenants.
type shardTenants struct {
	ids         []string
	full        bool // the shard had more than the page: ids past its last one are unknown
	unsupported bool // the API node has no worker role (501)
	err         error
}

// listTenants answers the tenants by id, optionally of one shard, paginated like /v1 lists:
// ?limit= (1..200, default 50) and the opaque ?cursor= of the previous page, which is signed
// with the cluster token (any router takes it; an altered one is 400 invalid-cursor). The ids
// are the shards' tenant rows (GET /internal/v1/tenants on an API node of each shard's home
// region, all shards at once) and the map's pins; each is placed by the map, so a moving
// tenant's importing copy or a moved tenant's source awaiting cleanup does not list it twice
// or on the wrong shard. Each shard is asked for limit+1 ids after the cursor: ids up to the
// smallest last id of a shard that had more are known completely, and the page ends there.
func (s *Server) listTenants(c *gin.Context) {
	q, ok := s.query(c, "shard", "cursor", "limit")
	if !ok {
		return
	}
	limit := defaultTenantsLimit
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > maxTenantsLimit {
			s.kindProblem(c, problem.InvalidQuery, fmt.Sprintf("limit must be an integer in [1, %d]", maxTenantsLimit))
			return
		}
		limit = n
	}
	shard := q.Get("shard")
	if q.Has("shard") && !ids.ValidShard(shard) {
		s.kindProblem(c, problem.InvalidQuery, "shard must match "+ids.NamePattern)
		return
	}
	after := ""
	if q.Has("cursor") {
		var err error
		if after, err = s.decodeTenantCursor(q.Get("cursor"), shard); err != nil {
			s.kindProblem(c, problem.InvalidCursor, err.Error())
			return
		}
	}
	v, ok := s.view(c)
	if !ok {
		return
	}
	if _, ok := v.Shard(shard); shard != "" && !ok {
		s.kindProblem(c, problem.UnknownShard, "no shard "+shard+" in the shard map")
		return
	}
	var ask []shardmap.Shard
	for _, sh := range v.Shards() {
		if shard == "" || sh.ID == shard {
			ask = append(ask, sh)
		}
	}
	answers := s.shardTenantPages(c.Request.Context(), ask, after, limit+1)
	pinnedOnly, cutoff := false, ""
	seen := map[string]bool{}
	for _, a := range answers {
		switch {
		case a.unsupported:
			pinnedOnly = true
		case a.err != nil:
			s.adminUpstreamFailure(c, a.err)
			return
		}
		if a.full && (cutoff == "" || a.ids[len(a.ids)-1] < cutoff) {
			cutoff = a.ids[len(a.ids)-1]
		}
		for _, id := range a.ids {
			seen[id] = true
		}
	}
	if pinnedOnly { // the shards' rows are not all known: list what the map knows
		seen, cutoff = map[string]bool{}, ""
	}
	for t := range v.Pins() {
		seen[t] = true
	}
	var tenants []string
	for t := range seen {
		if t > after && (cutoff == "" || t <= cutoff) {
			tenants = append(tenants, t)
		}
	}
	slices.Sort(tenants)
	ans := TenantsAnswer{Items: []TenantListItem{}, PinnedOnly: pinnedOnly}
	next := cutoff
	for _, t := range tenants {
		if len(ans.Items) == limit {
			next = ans.Items[limit-1].ID
			break
		}
		r, err := v.Lookup(t)
		if err != nil || (shard != "" && r.Shard != shard) {
			continue // placed elsewhere by the map (a copy awaiting cleanup), or an id it refuses
		}
		region, _ := v.TenantRegion(t)
		ans.Items = append(ans.Items, TenantListItem{ID: t, Shard: r.Shard, HomeRegion: r.HomeRegion,
			Pinned: r.Pinned, Region: region, Epoch: r.Epoch, Moving: r.Moving})
	}
	if next != "" {
		cur := s.encodeTenantCursor(next, shard)
		ans.NextCursor = &cur
		u := *c.Request.URL
		nq := u.Query()
		nq.Set("cursor", cur)
		u.RawQuery = nq.Encode()
		c.Header("Link", "<"+u.RequestURI()+`>; rel="next"`)
	}
	c.JSON(http.StatusOK, ans)
}

// shardTenantPages asks an API node of every shard's home region, at once, for up to n tenant
// ids after after on that shard.
func (s *Server) shardTenantPages(ctx context.Context, shards []shardmap.Shard, after string, n int) []shardTenants {
	out := make([]shardTenants, len(shards))
	var wg sync.WaitGroup
	for i, sh := range shards {
		wg.Go(func() {
			path := "/internal/v1/tenants?shard=" + url.QueryEscape(sh.ID) + "&limit=" + strconv.Itoa(n)
			if after != "" {
				path += "&after=" + url.QueryEscape(after)
			}
			status, body, err := s.internalCall(ctx, sh.HomeRegion, http.MethodGet, path, nil)
			var ans struct {
				Items []struct {
					ID string `json:"id"`
				} `json:"items"`
			}
			switch {
			case err != nil:
				out[i].err = err
			case status == http.StatusNotImplemented:
				out[i].unsupported = true
			case status != http.StatusOK:
				out[i].err = fmt.Errorf("API node answered %d to the tenant list of %s: %s", status, sh.ID, truncate(body, 200))
			case json.Unmarshal(body, &ans) != nil:
				out[i].err = fmt.Errorf("API node answered an unreadable tenant list of %s: %s", sh.ID, truncate(body, 200))
			default:
				for _, it := range ans.Items {
					out[i].ids = append(out[i].ids, it.ID)
				}
				out[i].full = len(out[i].ids) >= n
			}
		})
	}
	wg.Wait()
	return out
}

// A tenants-list cursor is base64url("t1|<shard filter>|<last id>") + "." + base64url(the first
// 16 bytes of its HMAC-SHA256 under the cluster token): opaque, bound to its shard filter, and
// tamper-evident like the /v1 cursors.
const tenantCursorPrefix = "t1|"

func (s *Server) tenantCursorMAC(payload string) []byte {
	m := hmac.New(sha256.New, []byte("admin-tenants-cursor|"+s.cfg.ClusterToken))
	m.Write([]byte(payload))
	return m.Sum(nil)[:16]
}

func (s *Server) encodeTenantCursor(last, shard string) string {
	payload := tenantCursorPrefix + shard + "|" + last
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(s.tenantCursorMAC(payload))
}

func (s *Server) decodeTenantCursor(cur, shard string) (string, error) {
	bad := errors.New("cursor is not one this list returned")
	p, m, ok := strings.Cut(cur, ".")
	if !ok || len(cur) > 512 {
		return "", bad
	}
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p)
	mac, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, s.tenantCursorMAC(string(payload))) {
		return "", bad
	}
	// The decoder skips newlines: accept only the spelling we wrote.
	if enc.EncodeToString(payload) != p || enc.EncodeToString(mac) != m {
		return "", bad
	}
	rest, ok := strings.CutPrefix(string(payload), tenantCursorPrefix)
	if !ok {
		return "", bad
	}
	curShard, last, ok := strings.Cut(rest, "|")
	if !ok || !ids.ValidTenant(last) {
		return "", bad
	}
	if curShard != shard {
		return "", errors.New("cursor was made for another shard filter")
	}
	return last, nil
}
