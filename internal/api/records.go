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
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/replication"
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

// httpError is a store outcome that maps to a specific problem.
type httpError struct {
	status int
	title  string
	detail string
}

func (e *httpError) Error() string { return e.detail }

func badRequest(format string, a ...any) error {
	return &httpError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, a...)}
}

var errRecordNotFound = &httpError{status: http.StatusNotFound, title: "record not found", detail: "no such record"}
var errPrecondition = &httpError{status: http.StatusPreconditionFailed, detail: "If-Match does not match the current version"}

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

// response is a write's answer, stored verbatim for Idempotency-Key replays.
type response struct {
	Status  int               `json:"-"`
	Headers map[string]string `json:"headers"`
	Body    []byte            `json:"-"`
}

// event is the change a write appends to the outbox.
type event struct {
	collection, id, op string
	version            int64
}

// failWith writes the problem for err. Nothing in err reaches the client unless it is an
// httpError or a known class; everything else is logged and answered 500.
func (s *Server) failWith(c *gin.Context, err error) {
	var he *httpError
	var pe *pgconn.PgError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		problem.Write(c, he.status, he.title, he.detail)
	case errors.As(err, &mbe):
		problem.Write(c, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("body exceeds %d bytes", mbe.Limit))
	case errors.Is(err, ErrTenantNotFound):
		problem.Write(c, http.StatusNotFound, "tenant not found", "tenant not found")
	case errors.Is(err, ErrTenantFenced):
		retryAfter(c, 1, "tenant is being moved; writes are paused")
	case errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "54")):
		problem.Write(c, http.StatusBadRequest, "", "value rejected by the database: "+pe.Message)
	case errors.As(err, &pe) && pe.Code == "57014", errors.Is(err, context.DeadlineExceeded):
		problem.Write(c, http.StatusGatewayTimeout, "", "database did not answer in time")
	case errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01" || pe.Code == "55P03"):
		retryAfter(c, 1, "conflicting concurrent write; retry")
	case errors.Is(err, context.Canceled):
		problem.Write(c, 499, "client closed request", "request cancelled")
	case errors.As(err, &pe):
		s.log.Error("database error", "request_id", c.GetString(problem.ContextKey), "code", pe.Code, "err", err)
		problem.Write(c, http.StatusInternalServerError, "", "internal error")
	default:
		// Connection-level failures: the shard is unreachable.
		s.log.Warn("shard unavailable", "request_id", c.GetString(problem.ContextKey), "err", err)
		retryAfter(c, 1, "shard unavailable")
	}
}

// target is a resolved request: tenant, route and the pool to use.
type target struct {
	tenant string
	route  Route
	shard  ShardInfo
	pool   *pgxpool.Pool // the shard primary
}

// resolve finds the tenant's shard. Writes must be for a shard homed in this region; a router
// whose map is older than ours and sent a write here gets 421 with our map version. A router
// whose map is newer makes us wait (bounded) for that version first.
func (s *Server) resolve(c *gin.Context, write bool) (target, bool) {
	cl, _ := auth.FromContext(c)
	t := target{tenant: cl.Tenant}
	c.Set("tenant", t.tenant)
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
	rt, err := s.maps.Lookup(t.tenant)
	if err != nil {
		retryAfter(c, 1, "shard map not ready")
		return t, false
	}
	t.route = rt
	c.Set("shard", rt.Shard)
	if write && rt.HomeRegion != s.cfg.Region {
		c.Header(hdrShardmapVersion, strconv.FormatUint(rt.MapVersion, 10))
		problem.Write(c, http.StatusMisdirectedRequest, "", fmt.Sprintf("tenant's home region is %s, not %s", rt.HomeRegion, s.cfg.Region))
		return t, false
	}
	sh, ok := s.maps.ShardInfo(rt.Shard)
	if !ok {
		retryAfter(c, 1, "shard "+rt.Shard+" not in map")
		return t, false
	}
	pool, err := s.pools.Primary(c.Request.Context(), sh)
	if err != nil {
		s.failWith(c, err)
		return t, false
	}
	t.pool, t.shard = pool, sh
	return t, true
}

// writeOp is one write: what it does inside the transaction, and its idempotency identity.
type writeOp struct {
	idemKey string
	reqHash []byte
	run     func(ctx context.Context, tx pgx.Tx) (*response, event, error)
}

