package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/meridian-dev/meridian/replication"
)

// Read-path defaults (DESIGN.md §6).
const (
	defaultRYWWait         = 100 * time.Millisecond
	defaultStandbyInterval = 250 * time.Millisecond
	defaultStandbyFailures = 3
	// rywPoll is how often a read waiting for its Consistency-Token polls the standby.
	rywPoll = 5 * time.Millisecond
)

// errStandbyBehind is returned inside a standby read transaction whose standby has not replayed
// the read's token; the read is then served by the primary.
var errStandbyBehind = errors.New("api: standby has not replayed the consistency token")

// readPref is what a read asks of its source: Prefer: consistency=strong and Consistency-Token.
type readPref struct {
	strong bool
	token  *replication.Token
}

// parseReadPref reads the Prefer and Consistency-Token request headers. Unknown preferences are
// ignored (RFC 7240); a Consistency-Token that does not decode is a 400.
func parseReadPref(h http.Header) (readPref, error) {
	var rp readPref
	for _, v := range h.Values("Prefer") {
		for _, pref := range strings.Split(v, ",") {
			kv, _, _ := strings.Cut(pref, ";")
			name, val, _ := strings.Cut(kv, "=")
			val = strings.Trim(strings.TrimSpace(val), `"`)
			if strings.EqualFold(strings.TrimSpace(name), "consistency") && strings.EqualFold(val, "strong") {
				rp.strong = true
			}
		}
	}
	if vs := h.Values(hdrConsistency); len(vs) > 0 {
		if len(vs) > 1 {
			return rp, badRequest("Consistency-Token must be given at most once")
		}
		tok, err := replication.DecodeToken(strings.TrimSpace(vs[0]))
		if err != nil {
			return rp, badRequest("malformed Consistency-Token: pass back the value a write returned")
		}
		rp.token = &tok
	}
	return rp, nil
}

// standbys tracks the health and replay position of the standby each shard is read from. A
// shard's status is refreshed on demand, at most once per interval; concurrent readers use the
// cached status meanwhile. A standby is unhealthy after `failures` consecutive failed checks or
// reads, or when its last good status is older than four intervals.
type standbys struct {
	interval time.Duration
	failures int
	now      func() time.Time
	mu       sync.Mutex
	// shards (shard -> state) is guarded by mu.
	shards map[string]*standbyState
}

type standbyState struct {
	mu sync.Mutex
	// All fields are guarded by mu.
	pool        *pgxpool.Pool // the standby this state is about; reset when it changes
	st          replication.StandbyStatus
	checked, ok time.Time // last check, last successful check
	failures    int
	refreshing  bool
}

func (sb *standbys) state(shard string, pool *pgxpool.Pool) *standbyState {
	sb.mu.Lock()
	s, ok := sb.shards[shard]
	if !ok {
		s = &standbyState{}
		sb.shards[shard] = s
	}
	sb.mu.Unlock()
	s.mu.Lock()
	if s.pool != pool {
		s.pool, s.st, s.checked, s.ok, s.failures = pool, replication.StandbyStatus{}, time.Time{}, time.Time{}, 0
	}
	s.mu.Unlock()
	return s
}

