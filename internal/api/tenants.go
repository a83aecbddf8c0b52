package api

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/problem"
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
	if err := decodeStrict(strings.NewReader(string(body)), &tb); err != nil {
		problem.Write(c, http.StatusBadRequest, "", err.Error())
		return
	}
	if !auth.TenantPattern.MatchString(tb.ID) {
		problem.Write(c, http.StatusBadRequest, "", "id must match "+auth.TenantPattern.String())
		return
	}
	sh, ok := s.maps.ShardInfo(tb.Shard)
	if !ok {
		problem.Write(c, http.StatusBadRequest, "", "unknown shard "+strconv.Quote(tb.Shard))
		return
	}
	c.Set("tenant", tb.ID)
	c.Set("shard", sh.ID)
	if sh.HomeRegion != s.cfg.Region {
		c.Header(hdrShardmapVersion, strconv.FormatUint(s.maps.Version(), 10))
		problem.Write(c, http.StatusMisdirectedRequest, "", "shard "+sh.ID+" is homed in "+sh.HomeRegion)
		return
	}
	pool, err := s.pools.Primary(c.Request.Context(), sh)
	if err != nil {
		s.failWith(c, err)
		return
	}
	var created bool
	err = inTx(c.Request.Context(), pool, tb.ID, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(c.Request.Context(), `INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING`, tb.ID)
		created = tag.RowsAffected() == 1
		return err
	})
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			err = ErrTenantNotFound
		}
		s.failWith(c, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	c.JSON(status, tb)
}

// TenantRow is the answer of GET /internal/v1/tenants/{id}: the tenant's row on its shard.
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
	if !auth.TenantPattern.MatchString(id) {
		problem.Write(c, http.StatusBadRequest, "", "id must match "+auth.TenantPattern.String())
		return
	}
	c.Set("tenant", id)
	q := c.Request.URL.Query()
	for k, v := range q {
		if k != "shard" || len(v) != 1 {
			problem.Write(c, http.StatusBadRequest, "", "only one query parameter, shard, is allowed")
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
	sh, ok := s.maps.ShardInfo(shard)
	if !ok {
		problem.Write(c, http.StatusBadRequest, "", "unknown shard "+strconv.Quote(shard))
		return
	}
	c.Set("shard", sh.ID)
	pool, err := s.pools.Primary(c.Request.Context(), sh)
	if err != nil {
		s.failWith(c, err)
		return
	}
	row := TenantRow{ID: id, Shard: sh.ID}
	// One round trip, like every read (readOn; its tenant check answers a missing tenant).
	err = s.readOn(c.Request.Context(), pool, id, nil, func(b *pgx.Batch) {
		b.Queue(`SELECT status, write_epoch, write_fenced, created_at FROM tenants WHERE tenant_id = $1`, id).
			QueryRow(func(r pgx.Row) error {
				err := r.Scan(&row.Status, &row.WriteEpoch, &row.Fenced, &row.CreatedAt)
				if errors.Is(err, pgx.ErrNoRows) {
					return ErrTenantNotFound
				}
				return err
			})
	})
	if err != nil {
		s.failWith(c, err)
		return
	}
	c.JSON(http.StatusOK, row)
}
