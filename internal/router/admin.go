package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/strictjson"
	"github.com/meridian-dev/meridian/shardmap"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// requireAdmin lets only tokens with the admin scope through (a tenant token → 403).
func (s *Server) requireAdmin(c *gin.Context) {
	stateOf(c).class = ClassAdmin
	p, ok := s.authenticate(c)
	if !ok {
		return
	}
	if !p.HasScope("admin") {
		s.problem(c, http.StatusForbidden, "Forbidden", "the admin API needs a token with scope admin")
		return
	}
	c.Next()
}

// createTenantRequest is the body of POST /admin/v1/tenants.
type createTenantRequest struct {
	ID     string `json:"id"`
	Region string `json:"region,omitempty"`
}

// TenantInfo is the answer of the tenant admin endpoints (DESIGN.md §4a); Epoch and Moving are
// only in GET's answer.
type TenantInfo struct {
	ID         string  `json:"id"`
	Shard      string  `json:"shard"`
	HomeRegion string  `json:"home_region"`
	Pinned     bool    `json:"pinned"`
	Epoch      *uint64 `json:"epoch,omitempty"`
	Moving     *bool   `json:"moving,omitempty"`
	// Limits are the tenant's effective limits, in GET's and PATCH's answers.
	Limits *LimitsInfo `json:"limits,omitempty"`
}

// DecodeCreateTenant parses a POST /admin/v1/tenants body strictly (internal/strictjson, the
// rules of DESIGN.md §4): one JSON object, member names exactly "id" and "region"
// (case-sensitive), none duplicated, no trailing data, a valid tenant id. Its errors are in our
// own words, fit for a problem detail.
func DecodeCreateTenant(body []byte) (id, region string, err error) {
	var req createTenantRequest
	if err := strictjson.Decode(body, &req); err != nil {
		return "", "", fmt.Errorf("body must be {\"id\":...,\"region\":...}: %w", err)
	}
	if !ids.ValidTenant(req.ID) {
		return "", "", fmt.Errorf("%w: id must match %s", ErrBadTenantID, ids.TenantPattern)
	}
	return req.ID, req.Region, nil
}