// status returns the standby's last known status and whether it may serve reads, refreshing it
// first when it is older than the interval and no other caller is refreshing it. While the
// standby is failing the refresh runs in the background, so reads don't wait on a dead copy.
func (sb *standbys) status(ctx context.Context, shard string, pool *pgxpool.Pool) (replication.StandbyStatus, bool) {
	s := sb.state(shard, pool)
	s.mu.Lock()
	refresh := !s.refreshing && sb.now().Sub(s.checked) >= sb.interval
	if refresh {
		s.refreshing = true
	}
	failing := s.failures >= sb.failures
	s.mu.Unlock()
	if refresh {
		check := func(ctx context.Context) {
			cctx, cancel := context.WithTimeout(ctx, max(sb.interval, 500*time.Millisecond))
			st, err := replication.ReadStandbyStatus(cctx, pool)
			cancel()
			s.mu.Lock()
			s.refreshing = false
			s.checked = sb.now()
			s.mu.Unlock()
			sb.record(shard, pool, st, err)
		}
		if failing {
			go check(context.WithoutCancel(ctx))
		} else {
			check(ctx)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st, sb.healthyLocked(s)
}

// healthyLocked reports whether s may serve reads; s.mu must be held.
func (sb *standbys) healthyLocked(s *standbyState) bool {
	return s.failures < sb.failures && !s.ok.IsZero() && sb.now().Sub(s.ok) <= 4*sb.interval
}

// record stores the outcome of a status query (a fresh status, or a failure).
func (sb *standbys) record(shard string, pool *pgxpool.Pool, st replication.StandbyStatus, err error) {
	s := sb.state(shard, pool)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failures++
		return
	}
	s.failures = 0
	s.ok = sb.now()
	if st.Replayed < s.st.Replayed {
		st.Replayed = s.st.Replayed // replay never goes back on one standby; keep the newest seen
	}
	s.st = st
}

// waitReplayed polls the standby until it has replayed lsn, for at most wait. It reports
// whether it did; a failed poll ends the wait (and counts against the standby).
func (sb *standbys) waitReplayed(ctx context.Context, shard string, pool *pgxpool.Pool, lsn replication.LSN, wait time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tk := time.NewTicker(rywPoll)
	defer tk.Stop()
	for {
		st, err := replication.ReadStandbyStatus(ctx, pool)
		if err != nil {
			if ctx.Err() == nil {
				sb.record(shard, pool, st, err)
			}
			return false
		}
		sb.record(shard, pool, st, nil)
		if st.Replayed >= lsn {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tk.C:
		}
	}
}

// chooseRead decides where a read of t is served (DESIGN.md §6) and returns that pool. Reads of
// shards homed in this region always go to the primary, which is the local copy.
func (s *Server) chooseRead(c *gin.Context, t target, rp readPref) (replication.Source, *pgxpool.Pool) {
	if rp.strong {
		return replication.SourcePrimary, t.pool
	}
	ctx := c.Request.Context()
	pool, isPrimary, err := s.pools.Local(ctx, t.shard, s.cfg.Region)
	if err != nil || isPrimary {
		return replication.SourcePrimary, t.pool
	}
	st, healthy := s.standbys.status(ctx, t.shard.ID, pool)
	req := replication.ReadRequest{Strong: rp.strong, Token: rp.token}
	src := s.readPolicy.Decide(t.shard.ID, req, st, healthy).Source
	if src == replication.SourcePrimary && healthy && rp.token != nil && rp.token.Shard == t.shard.ID &&
		s.readPolicy.Decide(t.shard.ID, replication.ReadRequest{}, st, healthy).Source == replication.SourceReplica {
		// Only the token holds the read back: give the standby a short bound to catch up.
		if s.standbys.waitReplayed(ctx, t.shard.ID, pool, rp.token.LSN, s.cfg.RYWWait) {
			st, healthy = s.standbys.status(ctx, t.shard.ID, pool)
			src = s.readPolicy.Decide(t.shard.ID, req, st, healthy).Source
		}
	}
	if src != replication.SourceReplica {
		return replication.SourcePrimary, t.pool
	}
	return src, pool
}

// fallBack reports whether a read that failed on the standby should be retried on the primary.
// Outcomes of the read itself (404 record, 400 ...) and a finished request are final.
func fallBack(err error) bool {
	var he *httpError
	return !errors.As(err, &he) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// readTx runs a read for the tenant on the source chooseRead picks; X-Read-Source names the
// source that answered. queue adds the read's statements, with result callbacks, to a batch
// that readBatch runs read-only, scoped to the tenant, after checking the tenant exists, in one
// round trip. A standby read that fails for any reason but the read's own outcome is retried on
// the primary, so queue may be called twice and its callbacks must reset what they collect.
// Writes never come here: their read-back is in their own transaction on the primary.
func (s *Server) readTx(c *gin.Context, t target, queue func(*pgx.Batch)) error {
	rp, err := parseReadPref(c.Request.Header)
	if err != nil {
		return err
	}
	if rp.strong {
		c.Header("Preference-Applied", "consistency=strong")
	}
	ctx := c.Request.Context()
	src, pool := s.chooseRead(c, t, rp)
	if src == replication.SourceReplica {
		var tok *replication.Token
		if rp.token != nil && rp.token.Shard == t.shard.ID {
			tok = rp.token
		}
		err := s.readOn(ctx, pool, t.tenant, tok, queue)
		if err == nil || !fallBack(err) {
			c.Header(hdrReadSource, replication.SourceReplica.String())
			s.metrics.reads.WithLabelValues(replication.SourceReplica.String()).Inc()
			return err
		}
		if !errors.Is(err, errStandbyBehind) && !errors.Is(err, ErrTenantNotFound) {
			s.standbys.record(t.shard.ID, pool, replication.StandbyStatus{}, err)
			s.log.Warn("standby read failed; using the primary", "shard", t.shard.ID, "err", err)
		}
		s.metrics.readFallbacks.Inc()
	}
	c.Header(hdrReadSource, replication.SourcePrimary.String())
	s.metrics.reads.WithLabelValues(replication.SourcePrimary.String()).Inc()
	return s.readOn(ctx, t.pool, t.tenant, nil, queue)
}

// readOn runs one read for tenant on a connection of pool in one round trip (readBatch). With
// tok, the copy must have replayed it first: readBatch checks that in the same batch, before the
// read's statements.
func (s *Server) readOn(ctx context.Context, pool *pgxpool.Pool, tenant string, tok *replication.Token, queue func(*pgx.Batch)) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	var minLSN replication.LSN
	if tok != nil {
		minLSN = tok.LSN
	}
	return readBatch(ctx, conn.Conn(), tenant, minLSN, queue)
}
