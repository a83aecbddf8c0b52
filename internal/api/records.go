package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// Header names.
const (
	hdrShardmapVersion  = "X-Shardmap-Version"
	hdrConsistency      = "Consistency-Token"
	hdrReadSource       = "X-Read-Source"
	hdrIdempotencyKey   = "Idempotency-Key"
	hdrIdempotentReplay = "Idempotent-Replayed"
	mediaMergePatch     = "application/merge-patch+json"
)

// httpError is an outcome of parsing that maps to a specific problem.
type httpError struct {
	status int
	title  string
	detail string
}

func (e *httpError) Error() string { return e.detail }

func badRequest(format string, a ...any) error {
	return &httpError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, a...)}
}

// record is the wire form of a record.
type record struct {
	ID         string          `json:"id"`
	Collection string          `json:"collection"`
	Version    int64           `json:"version"`
	CreatedAt  time.Time       `json:"created_at"`
	UpdatedAt  time.Time       `json:"updated_at"`
	Data       json.RawMessage `json:"data"`
}

func etag(v int64) string { return `"` + strconv.FormatInt(v, 10) + `"` }

// failWith writes the problem for err. Nothing in err reaches the client unless it is an
// httpError or a known class; everything else is logged and answered 500 or 503.
func (s *Server) failWith(c *gin.Context, err error) {
	var he *httpError
	var ve *records.ValueError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		problem.Write(c, he.status, he.title, he.detail)
	case errors.As(err, &mbe):
		problem.Write(c, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
	case errors.Is(err, records.ErrRecordNotFound):
		problem.Write(c, http.StatusNotFound, "record not found", "no such record")
	case errors.Is(err, records.ErrPrecondition):
		problem.Write(c, http.StatusPreconditionFailed, "", "If-Match does not match the current version")
	case errors.Is(err, records.ErrKeyReused):
		problem.Write(c, http.StatusUnprocessableEntity, "", "Idempotency-Key was already used with a different request")
	case errors.Is(err, records.ErrBadToken):
		problem.Write(c, errMalformedToken.status, "", errMalformedToken.detail)
	case errors.Is(err, records.ErrTenantNotFound):
		problem.Write(c, http.StatusNotFound, "tenant not found", "tenant not found")
	case errors.Is(err, records.ErrTenantFenced):
		retryAfter(c, 1, "tenant is being moved; writes are paused")
	case errors.Is(err, records.ErrUnknownShard):
		retryAfter(c, 1, "shard not in map")
	case errors.Is(err, records.ErrNotHome):
		c.Header(hdrShardmapVersion, strconv.FormatUint(s.maps.Version(), 10))
		problem.Write(c, http.StatusMisdirectedRequest, "", "shard is homed in another region")
	case errors.As(err, &ve):
		problem.Write(c, http.StatusBadRequest, "", "value rejected by the database: "+ve.Message)
	case errors.Is(err, records.ErrTimeout):
		problem.Write(c, http.StatusGatewayTimeout, "", "database did not answer in time")
	case errors.Is(err, records.ErrConflict):
		retryAfter(c, 1, "conflicting concurrent write; retry")
	case errors.Is(err, context.Canceled):
		problem.Write(c, 499, "client closed request", "request cancelled")
	case errors.Is(err, records.ErrDatabase):
		s.log.Error("database error", "request_id", c.GetString(problem.ContextKey), "err", err)
		problem.Write(c, http.StatusInternalServerError, "", "internal error")
	default:
		// Connection-level failures: the shard is unreachable.
		s.log.Warn("shard unavailable", "request_id", c.GetString(problem.ContextKey), "err", err)
		retryAfter(c, 1, "shard unavailable")
	}
}

