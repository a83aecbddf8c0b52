package pgstore

import (
	"strconv"
	"strings"

	"github.com/meridian-dev/meridian/internal/records"
)

// dataExpr selects the data column, or only the requested top-level fields of it ($arg).
func dataExpr(fields []string, arg int) string {
	if fields == nil {
		return "data"
	}
	return `COALESCE((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(data) AS e WHERE e.key = ANY($` + strconv.Itoa(arg) + `)), '{}'::jsonb)`
}

// listStatement builds a list page's query and its arguments: a keyset page on the primary key
// (tenant_id, collection, id); data @> uses the GIN index when the filter is selective. LIMIT
// n+1 tells whether another page exists. TestExplainUsesIndex explains exactly these statements.
func listStatement(tenant, coll string, q records.ListQuery) (string, []any) {
	args := []any{tenant, coll, q.Limit + 1}
	var sb strings.Builder
	sb.WriteString(`SELECT id, version, ` + dataExpr(q.Fields, 4) + `, created_at, updated_at FROM records WHERE tenant_id = $1 AND collection = $2 AND NOT deleted`)
	if q.Fields != nil {
		args = append(args, q.Fields)
	}
	if q.Filter != "" {
		args = append(args, q.Filter)
		sb.WriteString(` AND data @> $` + strconv.Itoa(len(args)) + `::jsonb`)
	}
	cmp, dir := ">", "ASC"
	if q.Desc {
		cmp, dir = "<", "DESC"
	}
	if q.After != "" {
		args = append(args, q.After)
		sb.WriteString(` AND id ` + cmp + ` $` + strconv.Itoa(len(args)))
	}
	sb.WriteString(` ORDER BY id ` + dir + ` LIMIT $3`)
	return sb.String(), args
}

// batchStatement builds the query of an ids= batch read and its arguments.
func batchStatement(tenant, coll string, ids, fields []string) (string, []any) {
	args := []any{tenant, coll, ids}
	if fields != nil {
		args = append(args, fields)
	}
	return `SELECT id, version, ` + dataExpr(fields, 4) + `, created_at, updated_at FROM records
			WHERE tenant_id = $1 AND collection = $2 AND id = ANY($3) AND NOT deleted`, args
}
