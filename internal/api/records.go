package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
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
	hdrTenantEpoch      = "X-Tenant-Epoch"
	hdrConsistency      = "Consistency-Token"
	hdrReadSource       = "X-Read-Source"
	hdrIdempotencyKey   = "Idempotency-Key"
	hdrIdempotentReplay = "Idempotent-Replayed"
	mediaMergePatch     = "application/merge-patch+json"
)

// httpError is an outcome of parsing that maps to a specific problem: its kind and a detail in
// our own words (never a library's message).
type httpError struct {
	kind   problem.Kind
	detail string
}

func (e *httpError) Error() string { return e.detail }

// invalid returns an httpError of kind with a formatted detail.
func invalid(kind problem.Kind, format string, a ...any) *httpError {
	return &httpError{kind: kind, detail: fmt.Sprintf(format, a...)}
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
// httpError (whose detail is ours); every other detail is fixed per kind, and what the error
// itself says is only logged (DESIGN.md §4: a detail never carries internal error text).
func (s *Server) failWith(c *gin.Context, err error) {
	var he *httpError
	var ve *records.ValueError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		he.kind.Write(c, he.detail)
	case errors.As(err, &mbe):
		problem.ContentTooLarge.Write(c, fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
	case errors.Is(err, records.ErrDataTooLarge):
		problem.ContentTooLarge.Write(c, fmt.Sprintf("the record's data would exceed %d bytes after the patch", s.cfg.MaxBody))
	case errors.Is(err, records.ErrRecordNotFound):
		problem.RecordNotFound.Write(c, "no such record")
	case errors.Is(err, records.ErrPrecondition):
		problem.PreconditionFailed.Write(c, "If-Match or If-None-Match does not hold for the current record")
	case errors.Is(err, records.ErrKeyReused):
		problem.IdempotencyKeyReused.Write(c, "Idempotency-Key was already used with a different request")
	case errors.Is(err, records.ErrBadToken):
		errMalformedToken.kind.Write(c, errMalformedToken.detail)
	case errors.Is(err, records.ErrTenantNotFound):
		problem.TenantNotFound.Write(c, "tenant not found")
	case errors.Is(err, records.ErrTenantFenced):
		c.Header("Retry-After", "1")
		problem.TenantFenced.Write(c, "tenant is being moved; writes are paused")
	case errors.Is(err, records.ErrUnknownShard):
		retryAfter(c, 1, "shard not in map")
	case errors.Is(err, records.ErrNotHome):
		c.Header(hdrShardmapVersion, strconv.FormatUint(s.maps.Version(), 10))
		problem.MisdirectedRequest.Write(c, "shard is homed in another region")
	case errors.Is(err, records.ErrStaleEpoch):
		// The tenant moved since the write was routed (its row here has a newer write epoch):
		// the router refreshes its map and sends the write to the tenant's new home.
		c.Header(hdrShardmapVersion, strconv.FormatUint(s.maps.Version(), 10))
		problem.MisdirectedRequest.Write(c, "the tenant's write epoch is newer than the one the request was routed on")
	case errors.As(err, &ve):
		// The database's message may quote SQL or internal names: log it, answer a fixed detail
		// naming which input of the request it was.
		s.log.Info("value rejected by the database", "request_id", c.GetString(problem.ContextKey), "err", err)
		detail := "a value in \"data\" cannot be stored"
		if c.Request.Method == http.MethodGet || c.Request.Method == http.MethodHead {
			detail = "a where[] filter value is not accepted"
		}
		problem.ValueRejected.Write(c, detail)
	case errors.Is(err, records.ErrTimeout):
		problem.GatewayTimeout.Write(c, "database did not answer in time")
	case errors.Is(err, records.ErrConflict):
		retryAfter(c, 1, "conflicting concurrent write; retry")
	case errors.Is(err, context.Canceled):
		problem.ClientClosedRequest.Write(c, "request cancelled")
	case errors.Is(err, records.ErrDatabase):
		s.log.Error("database error", "request_id", c.GetString(problem.ContextKey), "err", err)
		problem.InternalError.Write(c, "internal error")
	default:
		// Connection-level failures: the shard is unreachable.
		s.log.Warn("shard unavailable", "request_id", c.GetString(problem.ContextKey), "err", err)
		retryAfter(c, 1, "shard unavailable")
	}
}

// resolve finds the tenant's shard. Writes must be for a shard homed in this region; a router
// whose map is older than ours and sent a write here gets 421 with our map version. A router
// whose map is newer makes us wait (bounded) for that version first.
//
// A write is also refused with 421 when it was routed on an older write epoch of the tenant
// (X-Tenant-Epoch, sent by the router) than our map has: a move's cutover happened since. The
// write carries the header's epoch to the store, which refuses it (ErrStaleEpoch, 421 too) if
// the tenant's row on the shard has a newer one. Without the header (a client that reached
// the node directly) the write carries our map's epoch: the node is then the one routing it.
// During a move (dual_write, backfill, verify) a write also carries the move's target shard,
// which the store mirrors it to.
func (s *Server) resolve(c *gin.Context, write bool) (records.Target, bool) {
	cl, _ := auth.FromContext(c)
	t := records.Target{Tenant: cl.Tenant}
	c.Set("tenant", t.Tenant)
	var epoch uint64 // 0 = no X-Tenant-Epoch (epochs start at 1, so "0" says the same)
	if he := c.GetHeader(hdrTenantEpoch); he != "" {
		v, err := strconv.ParseUint(he, 10, 64)
		if err != nil {
			problem.InvalidHeader.Write(c, "X-Tenant-Epoch must be an unsigned integer")
			return t, false
		}
		epoch = v
	}
	if hv := c.GetHeader(hdrShardmapVersion); hv != "" {
		v, err := strconv.ParseUint(hv, 10, 64)
		if err != nil {
			problem.InvalidHeader.Write(c, "X-Shardmap-Version must be an unsigned integer")
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
		problem.MisdirectedRequest.Write(c, fmt.Sprintf("tenant's home region is %s, not %s", rt.HomeRegion, s.cfg.Region))
		return t, false
	}
	if write {
		if epoch > 0 && rt.Epoch > epoch {
			c.Header(hdrShardmapVersion, strconv.FormatUint(rt.MapVersion, 10))
			problem.MisdirectedRequest.Write(c, fmt.Sprintf("tenant's write epoch is %d, the request was routed on %d", rt.Epoch, epoch))
			return t, false
		}
		if epoch > 0 {
			// Not older than ours (checked above); newer only when the router's map has
			// seen a cutover ours has not yet.
			t.Epoch = epoch
		}
		t.MirrorTo = rt.MirrorTo
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
	if res.Mirror != "" {
		s.metrics.mirrors.WithLabelValues(string(res.Mirror)).Inc()
	}
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
		problem.InvalidPath.Write(c, fmt.Sprintf("collection %q must match %s", coll, ids.CollectionPattern))
		return "", "", false
	}
	if !withID {
		return coll, "", true
	}
	id := c.Param("id")
	if !ids.ValidRecord(id) {
		problem.InvalidPath.Write(c, fmt.Sprintf("id %q must match %s", id, ids.RecordIDPattern))
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
		problem.RequestTimeout.Write(c, "request body not received in time")
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
		problem.InvalidHeader.Write(c, "Idempotency-Key must be 1-255 printable ASCII characters")
		return "", false
	}
	return k, true
}

// entityTag is one entity tag of an If-Match or If-None-Match list: the version it names (-1
// for a tag the store never issues, which matches nothing) and whether it is weak (W/).
type entityTag struct {
	version int64
	weak    bool
}

// parseETags parses an If-Match / If-None-Match value: "*" or a list of strong or weak tags.
// It returns (any, tags, ok); ok is false when the value is neither. Only the canonical decimal
// form of a version names it (`"01"` is another tag than `"1"`, RFC 9110 compares opaque tags
// octet by octet).
func parseETags(h string) (bool, []entityTag, bool) {
	h = strings.TrimSpace(h)
	if h == "*" {
		return true, nil, true
	}
	var out []entityTag
	for _, part := range strings.Split(h, ",") {
		p := strings.TrimSpace(part)
		weak := strings.HasPrefix(p, "W/")
		p = strings.TrimPrefix(p, "W/")
		if len(p) < 2 || p[0] != '"' || p[len(p)-1] != '"' || strings.ContainsRune(p[1:len(p)-1], '"') {
			return false, nil, false
		}
		v, err := strconv.ParseInt(p[1:len(p)-1], 10, 64)
		if err != nil || v < 1 || strconv.FormatInt(v, 10) != p[1:len(p)-1] {
			// A well-formed tag we never issue simply does not match.
			v = -1
		}
		out = append(out, entityTag{version: v, weak: weak})
	}
	return false, out, true
}

// ifMatchHeader returns the request's If-Match header as a records.Match (nil when absent),
// answering 400 (and false) when it is neither * nor a list of quoted entity tags — before any
// transaction starts. If-Match uses the strong comparison (RFC 9110 §13.1.1): a weak tag never
// matches, so it becomes a version that matches nothing.
func ifMatchHeader(c *gin.Context) (*records.Match, bool) {
	im := c.GetHeader("If-Match")
	if im == "" {
		return nil, true
	}
	anyTag, tags, ok := parseETags(im)
	if !ok {
		problem.InvalidHeader.Write(c, "If-Match must be * or a list of quoted entity tags")
		return nil, false
	}
	m := &records.Match{Any: anyTag}
	for _, tg := range tags {
		v := tg.version
		if tg.weak {
			v = -1
		}
		m.Versions = append(m.Versions, v)
	}
	return m, true
}

// ifNoneMatchHeader returns the request's If-None-Match header as a records.Match (nil when
// absent), answering 400 (and false) when it is malformed. If-None-Match uses the weak
// comparison (RFC 9110 §13.1.2): W/"3" names version 3 as "3" does. On a write, a live record
// that matches fails the write with 412; "*" matches any live record, so PUT with
// If-None-Match: * only creates.
func ifNoneMatchHeader(c *gin.Context) (*records.Match, bool) {
	inm := c.GetHeader("If-None-Match")
	if inm == "" {
		return nil, true
	}
	anyTag, tags, ok := parseETags(inm)
	if !ok {
		problem.InvalidHeader.Write(c, "If-None-Match must be * or a list of quoted entity tags")
		return nil, false
	}
	m := &records.Match{Any: anyTag}
	for _, tg := range tags {
		m.Versions = append(m.Versions, tg.version)
	}
	return m, true
}

// preconditions reads If-Match and If-None-Match of a write.
func preconditions(c *gin.Context) (im, inm *records.Match, ok bool) {
	if im, ok = ifMatchHeader(c); !ok {
		return nil, nil, false
	}
	if inm, ok = ifNoneMatchHeader(c); !ok {
		return nil, nil, false
	}
	return im, inm, true
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
	data, err := decodeRecordBody(body)
	if err != nil {
		s.failWith(c, err)
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
	inm, ok := ifNoneMatchHeader(c)
	if !ok {
		return
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
	if inm != nil && (inm.Any || slices.Contains(inm.Versions, r.Version)) {
		c.Status(http.StatusNotModified)
		c.Writer.WriteHeaderNow()
		return
	}
	body, ok := appendRecordJSON(make([]byte, 0, 192+len(r.Data)), r)
	if !ok {
		c.JSON(http.StatusOK, record(r))
		return
	}
	c.Data(http.StatusOK, jsonContentType, body)
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
	data, err := decodeRecordBody(body)
	if err != nil {
		s.failWith(c, err)
		return
	}
	im, inm, ok := preconditions(c)
	if !ok {
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	s.write(c, t, records.WriteOp{Op: records.Put, Collection: coll, ID: id, Data: data, IfMatch: im, IfNoneMatch: inm,
		Render: render(http.StatusOK)})
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
	patch, err := decodePatch(body)
	if err != nil {
		s.failWith(c, err)
		return
	}
	im, inm, ok := preconditions(c)
	if !ok {
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	// MaxData keeps a record's data within the body limit after the merge too (413).
	s.write(c, t, records.WriteOp{Op: records.Patch, Collection: coll, ID: id, Data: patch, IfMatch: im, IfNoneMatch: inm,
		MaxData: s.cfg.MaxBody, Key: key, RequestHash: requestHash(c.Request.Method, c.Request.URL.Path, body),
		Render: render(http.StatusOK)})
}

func (s *Server) deleteRecord(c *gin.Context) {
	coll, id, ok := pathParams(c, true)
	if !ok {
		return
	}
	im, inm, ok := preconditions(c)
	if !ok {
		return
	}
	t, ok := s.resolve(c, true)
	if !ok {
		return
	}
	s.write(c, t, records.WriteOp{Op: records.Delete, Collection: coll, ID: id, IfMatch: im, IfNoneMatch: inm,
		Render: render(http.StatusNoContent)})
}