func (s *Server) createTenant(c *gin.Context) {
	body, ok := s.readBody(c)
	if !ok {
		return
	}
	id, region, err := DecodeCreateTenant(body)
	if err != nil {
		s.problem(c, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	stateOf(c).tenant = id
	if region != "" && !slices.ContainsFunc(s.cfg.Map.Summary().Regions, func(r RegionRef) bool { return r.ID == region }) {
		s.problem(c, http.StatusBadRequest, "Bad Request", "unknown region "+region)
		return
	}
	ctx := c.Request.Context()
	// A tenant that is not pinned has no entry of its own in the map, so existence is the
	// shard's record: ask it before placing the tenant anywhere.
	if route, err := s.cfg.Map.Lookup(id); err == nil {
		switch _, err := s.tenantOnShard(ctx, id, route); {
		case err == nil:
			s.problem(c, http.StatusConflict, "Conflict", "tenant "+id+" already exists")
			return
		case !errors.Is(err, ErrTenantNotFound):
			s.adminUpstreamFailure(c, err)
			return
		}
	}
	route, err := s.cfg.Map.CreateTenant(ctx, id, region)
	if errors.Is(err, ErrTenantExists) {
		// The map has the tenant's pin but its shard has no row (checked above): an earlier
		// create pinned it and failed to record it. Resume that create, but only for a request
		// asking for the same placement; anything else would silently answer for a different
		// request.
		route, err = s.cfg.Map.Lookup(id)
		if err == nil && (!route.Pinned || route.HomeRegion != region) {
			s.problem(c, http.StatusConflict, "Conflict", fmt.Sprintf(
				"tenant %s already exists (placed in region %s; a create naming that region finishes an interrupted create)",
				id, route.HomeRegion))
			return
		}
	}
	switch {
	case errors.Is(err, ErrUnknownRegion), errors.Is(err, ErrBadTenantID):
		s.problem(c, http.StatusBadRequest, "Bad Request", err.Error())
		return
	case err != nil:
		s.log(c).Warn("admin tenant create: shard map", "err", err)
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable", "the shard map could not place the tenant; retry")
		return
	}
	payload, _ := json.Marshal(map[string]string{"id": id, "shard": route.Shard})
	status, answer, err := s.internalCall(ctx, route.HomeRegion, http.MethodPost, "/internal/v1/tenants", payload)
	switch {
	case err != nil:
		s.adminUpstreamFailure(c, err)
		return
	case status == http.StatusConflict || status == http.StatusOK:
		// The API node answers 200 when the tenant row was already there, 201 when it made it.
		s.problem(c, http.StatusConflict, "Conflict", "tenant "+id+" already exists")
		return
	case status != http.StatusCreated:
		s.log(c).Warn("API node refused to record a tenant", "status", status, "answer", truncate(answer, 200))
		s.problem(c, http.StatusBadGateway, "Bad Gateway",
			fmt.Sprintf("API node answered %d recording the tenant", status))
		return
	}
	c.JSON(http.StatusCreated, TenantInfo{ID: id, Shard: route.Shard, HomeRegion: route.HomeRegion, Pinned: route.Pinned})
}

func (s *Server) getTenant(c *gin.Context) {
	id := c.Param("id")
	if !ids.ValidTenant(id) {
		s.problem(c, http.StatusBadRequest, "Bad Request", "tenant id must match "+ids.TenantPattern)
		return
	}
	stateOf(c).tenant = id
	route, err := s.cfg.Map.Lookup(id)
	if err != nil {
		s.problem(c, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	if _, err := s.tenantOnShard(c.Request.Context(), id, route); err != nil {
		if errors.Is(err, ErrTenantNotFound) {
			s.problem(c, http.StatusNotFound, "Not Found", "tenant "+id+" not found")
			return
		}
		s.adminUpstreamFailure(c, err)
		return
	}
	c.JSON(http.StatusOK, s.tenantInfo(id, route))
}

// tenantInfo is the answer of GET and PATCH /admin/v1/tenants/{id}.
func (s *Server) tenantInfo(id string, route Route) TenantInfo {
	limits := s.limitsInfo(id)
	return TenantInfo{ID: id, Shard: route.Shard, HomeRegion: route.HomeRegion,
		Pinned: route.Pinned, Epoch: &route.Epoch, Moving: &route.Moving, Limits: &limits}
}

// patchTenant changes a tenant's limit overrides (DESIGN.md §4a): the tenant must exist on its
// shard (404), the body is a merge patch of {"limits":{...}} (400 when malformed or out of
// bounds), the change is applied through Raft and awaited in the local copy, and the answer is
// GET's body.
func (s *Server) patchTenant(c *gin.Context) {
	id := c.Param("id")
	if !ids.ValidTenant(id) {
		s.problem(c, http.StatusBadRequest, "Bad Request", "tenant id must match "+ids.TenantPattern)
		return
	}
	stateOf(c).tenant = id
	body, ok := s.readBody(c)
	if !ok {
		return
	}
	patch, err := DecodeTenantPatch(body)
	if err != nil {
		s.problem(c, http.StatusBadRequest, "Bad Request", err.Error())
		return
	}
	route, err := s.cfg.Map.Lookup(id)
	if err != nil {
		c.Header("Retry-After", "1")
		s.problem(c, http.StatusServiceUnavailable, "Service Unavailable", "shard map not available")
		return
	}
	ctx := c.Request.Context()
	// The map cannot tell a tenant that was never created (a slot-placed tenant has no entry),
	// so existence is the shard's record, as for GET.
	if _, err := s.tenantOnShard(ctx, id, route); err != nil {
		if errors.Is(err, ErrTenantNotFound) {
			s.problem(c, http.StatusNotFound, "Not Found", "tenant "+id+" not found")
			return
		}
		s.adminUpstreamFailure(c, err)
		return
	}
	if patch.Set != (TenantLimits{}) || len(patch.Reset) > 0 {
		_, err := s.cfg.Map.SetTenantLimits(ctx, id, patch)
		switch {
		case errors.Is(err, ErrBadLimits), errors.Is(err, ErrBadTenantID):
			s.problem(c, http.StatusBadRequest, "Bad Request", "limits out of bounds")
			return
		case err != nil:
			s.log(c).Warn("recording tenant limits failed", "err", err)
			c.Header("Retry-After", "1")
			s.problem(c, http.StatusServiceUnavailable, "Service Unavailable", "the shard map did not record the change; retry")
			return
		}
		if r, err := s.cfg.Map.Lookup(id); err == nil {
			route = r
		}
	}
	c.JSON(http.StatusOK, s.tenantInfo(id, route))
}

// LimitsInfo is a tenant's effective limits and which of them are its own overrides. RPS and
// Burst are null when no rate limit applies to the tenant.
type LimitsInfo struct {
	RPS         *float64        `json:"rps"`
	Burst       *int            `json:"burst"`
	Concurrency int             `json:"concurrency"`
	Overridden  LimitsOverrides `json:"overridden"`
}

// LimitsOverrides says, per limit, whether the tenant has an override of its own.
type LimitsOverrides struct {
	RPS         bool `json:"rps"`
	Burst       bool `json:"burst"`
	Concurrency bool `json:"concurrency"`
}

// tenantDefaulter is a Limiter that can say what its default tenant rule is (RateLimiter
// can); with a Limiter that cannot, a tenant's default rate is reported as null.
type tenantDefaulter interface {
	TenantDefault() (rate float64, burst int)
}

// limitsInfo is the tenant's effective limits as this router applies them.
func (s *Server) limitsInfo(tenant string) LimitsInfo {
	o, _ := s.cfg.Map.TenantLimits(tenant)
	var rate float64
	var burst int
	if s.lim.defaults != nil {
		rate, burst = s.lim.defaults.TenantDefault()
	}
	info := LimitsInfo{Concurrency: s.cfg.TenantConcurrency,
		Overridden: LimitsOverrides{RPS: o.RPS != 0, Burst: o.Burst != 0, Concurrency: o.Concurrency != 0}}
	if o.RPS != 0 {
		rate = o.RPS
	}
	if o.Burst != 0 {
		burst = o.Burst
	}
	if o.Concurrency != 0 {
		info.Concurrency = o.Concurrency
	}
	if rate > 0 { // a burst without a rate limits nothing (internal/ratelimit)
		if burst == 0 {
			burst = max(1, int(math.Ceil(rate)))
		}
		info.RPS, info.Burst = &rate, &burst
	}
	return info
}

// DecodeTenantPatch parses a PATCH /admin/v1/tenants/{id} body: {"limits":{...}} with any of
// "rps" (a number in [shardmap.MinTenantRPS, shardmap.MaxTenantRPS]), "burst" (an integer in
// [1, shardmap.MaxTenantBurst]) and "concurrency" (an integer in [1,
// shardmap.MaxTenantConcurrency]), each of which may be null to reset it to the default (RFC
// 7396 merge patch). Anything else — other members, other types, trailing data — is an error.
func DecodeTenantPatch(body []byte) (LimitsPatch, error) {
	// Maps, not structs: encoding/json matches struct fields case-insensitively, and member
	// names are case-sensitive (DESIGN.md §4: "LIMITS" is unknown). strictjson refuses a member
	// named twice at any depth, which a map would silently fold.
	if err := strictjson.Check(body); err != nil {
		return LimitsPatch{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var top map[string]json.RawMessage
	if err := dec.Decode(&top); err != nil {
		return LimitsPatch{}, errors.New("body must be one JSON object {\"limits\":{\"rps\":…,\"burst\":…,\"concurrency\":…}}")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return LimitsPatch{}, errors.New("trailing data after the JSON body")
	}
	var limits map[string]json.RawMessage
	if _, ok := top["limits"]; !ok || len(top) != 1 {
		return LimitsPatch{}, errors.New("body must be {\"limits\":{...}} and nothing else")
	}
	if err := json.Unmarshal(top["limits"], &limits); err != nil || limits == nil {
		return LimitsPatch{}, errors.New("limits must be an object")
	}
	var p LimitsPatch
	for _, k := range slices.Sorted(maps.Keys(limits)) {
		v := bytes.TrimSpace(limits[k])
		if string(v) == "null" {
			switch k {
			case shardmap.LimitRPS, shardmap.LimitBurst, shardmap.LimitConcurrency:
				p.Reset = append(p.Reset, k)
				continue
			}
		}
		switch k {
		case shardmap.LimitRPS:
			var f float64
			if err := json.Unmarshal(v, &f); err != nil || !(f >= shardmap.MinTenantRPS && f <= shardmap.MaxTenantRPS) {
				return LimitsPatch{}, fmt.Errorf("limits.rps must be null or a number in [%v, %v]",
					shardmap.MinTenantRPS, float64(shardmap.MaxTenantRPS))
			}
			p.Set.RPS = f
		case shardmap.LimitBurst:
			n, err := boundedInt(v, shardmap.MaxTenantBurst)
			if err != nil {
				return LimitsPatch{}, fmt.Errorf("limits.burst must be null or an integer in [1, %d]", shardmap.MaxTenantBurst)
			}
			p.Set.Burst = n
		case shardmap.LimitConcurrency:
			n, err := boundedInt(v, shardmap.MaxTenantConcurrency)
			if err != nil {
				return LimitsPatch{}, fmt.Errorf("limits.concurrency must be null or an integer in [1, %d]",
					shardmap.MaxTenantConcurrency)
			}
			p.Set.Concurrency = n
		default:
			return LimitsPatch{}, fmt.Errorf("unknown limit %q (rps, burst, concurrency)", k)
		}
	}
	return p, nil
}

// boundedInt parses a JSON integer in [1, maxN].
func boundedInt(v []byte, maxN int) (int, error) {
	var n int
	if err := json.Unmarshal(v, &n); err != nil {
		return 0, err
	}
	if n < 1 || n > maxN {
		return 0, ErrBadLimits
	}
	return n, nil
}

// tenantOnShard asks the tenant's shard (through an API node of its home region, which reads
// the primary) whether the tenant was created; ErrTenantNotFound when it was not.
func (s *Server) tenantOnShard(ctx context.Context, id string, route Route) ([]byte, error) {
	status, body, err := s.internalCall(ctx, route.HomeRegion, http.MethodGet,
		"/internal/v1/tenants/"+url.PathEscape(id)+"?shard="+url.QueryEscape(route.Shard), nil)
	switch {
	case err != nil:
		return nil, err
	case status == http.StatusOK:
		return body, nil
	case status == http.StatusNotFound:
		return nil, ErrTenantNotFound
	default:
		return nil, fmt.Errorf("API node answered %d: %s", status, truncate(body, 200))
	}
}

// internalCall sends a request with the cluster token to an API node of region, trying up to
// three nodes when the connection fails. Internal calls are idempotent on the API side
// (recording an existing tenant answers 409).
func (s *Server) internalCall(ctx context.Context, region, method, path string, body []byte) (int, []byte, error) {
	var avoid []string
	var lastErr error
	for range 3 {
		up, err := s.cfg.Upstreams.Pick(region, avoid)
		if err != nil {
			if lastErr != nil {
				return 0, nil, lastErr
			}
			return 0, nil, err
		}
		var rb io.Reader
		if body != nil {
			rb = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(up.URL(), "/")+path, rb)
		if err != nil {
			up.Done(nil)
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+s.cfg.ClusterToken)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set(HeaderShardmapVersion, fmt.Sprint(s.cfg.Map.Version()))
		resp, err := s.client.Do(req)
		if err != nil {
			up.Done(err)
			avoid = append(avoid, up.ID())
			lastErr = fmt.Errorf("upstream %s: %w", up.URL(), err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		up.Done(nil)
		if err != nil {
			return 0, nil, err
		}
		return resp.StatusCode, b, nil
	}
	return 0, nil, lastErr
}

func (s *Server) adminUpstreamFailure(c *gin.Context, err error) {
	s.log(c).Warn("admin call to API node failed", "err", err)
	// The detail never carries the error's text (addresses, library messages): it is logged.
	if isTimeout(err) {
		s.problem(c, http.StatusGatewayTimeout, "Gateway Timeout", "the tenant's home-region API node did not answer in time")
		return
	}
	c.Header("Retry-After", "1")
	s.problem(c, http.StatusServiceUnavailable, "Service Unavailable", "no API node of the tenant's home region could answer; retry")
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

func (s *Server) getShardmap(c *gin.Context) {
	c.JSON(http.StatusOK, s.cfg.Map.Summary())
}

// RegionMembers is one region in GET /admin/v1/regions.
type RegionMembers struct {
	ID      string   `json:"id"`
	Members []Member `json:"members"`
}

// RegionsAnswer is the body of GET /admin/v1/regions: the members of every region and the
// map's Raft leader ("<raft id> <http url>", "" when unknown).
type RegionsAnswer struct {
	Leader  string          `json:"leader"`
	Regions []RegionMembers `json:"regions"`
}

func (s *Server) getRegions(c *gin.Context) {
	var members []Member
	if s.cfg.Members != nil {
		members = s.cfg.Members.Members()
	} else {
		// Without gossip the router knows API nodes only from its static list: no self-reported
		// health, lag or map version, only whether it would send them requests.
		for _, n := range s.cfg.Upstreams.Nodes() {
			health := "ok"
			if !n.Healthy {
				health = "down"
			}
			members = append(members, Member{Name: n.ID, Region: n.Region, Role: "api", Address: n.URL,
				Health: health, Healthy: n.Healthy})
		}
	}
	byRegion := map[string][]Member{}
	for _, r := range s.cfg.Map.Summary().Regions {
		byRegion[r.ID] = []Member{}
	}
	for _, m := range members {
		byRegion[m.Region] = append(byRegion[m.Region], m)
	}
	ans := RegionsAnswer{Leader: s.cfg.Map.Leader(), Regions: []RegionMembers{}}
	for id, ms := range byRegion {
		slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Role+a.Name, b.Role+b.Name) })
		ans.Regions = append(ans.Regions, RegionMembers{ID: id, Members: ms})
	}
	slices.SortFunc(ans.Regions, func(a, b RegionMembers) int { return strings.Compare(a.ID, b.ID) })
	c.JSON(http.StatusOK, ans)
}
