package api

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"testing"
)

func decodeList(t *testing.T, r result) listBody {
	t.Helper()
	if r.StatusCode != 200 {
		t.Fatalf("list: %d %s", r.StatusCode, r.Body)
	}
	var lb listBody
	if err := json.Unmarshal([]byte(r.Body), &lb); err != nil {
		t.Fatal(err)
	}
	return lb
}

// seed inserts n records for tenant directly (superuser), ids rec-00000.., data {"i":k,"even":bool}.
func (e *env) seed(shard, tenant, coll string, n int) {
	e.t.Helper()
	conn, err := e.pg.Connect(context.Background(), e.dbs[shard])
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), `INSERT INTO records (tenant_id, collection, id, version, data)
		SELECT $1, $2, 'rec-' || lpad(g::text, 5, '0'), 1, jsonb_build_object('i', g, 'even', g % 2 = 0, 'name', 'n' || g)
		FROM generate_series(0, $3 - 1) g`, tenant, coll, n); err != nil {
		e.t.Fatal(err)
	}
}

func TestPagingWhileInserting(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	e.seed("s1", "acme", "items", 1000)
	rw := "Bearer " + e.token("acme", "data:read data:write")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // concurrent writer: new records (UUIDv7 ids sort after "rec-" ids? no: digits < 'r')
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Mix ids that sort before, among and after the seeded ones.
			id := []string{"aaa-", "rec-00500-", "zzz-"}[i%3] + fmt.Sprint(i)
			e.do("PUT", "/v1/collections/items/records/"+id, rw, `{"data":{"new":true}}`, nil)
		}
	}()
	for _, order := range []string{"id", "-id"} {
		seen := map[string]int{}
		next := "/v1/collections/items/records?limit=37&order=" + order
		pages := 0
		for next != "" {
			r := e.do("GET", next, rw, "", nil)
			lb := decodeList(t, r)
			if len(lb.Items) > 37 {
				t.Fatalf("page of %d", len(lb.Items))
			}
			for _, it := range lb.Items {
				seen[it.ID]++
			}
			next = ""
			if lb.NextCursor != nil {
				link := r.Header.Get("Link")
				if !strings.HasSuffix(link, `>; rel="next"`) || !strings.Contains(link, url.QueryEscape(*lb.NextCursor)) {
					t.Fatalf("Link %q for cursor %q", link, *lb.NextCursor)
				}
				next = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
			}
			pages++
		}
		for i := 0; i < 1000; i++ {
			id := fmt.Sprintf("rec-%05d", i)
			if seen[id] != 1 {
				t.Fatalf("order %s: %s seen %d times", order, id, seen[id])
			}
		}
		for id, n := range seen {
			if n != 1 {
				t.Fatalf("order %s: %s seen %d times", order, id, n)
			}
		}
		if pages < 1000/37 {
			t.Fatalf("only %d pages", pages)
		}
	}
	close(stop)
	wg.Wait()
}