// resolve finds the tenant's shard. Writes must be for a shard homed in this region; a router
// whose map is older than ours and sent a write here gets 421 with our map version. A router
// whose map is newer makes us wait (bounded) for that version first.
func (s *Server) resolve(c *gin.Context, write bool) (records.Target, bool) {
	cl, _ := auth.FromContext(c)
	t := records.Target{Tenant: cl.Tenant}
	c.Set("tenant", t.Tenant)
	if hv := c.GetHeader(hdrShardmapVersion); hv != "" {
		v, err := strconv.ParseUint(hv, 10, 64)
		if err != nil {
			problem.Write(c, http.StatusBadRequest, "", "X-Shardmap-Version must be an unsigned integer")
			return t, false
		}
		if v > s.maps.Version() {
			ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.MapWait)
			err := s.maps.WaitVersion(ctx, v)
			cancel()
			if err != nil {
				retryAfter(c, 1, fmt.Sprintf("shard map version %d not yet known here", v))
				return t, false
			}
		}
	}
	rt, err := s.maps.Lookup(t.Tenant)
	if err != nil {
		retryAfter(c, 1, "shard map not ready")
		return t, false
	}
	t.Shard, t.Epoch = rt.Shard, rt.Epoch
	c.Set("shard", rt.Shard)
	if write && rt.HomeRegion != s.cfg.Region {
		c.Header(hdrShardmapVersion, strconv.FormatUint(rt.MapVersion, 10))
		problem.Write(c, http.StatusMisdirectedRequest, "", fmt.Sprintf("tenant's home region is %s, not %s", rt.HomeRegion, s.cfg.Region))
		return t, false
	}
	if _, ok := s.maps.ShardHome(rt.Shard); !ok {
		retryAfter(c, 1, "shard "+rt.Shard+" not in map")
		return t, false
	}
	return t, true
}

// readOptions parses the read's preference headers, answering 400 itself.
func (s *Server) readOptions(c *gin.Context) (records.ReadOptions, bool) {
	ro, err := parseReadPref(c.Request.Header)
	if err != nil {
		s.failWith(c, err)
		return ro, false
	}
	return ro, true
}

// served sets the headers and metrics of a read the store ran (info.Source is empty when it
// failed before reading): X-Read-Source names the source that answered.
func (s *Server) served(c *gin.Context, ro records.ReadOptions, info records.ReadInfo) {
	if info.Source == "" {
		return
	}
	if ro.Strong {
		c.Header("Preference-Applied", "consistency=strong")
	}
	if info.FellBack {
		s.metrics.readFallbacks.Inc()
	}
	c.Header(hdrReadSource, string(info.Source))
	s.metrics.reads.WithLabelValues(string(info.Source)).Inc()
}

// write runs op through the store and sends its response: the Consistency-Token, the replay
// marker, then the (possibly stored) status, headers and body.
func (s *Server) write(c *gin.Context, t records.Target, op records.WriteOp) {
	res, err := s.store.Write(c.Request.Context(), t, op)
	if err != nil {
		s.failWith(c, err)
		return
	}
	if res.Token != "" {
		c.Header(hdrConsistency, res.Token)
	}
	if res.Replayed {
		s.metrics.idemHits.Inc()
		c.Header(hdrIdempotentReplay, "true")
	}
	for k, v := range res.Response.Headers {
		c.Header(k, v)
	}
	if len(res.Response.Body) == 0 {
		c.Status(res.Response.Status)
		c.Writer.WriteHeaderNow()
		return
	}
	c.Data(res.Response.Status, c.Writer.Header().Get("Content-Type"), res.Response.Body)
}

// requestHash identifies a request for Idempotency-Key reuse checks.
func requestHash(method, path string, body []byte) []byte {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", method, path)
	h.Write(body)
	return h.Sum(nil)
}

