package router

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// EdgeCache is the region's record cache as the router reads it (internal/cache.Edge): the
// router answers a plain record GET with an entry it finds there, and forwards every other read
// (docs/router.md, "The edge cache").
type EdgeCache interface {
	// Record returns the cached record coll/id of tenant for a read routed to shard on write
	// epoch epoch, and whether the router may answer with it (result "hit"); it counts every
	// other result itself.
	Record(ctx context.Context, tenant, shard string, epoch uint64, coll, id string) (records.Record, string)
	// Count counts a record GET by result: "hit" once answered from the cache, "bypass" when
	// forwarded without a lookup, "error" when a hit could not be answered with.
	Count(result string)
}

// EdgeNoWait is an EdgeCache that can answer from what it holds in memory without waiting
// (internal/cache.Edge's RecordNoWait): ok false, nothing counted, when it would have to ask
// Redis. The event-loop front (loop.go) asks it on its loops.
type EdgeNoWait interface {
	RecordNoWait(tenant, shard string, epoch uint64, coll, id string) (rec records.Record, result string, ok bool)
}

// edgeCold is RecordNoWait's result for an entry the router's copy does not hold (the tenant's
// state it does): the read is forwarded at once, and Warm fetches the entry into the copy once a
// node has answered it with a 200 (internal/cache.Edge's RecordNoWait says why).
const edgeCold = "cold"

// EdgeWarmer is an edge that fetches an entry into the router's copy without blocking
// (internal/cache.Edge's Warm); the event-loop front calls it after a cold read's 200.
type EdgeWarmer interface {
	Warm(tenant, coll, id string)
}

// Answer headers of an edge hit, as the API node writes them for a cached record GET.
const (
	headerReadSource = "X-Read-Source"
	edgeContentType  = "application/json; charset=utf-8"
)

var (
	edgeCT     = []string{edgeContentType}
	edgeSource = []string{"cache"}
	edgeVary   = []string{"Accept-Encoding"}
)

// recordPath returns the collection and id of GET /v1/collections/{collection}/records/{id},
// when both are valid ids and the path is spelled without escapes.
func recordPath(r *http.Request) (coll, id string, ok bool) {
	const prefix = "/v1/collections/"
	p := r.URL.Path
	if r.URL.RawPath != "" || !strings.HasPrefix(p, prefix) {
		return "", "", false
	}
	coll, rest, ok := strings.Cut(p[len(prefix):], "/records/")
	if !ok || !ids.ValidCollection(coll) || !ids.ValidRecord(rest) {
		return "", "", false
	}
	return coll, rest, true
}

// plainRead reports whether r asks only what a cached entry can answer as the API node would:
// no query, no body, no read preference (Prefer, Cache-Control, Consistency-Token) and no
// conditional or range header. The node answers every other read itself.
func plainRead(r *http.Request) bool {
	if r.URL.RawQuery != "" || r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return false
	}
	h := r.Header
	for _, k := range [...]string{"Prefer", "Cache-Control", "Pragma", "Consistency-Token",
		"If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Range"} {
		if _, ok := h[k]; ok {
			return false
		}
	}
	return true
}

// serveEdge answers a plain record GET from the region's cache, when it has a servable entry
// and the read would be served in this region (Decide); false: the caller forwards it.
func (s *Server) serveEdge(c *gin.Context, tenant string, route Route) bool {
	coll, id, ok := s.edgeCandidate(c, route)
	return ok && s.edgeAnswer(c, tenant, route, coll, id)
}

// edgeCandidate reports whether the request is one the edge looks up (the record's collection
// and id); a record GET it forwards without a lookup is counted "bypass" here. It never blocks.
func (s *Server) edgeCandidate(c *gin.Context, route Route) (coll, id string, ok bool) {
	r := c.Request
	if s.cfg.Edge == nil || r.Method != http.MethodGet {
		return "", "", false
	}
	coll, id, ok = recordPath(r)
	if !ok {
		return "", "", false
	}
	// A move's reads go to the nodes, whose cache notices the cutover (a newer write epoch)
	// and drops the tenant's entries; a read the router would send to another region is that
	// region's to answer.
	local := route.HomeRegion == s.cfg.Region || s.cfg.Upstreams.Healthy(s.cfg.Region)
	if route.Moving || !local || !plainRead(r) {
		s.cfg.Edge.Count("bypass")
		return "", "", false
	}
	return coll, id, true
}

// edgeAnswer looks the candidate up and answers a hit; false: the caller forwards the request.
// It may wait on Redis (a lookup the router's copy cannot answer).
func (s *Server) edgeAnswer(c *gin.Context, tenant string, route Route, coll, id string) bool {
	rec, res := s.cfg.Edge.Record(c.Request.Context(), tenant, route.Shard, route.Epoch, coll, id)
	return res == "hit" && s.edgeRespond(c, route, rec)
}

// edgeRespond answers a hit with rec; false (counted "error"): the caller forwards the request.
func (s *Server) edgeRespond(c *gin.Context, route Route, rec records.Record) bool {
	body, ok := records.AppendJSON(make([]byte, 0, 192+len(rec.Data)), rec)
	if !ok {
		s.cfg.Edge.Count("error")
		return false // the node spells it with encoding/json
	}
	h := c.Writer.Header()
	h["Content-Type"] = edgeCT
	h["Etag"] = []string{`"` + strconv.FormatInt(rec.Version, 10) + `"`}
	h[headerReadSource] = edgeSource
	h["Vary"] = edgeVary
	setCanon(h, HeaderServedRegion, s.cfg.Region)
	setCanon(h, HeaderRequestID, stateOf(c).requestID)
	setCanon(h, HeaderShardmapVersion, strconv.FormatUint(route.Version, 10))
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	c.Status(http.StatusOK)
	_, _ = c.Writer.Write(body)
	s.cfg.Edge.Count("hit")
	return true
}
