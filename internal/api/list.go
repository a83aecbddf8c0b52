package api

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records"
)

// listBody is the answer of a list or batch read.
type listBody struct {
	Items      []record `json:"items"`
	NextCursor *string  `json:"next_cursor"`
}

func wire(rs []records.Record) []record {
	out := make([]record, len(rs))
	for i, r := range rs {
		out[i] = record(r)
	}
	return out
}

func (s *Server) listRecords(c *gin.Context) {
	coll, _, ok := pathParams(c, false)
	if !ok {
		return
	}
	lq, err := parseRawListQuery(c.Request.URL.RawQuery)
	if err != nil {
		s.failWith(c, err)
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
	scope := cursorScope{Tenant: t.Tenant, Collection: coll, Desc: lq.Desc, Filter: lq.FilterJSON}
	q := records.ListQuery{Limit: lq.Limit, Desc: lq.Desc, Fields: lq.Fields, Filter: lq.FilterJSON}
	if lq.Cursor != "" {
		if q.After, err = s.cursors.Decode(scope, lq.Cursor); err != nil {
			problem.InvalidCursor.Write(c, "invalid cursor")
			return
		}
	}
	ro, ok := s.readOptions(c)
	if !ok {
		return
	}
	page, info, err := s.store.List(c.Request.Context(), t, ro, coll, q)
	s.served(c, ro, info)
	if err != nil {
		s.failWith(c, err)
		return
	}
	out := listBody{Items: wire(page.Items)}
	if page.More && len(out.Items) > 0 {
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
func (s *Server) batchGet(c *gin.Context, t records.Target, coll string, lq listQuery) {
	ro, ok := s.readOptions(c)
	if !ok {
		return
	}
	recs, info, err := s.store.GetMany(c.Request.Context(), t, ro, coll, lq.IDs, lq.Fields)
	s.served(c, ro, info)
	if err != nil {
		s.failWith(c, err)
		return
	}
	c.JSON(http.StatusOK, listBody{Items: wire(recs)})
}