// validIdemKey bounds Idempotency-Key to printable ASCII.
func validIdemKey(k string) bool {
	if len(k) < 1 || len(k) > 255 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// pathParams validates the collection (and id when present).
func pathParams(c *gin.Context, withID bool) (string, string, bool) {
	coll := c.Param("collection")
	if !ids.ValidCollection(coll) {
		problem.Write(c, http.StatusBadRequest, "", fmt.Sprintf("collection %q must match %s", coll, ids.CollectionPattern))
		return "", "", false
	}
	if !withID {
		return coll, "", true
	}
	id := c.Param("id")
	if !ids.ValidRecord(id) {
		problem.Write(c, http.StatusBadRequest, "", fmt.Sprintf("id %q must match %s", id, ids.RecordIDPattern))
		return "", "", false
	}
	return coll, id, true
}

// readBody checks the content type and reads the (capped) body.
func (s *Server) readBody(c *gin.Context, extraTypes ...string) ([]byte, bool) {
	if !isJSONContentType(c.ContentType(), extraTypes...) && !isJSONContentType(c.GetHeader("Content-Type"), extraTypes...) {
		want := "application/json"
		if len(extraTypes) > 0 {
			want += " or " + strings.Join(extraTypes, ", ")
		}
		problem.Write(c, http.StatusUnsupportedMediaType, "", "Content-Type must be "+want)
		return nil, false
	}
	body, err := io.ReadAll(c.Request.Body)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		s.failWith(c, err)
		return nil, false
	case errors.Is(err, os.ErrDeadlineExceeded) || err == nil && errors.Is(c.Request.Context().Err(), context.DeadlineExceeded):
		// The body did not arrive within the server's body timeout (daemon.HTTPLimits), or
		// within the request's deadline: the client's delay, never a 504 of the database.
		c.Header("Connection", "close")
		problem.Write(c, http.StatusRequestTimeout, "", "request body not received in time")
		return nil, false
	case err != nil:
		c.Header("Connection", "close")
		problem.Write(c, http.StatusBadRequest, "", "could not read body")
		return nil, false
	}
	return body, true
}

// idemKey reads and validates Idempotency-Key.
func idemKey(c *gin.Context) (string, bool) {
	k := c.GetHeader(hdrIdempotencyKey)
	if k == "" {
		return "", true
	}
	if !validIdemKey(k) {
		problem.Write(c, http.StatusBadRequest, "", "Idempotency-Key must be 1-255 printable ASCII characters")
		return "", false
	}
	return k, true
}

// parseETags parses an If-Match / If-None-Match value: "*" or a list of strong or weak tags.
// It returns (any, versions, ok).
func parseETags(h string) (bool, []int64, bool) {
	h = strings.TrimSpace(h)
	if h == "*" {
		return true, nil, true
	}
	var out []int64
	for _, part := range strings.Split(h, ",") {
		p := strings.TrimPrefix(strings.TrimSpace(part), "W/")
		if len(p) < 3 || p[0] != '"' || p[len(p)-1] != '"' {
			return false, nil, false
		}
		v, err := strconv.ParseInt(p[1:len(p)-1], 10, 64)
		if err != nil {
			// A well-formed tag we never issue simply does not match.
			v = -1
		}
		out = append(out, v)
	}
	return false, out, true
}

// ifMatchHeader returns the request's If-Match header as a records.Match (nil when absent),
// answering 400 (and false) when it is neither * nor a list of quoted entity tags — before any
// transaction starts.
func ifMatchHeader(c *gin.Context) (*records.Match, bool) {
	im := c.GetHeader("If-Match")
	if im == "" {
		return nil, true
	}
	anyTag, tags, ok := parseETags(im)
	if !ok {
		problem.Write(c, http.StatusBadRequest, "", "If-Match must be * or a list of quoted entity tags")
		return nil, false
	}
	return &records.Match{Any: anyTag, Versions: tags}, true
}

// render makes the response of a record write: status, Content-Type, ETag, Location for a
// record that was created, the record as the body; 204 without a body for a delete.
func render(status int) func(records.Change) (records.Response, error) {
	return func(ch records.Change) (records.Response, error) {
		if ch.Kind == records.Deleted {
			return records.Response{Status: http.StatusNoContent}, nil
		}
		r := record(ch.Record)
		body, err := json.Marshal(r)
		if err != nil {
			return records.Response{}, err
		}
		h := map[string]string{"Content-Type": "application/json; charset=utf-8", "ETag": etag(r.Version)}
		st := status
		if ch.Kind == records.Created {
			st = http.StatusCreated
			h["Location"] = "/v1/collections/" + r.Collection + "/records/" + r.ID
		}
		return records.Response{Status: st, Headers: h, Body: body}, nil
	}
}

