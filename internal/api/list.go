package api

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/problem"
)

// listBody is the answer of a list or batch read.
type listBody struct {
	Items      []record `json:"items"`
	NextCursor *string  `json:"next_cursor"`
}

// dataExpr selects the data column, or only the requested top-level fields of it.
func dataExpr(fields []string, arg int) string {
	if fields == nil {
		return "data"
	}
	return `COALESCE((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(data) AS e WHERE e.key = ANY($` + strconv.Itoa(arg) + `)), '{}'::jsonb)`
}

func (s *Server) listRecords(c *gin.Context) {
	coll, _, ok := pathParams(c, false)
	if !ok {
		return
	}
	lq, err := parseListQuery(c.Request.URL.Query())
	if err != nil {
		problem.Write(c, http.StatusBadRequest, "", err.Error())
		return
	}
	t, ok := s.resolve(c, false)
	if !ok {
		return
	}
	if lq.IDs != nil {
		s.batchGet(c, t, coll, lq)
		return
	}
	scope := cursorScope{Tenant: t.tenant, Collection: coll, Desc: lq.Desc, Filter: lq.FilterJSON}
	var after string
	if lq.Cursor != "" {
		if after, err = s.cursors.Decode(scope, lq.Cursor); err != nil {
			problem.Write(c, http.StatusBadRequest, "", "invalid cursor")
			return
		}
	}
	// Keyset page on the primary key (tenant_id, collection, id); data @> uses the GIN index
	// when the filter is selective. LIMIT n+1 tells whether another page exists.
	args := []any{t.tenant, coll, lq.Limit + 1}
	var sb strings.Builder
	sb.WriteString(`SELECT id, version, ` + dataExpr(lq.Fields, 4) + `, created_at, updated_at FROM records WHERE tenant_id = $1 AND collection = $2 AND NOT deleted`)
	if lq.Fields != nil {
		args = append(args, lq.Fields)
	}
	if lq.FilterJSON != "" {
		args = append(args, lq.FilterJSON)
		sb.WriteString(` AND data @> $` + strconv.Itoa(len(args)) + `::jsonb`)
	}
	cmp, dir := ">", "ASC"
	if lq.Desc {
		cmp, dir = "<", "DESC"
	}
	if after != "" {
		args = append(args, after)
		sb.WriteString(` AND id ` + cmp + ` $` + strconv.Itoa(len(args)))
	}
	sb.WriteString(` ORDER BY id ` + dir + ` LIMIT $3`)
	out := listBody{Items: []record{}}
	err = s.readTx(c, t, func(b *pgx.Batch) {
		b.Queue(sb.String(), args...).Query(func(rows pgx.Rows) error {
			var err error
			out.Items, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (record, error) { return scanRecord(row, coll) })
			return err
		})
	})
	if err != nil {
		s.failWith(c, err)
		return
	}
	if len(out.Items) > lq.Limit {
		out.Items = out.Items[:lq.Limit]
		next := s.cursors.Encode(scope, out.Items[len(out.Items)-1].ID)
		out.NextCursor = &next
		u := *c.Request.URL
		q := u.Query()
		q.Set("cursor", next)
		u.RawQuery = q.Encode()
		c.Header("Link", "<"+u.RequestURI()+`>; rel="next"`)
	}
	c.JSON(http.StatusOK, out)
}

// batchGet reads up to 200 ids in one query; missing and deleted ids are left out, the rest keep
// the requested order.
func (s *Server) batchGet(c *gin.Context, t target, coll string, lq listQuery) {
	args := []any{t.tenant, coll, lq.IDs}
	if lq.Fields != nil {
		args = append(args, lq.Fields)
	}
	var byID map[string]record
	err := s.readTx(c, t, func(b *pgx.Batch) {
		b.Queue(`SELECT id, version, `+dataExpr(lq.Fields, 4)+`, created_at, updated_at FROM records
			WHERE tenant_id = $1 AND collection = $2 AND id = ANY($3) AND NOT deleted`, args...).Query(func(rows pgx.Rows) error {
			byID = map[string]record{} // a standby read that failed may be retried on the primary
			recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (record, error) { return scanRecord(row, coll) })
			for _, r := range recs {
				byID[r.ID] = r
			}
			return err
		})
	})
	if err != nil {
		s.failWith(c, err)
		return
	}
	out := listBody{Items: make([]record, 0, len(byID))}
	for _, id := range lq.IDs {
		if r, ok := byID[id]; ok {
			out.Items = append(out.Items, r)
		}
	}
	c.JSON(http.StatusOK, out)
}