// write executes op in one transaction: lock the tenant row (fence check + change seq), claim
// the Idempotency-Key, run the change, append the outbox event, store the response, commit.
// Then it reads the WAL insert position for the Consistency-Token and sends the response.
func (s *Server) write(c *gin.Context, t target, op writeOp) {
	ctx := c.Request.Context()
	conn, err := t.pool.Acquire(ctx)
	if err != nil {
		s.failWith(c, err)
		return
	}
	defer conn.Release()
	var resp *response
	replayed := false
	err = func() error {
		tx, err := conn.BeginTx(ctx, pgx.TxOptions{})
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, setTenantSQL, t.tenant); err != nil {
			return err
		}
		// The row lock taken here serialises the tenant's writes until commit, so change_seq
		// is gap-free in commit order, and the fence read is current (DESIGN.md §5.4).
		var seq int64
		var fenced bool
		err = tx.QueryRow(ctx, `UPDATE tenants SET change_seq = change_seq + 1 WHERE tenant_id = $1 RETURNING change_seq, write_fenced`, t.tenant).Scan(&seq, &fenced)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrTenantNotFound
		} else if err != nil {
			return err
		}
		if fenced {
			return ErrTenantFenced
		}
		if op.idemKey != "" {
			stored, err := s.claimKey(ctx, tx, t, op)
			if err != nil {
				return err
			}
			if stored != nil {
				resp, replayed = stored, true
				return nil // rollback: the replay changes nothing
			}
		}
		r, ev, err := op.run(ctx, tx)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO outbox (tenant_id, seq, collection, record_id, op, version, lsn)
			VALUES ($1, $2, $3, $4, $5, $6, pg_current_wal_insert_lsn())`, t.tenant, seq, ev.collection, ev.id, ev.op, ev.version); err != nil {
			return err
		}
		if op.idemKey != "" {
			hdrs, _ := json.Marshal(r.Headers)
			if _, err := tx.Exec(ctx, `UPDATE idempotency_keys SET status = $3, headers = $4, body = $5 WHERE tenant_id = $1 AND key = $2`,
				t.tenant, op.idemKey, r.Status, hdrs, r.Body); err != nil {
				return err
			}
		}
		resp = r
		return tx.Commit(ctx)
	}()
	if err != nil {
		s.failWith(c, err)
		return
	}
	// Read after COMMIT returned: at or past the commit record, on the same server. For a
	// replay it is past the original commit, which was visible to our transaction.
	if lsn, err := replication.CurrentLSN(ctx, conn); err == nil {
		c.Header(hdrConsistency, replication.Token{Shard: t.route.Shard, LSN: lsn}.Encode())
	}
	if replayed {
		s.metrics.idemHits.Inc()
		c.Header(hdrIdempotentReplay, "true")
	}
	for k, v := range resp.Headers {
		c.Header(k, v)
	}
	if len(resp.Body) == 0 {
		c.Status(resp.Status)
		c.Writer.WriteHeaderNow()
		return
	}
	c.Data(resp.Status, c.Writer.Header().Get("Content-Type"), resp.Body)
}

// claimKey inserts the Idempotency-Key row, or, when a committed row exists, returns its stored
// response (same request) or a 422 (different request). A concurrent first request holds the
// tenant row lock, so by the time we get here it has committed or rolled back.
func (s *Server) claimKey(ctx context.Context, tx pgx.Tx, t target, op writeOp) (*response, error) {
	tenant := t.tenant
	now := s.cfg.Now()
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, created_at, expires_at)
		VALUES ($1, $2, $3, 102, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING`, tenant, op.idemKey, op.reqHash, now, now.Add(s.cfg.IdemTTL))
	if err != nil {
		return nil, err
	}
	if tag.RowsAffected() == 1 {
		s.noteKeyTenant(t.route.Shard, tenant)
		return nil, nil
	}
	var hash, body []byte
	var status int
	var headers map[string]string
	var expires time.Time
	if err := tx.QueryRow(ctx, `SELECT request_hash, status, headers, body, expires_at FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 FOR UPDATE`,
		tenant, op.idemKey).Scan(&hash, &status, &headers, &body, &expires); err != nil {
		return nil, err
	}
	if !expires.After(now) {
		// Expired but not yet cleaned up: the key is free again.
		_, err := tx.Exec(ctx, `UPDATE idempotency_keys SET request_hash = $3, status = 102, headers = '{}', body = '', created_at = $4, expires_at = $5
			WHERE tenant_id = $1 AND key = $2`, tenant, op.idemKey, op.reqHash, now, now.Add(s.cfg.IdemTTL))
		return nil, err
	}
	if !bytes.Equal(hash, op.reqHash) {
		return nil, &httpError{status: http.StatusUnprocessableEntity, detail: "Idempotency-Key was already used with a different request"}
	}
	return &response{Status: status, Headers: headers, Body: body}, nil
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
	if !collectionPattern.MatchString(coll) {
		problem.Write(c, http.StatusBadRequest, "", fmt.Sprintf("collection %q must match %s", coll, collectionPattern))
		return "", "", false
	}
	if !withID {
		return coll, "", true
	}
	id := c.Param("id")
	if !idPattern.MatchString(id) {
		problem.Write(c, http.StatusBadRequest, "", fmt.Sprintf("id %q must match %s", id, idPattern))
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
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.failWith(c, err)
		} else {
			problem.Write(c, http.StatusBadRequest, "", "could not read body")
		}
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