func (s *Server) createRecord(c *gin.Context) {
	coll, _, ok := pathParams(c, false)
	if !ok {
		return
	}
	key, ok := idemKey(c)
	if !ok {
		return
	}
	body, ok := s.readBody(c)
	if !ok {
		return
	}
	data, err := decodeRecordBody(bytes.NewReader(body))
	if err != nil {
		problem.Write(c, http.StatusBadRequest, "", err.Error())
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	s.write(c, t, records.WriteOp{Op: records.Create, Collection: coll, Data: data,
		Key: key, RequestHash: requestHash(c.Request.Method, c.Request.URL.Path, body), Render: render(http.StatusCreated)})
}

func (s *Server) getRecord(c *gin.Context) {
	coll, id, ok := pathParams(c, true)
	if !ok {
		return
	}
	inm := c.GetHeader("If-None-Match")
	if inm != "" {
		if _, _, ok := parseETags(inm); !ok {
			problem.Write(c, http.StatusBadRequest, "", "If-None-Match must be * or a list of quoted entity tags")
			return
		}
	}
	t, ok := s.resolve(c, false)
	if !ok {
		return
	}
	ro, ok := s.readOptions(c)
	if !ok {
		return
	}
	r, info, err := s.store.Get(c.Request.Context(), t, ro, coll, id)
	s.served(c, ro, info)
	if err != nil {
		s.failWith(c, err)
		return
	}
	c.Header("ETag", etag(r.Version))
	if inm != "" {
		anyTag, tags, _ := parseETags(inm)
		match := anyTag
		for _, v := range tags {
			match = match || v == r.Version
		}
		if match {
			c.Status(http.StatusNotModified)
			c.Writer.WriteHeaderNow()
			return
		}
	}
	c.JSON(http.StatusOK, record(r))
}

func (s *Server) putRecord(c *gin.Context) {
	coll, id, ok := pathParams(c, true)
	if !ok {
		return
	}
	body, ok := s.readBody(c)
	if !ok {
		return
	}
	data, err := decodeRecordBody(bytes.NewReader(body))
	if err != nil {
		problem.Write(c, http.StatusBadRequest, "", err.Error())
		return
	}
	im, ok := ifMatchHeader(c)
	if !ok {
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	s.write(c, t, records.WriteOp{Op: records.Put, Collection: coll, ID: id, Data: data, IfMatch: im, Render: render(http.StatusOK)})
}

func (s *Server) patchRecord(c *gin.Context) {
	coll, id, ok := pathParams(c, true)
	if !ok {
		return
	}
	key, ok := idemKey(c)
	if !ok {
		return
	}
	body, ok := s.readBody(c, mediaMergePatch)
	if !ok {
		return
	}
	patch, err := decodePatch(bytes.NewReader(body))
	if err != nil {
		problem.Write(c, http.StatusBadRequest, "", err.Error())
		return
	}
	im, ok := ifMatchHeader(c)
	if !ok {
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	s.write(c, t, records.WriteOp{Op: records.Patch, Collection: coll, ID: id, Data: patch, IfMatch: im,
		Key: key, RequestHash: requestHash(c.Request.Method, c.Request.URL.Path, body), Render: render(http.StatusOK)})
}

func (s *Server) deleteRecord(c *gin.Context) {
	coll, id, ok := pathParams(c, true)
	if !ok {
		return
	}
	im, ok := ifMatchHeader(c)
	if !ok {
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	s.write(c, t, records.WriteOp{Op: records.Delete, Collection: coll, ID: id, IfMatch: im, Render: render(http.StatusNoContent)})
}
