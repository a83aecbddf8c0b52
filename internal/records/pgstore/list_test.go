package pgstore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
)

// TestExplainUsesIndex explains the exact statements listStatement and batchStatement build —
// every shape a list or batch read can take — against a table with many tenants, as the service
// role under RLS: each must read through an index, scoped to the tenant by the statement's own
// tenant_id condition (not only by the RLS policy), and an unfiltered list page must come out of
// the index in id order (no Sort), which is what makes LIMIT n+1 keyset paging cheap. (A
// filtered page may sort the few rows the filter leaves.)
func TestExplainUsesIndex(t *testing.T) {
	e := newEnv(t, shards.Config{})
	ctx := context.Background()
	conn, err := e.pg.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i := range 20 {
		tn := fmt.Sprintf("tenant-%02d", i)
		if _, err := conn.Exec(ctx, `INSERT INTO tenants (tenant_id) VALUES ($1)`, tn); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO records (tenant_id, collection, id, version, data)
			SELECT $1, 'items', 'rec-' || lpad(g::text, 5, '0'), 1, jsonb_build_object('i', g, 'even', g % 2 = 0, 'name', 'n' || g)
			FROM generate_series(0, 999) g`, tn); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `ANALYZE records`); err != nil {
		t.Fatal(err)
	}
	sh, _ := e.maps.ShardInfo("s1")
	pool, err := e.conns.Primary(ctx, sh)
	if err != nil {
		t.Fatal(err)
	}
	const tenant = "tenant-03"
	type stmt struct {
		sql     string
		args    []any
		ordered bool // must be read in index order
	}
	stmts := map[string]stmt{}
	for name, q := range map[string]records.ListQuery{
		"first page":        {Limit: 37},
		"next page desc":    {Limit: 37, Desc: true, After: "rec-00500"},
		"filtered":          {Limit: 37, Filter: `{"i":7}`},
		"filtered fields":   {Limit: 37, Filter: `{"even":true}`, Fields: []string{"i", "name"}, After: "rec-00100"},
		"fields, last page": {Limit: 200, Fields: []string{"i"}, After: "rec-00900"},
	} {
		sql, args := listStatement(tenant, "items", q)
		stmts["list "+name] = stmt{sql, args, q.Filter == ""}
	}
	for name, fields := range map[string][]string{"batch": nil, "batch fields": {"i"}} {
		sql, args := batchStatement(tenant, "items", []string{"rec-00001", "rec-00002"}, fields)
		stmts[name] = stmt{sql, args, false}
	}
	for name, st := range stmts {
		t.Run(name, func(t *testing.T) {
			var plan []string
			err := inTx(ctx, pool, tenant, pgx.TxOptions{}, func(tx pgx.Tx) error {
				rows, err := tx.Query(ctx, "EXPLAIN "+st.sql, st.args...)
				if err != nil {
					return err
				}
				plan, err = pgx.CollectRows(rows, pgx.RowTo[string])
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			joined := strings.Join(plan, "\n")
			switch {
			case strings.Contains(joined, "Seq Scan") || !strings.Contains(joined, "Index"):
				t.Errorf("not an index read: %s\nplan:\n%s", st.sql, joined)
			case !strings.Contains(joined, "tenant_id = '"+tenant+"'"):
				t.Errorf("the statement does not scope itself to the tenant: %s\nplan:\n%s", st.sql, joined)
			case st.ordered && strings.Contains(joined, "Sort"):
				t.Errorf("list page is sorted, not read in index order: %s\nplan:\n%s", st.sql, joined)
			}
		})
	}
}