// ifMatchHeader returns the request's If-Match header, answering 400 (and false) when it is
// neither * nor a list of quoted entity tags — before any transaction starts.
func ifMatchHeader(c *gin.Context) (string, bool) {
	im := c.GetHeader("If-Match")
	if _, _, ok := parseETags(im); im != "" && !ok {
		problem.Write(c, http.StatusBadRequest, "", "If-Match must be * or a list of quoted entity tags")
		return "", false
	}
	return im, true
}

// lockLiveRecord locks a live (not deleted) record for update and checks If-Match against it.
// A missing or deleted record is errRecordNotFound, or errPrecondition when If-Match was sent.
func lockLiveRecord(ctx context.Context, tx pgx.Tx, tenant, coll, id, im string) (version int64, data []byte, err error) {
	var deleted bool
	err = tx.QueryRow(ctx, `SELECT version, deleted, data FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 FOR UPDATE`,
		tenant, coll, id).Scan(&version, &deleted, &data)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && deleted):
		if im != "" {
			return 0, nil, errPrecondition
		}
		return 0, nil, errRecordNotFound
	case err != nil:
		return 0, nil, err
	}
	if err := ifMatch(im, true, version); err != nil {
		return 0, nil, err
	}
	return version, data, nil
}

// ifMatch checks an If-Match header against the current state. exists=false: no current record.
func ifMatch(h string, exists bool, version int64) error {
	if h == "" {
		return nil
	}
	anyTag, tags, ok := parseETags(h)
	if !ok {
		return badRequest("If-Match must be * or a list of quoted entity tags")
	}
	if !exists {
		return errPrecondition
	}
	if anyTag {
		return nil
	}
	for _, v := range tags {
		if v == version {
			return nil
		}
	}
	return errPrecondition
}

func recordResponse(status int, r record, withLocation bool) (*response, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	h := map[string]string{"Content-Type": "application/json; charset=utf-8", "ETag": etag(r.Version)}
	if withLocation {
		h["Location"] = "/v1/collections/" + r.Collection + "/records/" + r.ID
	}
	return &response{Status: status, Headers: h, Body: body}, nil
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
	s.write(c, t, writeOp{idemKey: key, reqHash: requestHash(c.Request.Method, c.Request.URL.Path, body),
		run: func(ctx context.Context, tx pgx.Tx) (*response, event, error) {
			u, err := uuid.NewV7()
			if err != nil {
				return nil, event{}, err
			}
			r := record{ID: u.String(), Collection: coll, Version: 1}
			if err := tx.QueryRow(ctx, `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ($1, $2, $3, 1, $4)
				RETURNING data, created_at, updated_at`, t.tenant, coll, r.ID, []byte(data)).Scan(&r.Data, &r.CreatedAt, &r.UpdatedAt); err != nil {
				return nil, event{}, err
			}
			resp, err := recordResponse(http.StatusCreated, r, true)
			return resp, event{coll, r.ID, "create", 1}, err
		}})
}

const recordCols = `id, version, data, created_at, updated_at`