func TestListFeatures(t *testing.T) {
	e := newEnv(t)
	e.createTenant("acme", "s1")
	e.seed("s1", "acme", "items", 10)
	rw := "Bearer " + e.token("acme", "data:read")
	base := "/v1/collections/items/records"

	lb := decodeList(t, e.do("GET", base, rw, "", nil))
	if len(lb.Items) != 10 || lb.NextCursor != nil || lb.Items[0].ID != "rec-00000" {
		t.Fatalf("default list: %d items, cursor %v", len(lb.Items), lb.NextCursor)
	}
	lb = decodeList(t, e.do("GET", base+"?order=-id&limit=3", rw, "", nil))
	if len(lb.Items) != 3 || lb.Items[0].ID != "rec-00009" || lb.NextCursor == nil {
		t.Fatalf("desc: %+v", lb.Items)
	}
	// A cursor is bound to its order: reusing it with the other order is a 400.
	wantProblem(t, e.do("GET", base+"?order=id&limit=3&cursor="+*lb.NextCursor, rw, "", nil), 400)
	lb = decodeList(t, e.do("GET", base+"?where[even]=true&where[i]=4", rw, "", nil))
	if len(lb.Items) != 1 || lb.Items[0].ID != "rec-00004" {
		t.Fatalf("where: %+v", lb.Items)
	}
	lb = decodeList(t, e.do("GET", base+`?where[name]=n3`, rw, "", nil))
	if len(lb.Items) != 1 || lb.Items[0].ID != "rec-00003" {
		t.Fatalf("where string: %+v", lb.Items)
	}
	lb = decodeList(t, e.do("GET", base+"?where[even]=true&limit=2", rw, "", nil))
	if len(lb.Items) != 2 || lb.NextCursor == nil {
		t.Fatalf("filtered page: %+v", lb)
	}
	// The cursor is bound to the filter.
	wantProblem(t, e.do("GET", base+"?where[even]=false&limit=2&cursor="+*lb.NextCursor, rw, "", nil), 400)
	lb = decodeList(t, e.do("GET", base+"?where[even]=true&limit=2&cursor="+*lb.NextCursor, rw, "", nil))
	if len(lb.Items) != 2 || lb.Items[0].ID != "rec-00004" {
		t.Fatalf("filtered page 2: %+v", lb.Items)
	}
	lb = decodeList(t, e.do("GET", base+"?fields=name,missing&limit=1", rw, "", nil))
	if !jsonEqual(lb.Items[0].Data, `{"name":"n0"}`) {
		t.Fatalf("fields: %s", lb.Items[0].Data)
	}
	lb = decodeList(t, e.do("GET", base+"?ids=rec-00007,nope,rec-00002,rec-00007&fields=i", rw, "", nil))
	if len(lb.Items) != 2 || lb.Items[0].ID != "rec-00007" || lb.Items[1].ID != "rec-00002" || !jsonEqual(lb.Items[1].Data, `{"i":2}`) {
		t.Fatalf("batch: %+v", lb.Items)
	}
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = fmt.Sprintf("rec-%05d", i)
	}
	if lb = decodeList(t, e.do("GET", base+"?ids="+strings.Join(ids, ","), rw, "", nil)); len(lb.Items) != 10 {
		t.Fatalf("batch 200: %d", len(lb.Items))
	}
	// gzip when accepted (Go's client adds Accept-Encoding and decodes transparently, so ask explicitly).
	r := e.do("GET", base, rw, "", map[string]string{"Accept-Encoding": "gzip"})
	if r.Header.Get("Content-Encoding") != "gzip" || r.StatusCode != 200 {
		t.Fatalf("gzip: %v", r.Header)
	}
	// A body under gzipMinSize goes out as it is.
	r = e.do("GET", base+"?limit=1&fields=i", rw, "", map[string]string{"Accept-Encoding": "gzip"})
	if r.Header.Get("Content-Encoding") != "" || r.StatusCode != 200 {
		t.Fatalf("small page: %v", r.Header)
	}
	decodeList(t, r)
	// /metrics is compressed once, by promhttp (the middleware used to gzip it a second time).
	r = e.do("GET", "/metrics", "", "", map[string]string{"Accept-Encoding": "gzip"})
	// …and says Vary: Accept-Encoding once (promhttp's own; the middleware added a second).
	if r.Header.Get("Content-Encoding") != "gzip" || strings.Count(strings.Join(r.Header.Values("Vary"), ","), "Accept-Encoding") != 1 {
		t.Fatalf("metrics: %v", r.Header)
	}
	zr, err := gzip.NewReader(strings.NewReader(r.Body))
	if err != nil {
		t.Fatal(err)
	}
	text, err := io.ReadAll(zr)
	if err != nil || !bytes.Contains(text, []byte("# HELP meridian_api_requests_total")) {
		t.Fatalf("metrics decompressed once: %v %.80q", err, text)
	}
}
