package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// tenantBody is the body of POST /internal/v1/tenants.
type tenantBody struct {
	ID    string `json:"id"`
	Shard string `json:"shard"`
}

// createTenant records a tenant on its shard (idempotent): 201 when created, 200 when it
// already existed. Only the shard's home region may do it.
func (s *Server) createTenant(c *gin.Context) {
	body, ok := s.readBody(c)
	if !ok {
		return
	}
	var tb tenantBody
	if err := decodeStrict(body, &tb); err != nil {
		s.failWith(c, err)
		return
	}
	if !ids.ValidTenant(tb.ID) {
		problem.InvalidBody.Write(c, "id must match "+ids.TenantPattern)
		return
	}
	home, ok := s.maps.ShardHome(tb.Shard)
	if !ok {
		problem.UnknownShard.Write(c, "unknown shard "+strconv.Quote(tb.Shard))
		return
	}
	c.Set("tenant", tb.ID)
	c.Set("shard", tb.Shard)
	if home != s.cfg.Region {
		c.Header(hdrShardmapVersion, strconv.FormatUint(s.maps.Version(), 10))
		problem.MisdirectedRequest.Write(c, "shard "+tb.Shard+" is homed in "+home)
		return
	}
	created, err := s.store.CreateTenant(c.Request.Context(), tb.ID, tb.Shard)
	if err != nil {
		s.failWith(c, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	c.JSON(status, tb)
}

// TenantRow is the answer of GET /internal/v1/tenants/{id}: the tenant's row on its shard
// (records.TenantRow in its wire form).
type TenantRow struct {
	ID         string    `json:"id"`
	Shard      string    `json:"shard"`
	Status     string    `json:"status"`
	WriteEpoch int64     `json:"write_epoch"`
	Fenced     bool      `json:"fenced"`
	CreatedAt  time.Time `json:"created_at"`
}

// getTenant answers whether the tenant row exists on a shard, read from the shard's primary
// (the router's admin API decides existence with it, so it must not see a lagging copy). The
// shard is the `shard` query parameter, else the node's map placement; 404 when no row.
func (s *Server) getTenant(c *gin.Context) {
	id := c.Param("id")
	if !ids.ValidTenant(id) {
		problem.InvalidPath.Write(c, "id must match "+ids.TenantPattern)
		return
	}
	c.Set("tenant", id)
	q, err := parseQuery(c.Request.URL.RawQuery)
	if err != nil {
		s.failWith(c, err)
		return
	}
	for k, v := range q {
		if k != "shard" || len(v) != 1 {
			problem.InvalidQuery.Write(c, "only one query parameter, shard, is allowed")
			return
		}
	}
	shard := q.Get("shard")
	if shard == "" {
		rt, err := s.maps.Lookup(id)
		if err != nil {
			retryAfter(c, 1, "shard map not ready")
			return
		}
		shard = rt.Shard
	}
	if _, ok := s.maps.ShardHome(shard); !ok {
		problem.UnknownShard.Write(c, "unknown shard "+strconv.Quote(shard))
		return
	}
	c.Set("shard", shard)
	row, err := s.store.Tenant(c.Request.Context(), id, shard)
	if err != nil {
		s.failWith(c, err)
		return
	}
	c.JSON(http.StatusOK, TenantRow(row))
}

// TenantListItem is one row of GET /internal/v1/tenants.
type TenantListItem struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// TenantList is the answer of GET /internal/v1/tenants.
type TenantList struct {
	Items []TenantListItem `json:"items"`
}

// listTenants answers the tenants with a row on a shard (the required `shard` parameter) whose
// id sorts after `after`, in id order, at most `limit` (1..1000, default 100), read from the
// shard's primary as the worker role (the router's admin list merges the shards' answers).
// Without the worker role's connections (-worker-db-user) it answers 501 not-configured.
func (s *Server) listTenants(c *gin.Context) {
	q, err := parseQuery(c.Request.URL.RawQuery)
	if err != nil {
		s.failWith(c, err)
		return
	}
	for k, v := range q {
		if (k != "shard" && k != "after" && k != "limit") || len(v) != 1 {
			problem.InvalidQuery.Write(c, "the parameters are shard (required), after and limit, each at most once")
			return
		}
	}
	shard, after := q.Get("shard"), q.Get("after")
	if _, ok := s.maps.ShardHome(shard); !ok {
		problem.UnknownShard.Write(c, "unknown shard "+strconv.Quote(shard))
		return
	}
	if after != "" && !ids.ValidTenant(after) {
		problem.InvalidQuery.Write(c, "after must be a tenant id ("+ids.TenantPattern+")")
		return
	}
	limit := 100
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > pgstoreMaxTenantsPage {
			problem.InvalidQuery.Write(c, "limit must be an integer in [1, "+strconv.Itoa(pgstoreMaxTenantsPage)+"]")
			return
		}
		limit = n
	}
	c.Set("shard", shard)
	rows, err := s.store.ListTenants(c.Request.Context(), shard, after, limit)
	if errors.Is(err, records.ErrNoWorkerRole) {
		problem.Write(c, http.StatusNotImplemented, "Not Implemented", "this API node has no worker-role connections (-worker-db-user) to list tenants with")
		return
	}
	if err != nil {
		s.failWith(c, err)
		return
	}
	ans := TenantList{Items: make([]TenantListItem, 0, len(rows))}
	for _, r := range rows {
		ans.Items = append(ans.Items, TenantListItem(r))
	}
	c.JSON(http.StatusOK, ans)
}

// pgstoreMaxTenantsPage is pgstore.MaxTenantsPage (the api package does not import the store).
const pgstoreMaxTenantsPage = 1000