// updateDataSQL replaces a live record's data (PUT over a record, PATCH) and returns it.
const updateDataSQL = `UPDATE records SET data = $4, version = version + 1, updated_at = now()
	WHERE tenant_id = $1 AND collection = $2 AND id = $3 RETURNING ` + recordCols

func scanRecord(row pgx.Row, coll string) (record, error) {
	r := record{Collection: coll}
	err := row.Scan(&r.ID, &r.Version, &r.Data, &r.CreatedAt, &r.UpdatedAt)
	return r, err
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
	var r record
	err := s.readTx(c, t, func(b *pgx.Batch) {
		b.Queue(`SELECT `+recordCols+` FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 AND NOT deleted`,
			t.tenant, coll, id).QueryRow(func(row pgx.Row) error {
			var err error
			r, err = scanRecord(row, coll)
			if errors.Is(err, pgx.ErrNoRows) {
				return errRecordNotFound
			}
			return err
		})
	})
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
	c.JSON(http.StatusOK, r)
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
	s.write(c, t, writeOp{run: func(ctx context.Context, tx pgx.Tx) (*response, event, error) {
		var version int64
		var deleted bool
		err := tx.QueryRow(ctx, `SELECT version, deleted FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3 FOR UPDATE`,
			t.tenant, coll, id).Scan(&version, &deleted)
		exists := err == nil && !deleted
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, event{}, err
		}
		if err := ifMatch(im, exists, version); err != nil {
			return nil, event{}, err
		}
		var r record
		status, op := http.StatusOK, "update"
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			status, op = http.StatusCreated, "create"
			r, err = scanRecord(tx.QueryRow(ctx, `INSERT INTO records (tenant_id, collection, id, version, data) VALUES ($1, $2, $3, 1, $4)
				RETURNING `+recordCols, t.tenant, coll, id, []byte(data)), coll)
		case deleted:
			// Re-creating over a tombstone continues the version sequence.
			status, op = http.StatusCreated, "create"
			r, err = scanRecord(tx.QueryRow(ctx, `UPDATE records SET data = $4, version = version + 1, deleted = false, created_at = now(), updated_at = now()
				WHERE tenant_id = $1 AND collection = $2 AND id = $3 RETURNING `+recordCols, t.tenant, coll, id, []byte(data)), coll)
		default:
			r, err = scanRecord(tx.QueryRow(ctx, updateDataSQL, t.tenant, coll, id, []byte(data)), coll)
		}
		if err != nil {
			return nil, event{}, err
		}
		resp, err := recordResponse(status, r, status == http.StatusCreated)
		return resp, event{coll, id, op, r.Version}, err
	}})
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
	patch, hasData, err := decodePatch(bytes.NewReader(body))
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
	s.write(c, t, writeOp{idemKey: key, reqHash: requestHash(c.Request.Method, c.Request.URL.Path, body),
		run: func(ctx context.Context, tx pgx.Tx) (*response, event, error) {
			_, cur, err := lockLiveRecord(ctx, tx, t.tenant, coll, id, im)
			if err != nil {
				return nil, event{}, err
			}
			merged := cur
			if hasData {
				obj, err := decodeObject(cur)
				if err != nil {
					return nil, event{}, err
				}
				if merged, err = json.Marshal(mergePatch(obj, patch)); err != nil {
					return nil, event{}, err
				}
			}
			r, err := scanRecord(tx.QueryRow(ctx, updateDataSQL, t.tenant, coll, id, merged), coll)
			if err != nil {
				return nil, event{}, err
			}
			resp, err := recordResponse(http.StatusOK, r, false)
			return resp, event{coll, id, "update", r.Version}, err
		}})
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
	s.write(c, t, writeOp{run: func(ctx context.Context, tx pgx.Tx) (*response, event, error) {
		version, _, err := lockLiveRecord(ctx, tx, t.tenant, coll, id, im)
		if err != nil {
			return nil, event{}, err
		}
		// Tombstone: the row stays with version+1 so versions never go back (see docs/api.md).
		if _, err := tx.Exec(ctx, `UPDATE records SET deleted = true, data = '{}', version = version + 1, updated_at = now()
			WHERE tenant_id = $1 AND collection = $2 AND id = $3`, t.tenant, coll, id); err != nil {
			return nil, event{}, err
		}
		return &response{Status: http.StatusNoContent}, event{coll, id, "delete", version + 1}, nil
	}})
}
