package events

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors of the relay; compare with errors.Is.
var (
	// ErrRelayConfig is a RelayConfig missing a required field.
	ErrRelayConfig = errors.New("events: relay config")
	// ErrReconnectBuffer is a RelayConfig.JS whose NATS connection buffers publishes while it
	// reconnects. The relay publishes a batch asynchronously; with such a buffer, the messages
	// published after a connection broke are sent on the next connection while some sent before
	// were lost with the old one, so a later outbox row could land in the stream before an
	// earlier one of the same tenant. Connect with nats.ReconnectBufSize(-1): a publish while
	// disconnected then fails, and the relay retries the batch from its first unacknowledged row.
	ErrReconnectBuffer = errors.New("events: the relay's NATS connection must not buffer publishes while reconnecting (nats.ReconnectBufSize(-1))")
	// errPublish marks a failed publish or acknowledgement: the session is fine, the batch is
	// retried after a back-off.
	errPublish = errors.New("events: publish")
)

// RelayConfig configures a Relay. Zero values of the optional fields take the defaults named.
type RelayConfig struct {
	// Region is the home region whose shards this relay publishes, on Subject(Region, shard)
	// into OriginStream(Region). Required.
	Region string
	// Shards returns the ids of the shards homed in Region. It is called at Run's start and
	// every few seconds after: a shard's loop starts when it appears and stops when it goes.
	// Required.
	Shards func() []string
	// Connect opens a dedicated session to the shard's primary as migrations.WorkerRole (cmd/api
	// uses shards.Dial). The relay holds the shard's advisory lock and LISTENs on this session,
	// so it must not come from a pool; the relay closes it. Required.
	Connect func(ctx context.Context, shard string) (*pgx.Conn, error)
	// JS publishes into the region's origin stream (EnsureStreams). Its connection must be made
	// with nats.ReconnectBufSize(-1), else Run returns ErrReconnectBuffer. Required.
	JS jetstream.JetStream
	// Batch is the most outbox rows read and published at once; 0 = 500.
	Batch int
	// Heartbeat is the longest time between two heartbeats of an idle shard; 0 = 1s.
	Heartbeat time.Duration
	// Poll is how often the outbox is read when no NOTIFY arrives; 0 = 250ms. A relay that
	// waits for another's lock retries every 4×Poll, and a failed publish backs off from Poll.
	Poll time.Duration
	// Retention is how long a sent row stays for replay (gap repair, /v1/changes) before it is
	// pruned; 0 = 24h. Unsent rows are never pruned.
	Retention time.Duration
	// PruneEvery is how often pruning starts; 0 = 1m. It deletes in bounded batches,
	// interleaved with the relay's own batches.
	PruneEvery time.Duration
	// Logger receives the relay's logs, each with the shard; nil = slog.Default().
	Logger *slog.Logger
	// Registerer registers the relay's metrics; nil = kept but not registered.
	Registerer prometheus.Registerer
}

// Tunables that are not configuration.
const (
	// shardsEvery is how often RelayConfig.Shards is re-read.
	shardsEvery = 5 * time.Second
	// ackWait bounds the wait for a batch's acknowledgements; a disconnect fails them at once.
	ackWait = 10 * time.Second
	// dbWait bounds every statement of the relay's session (the session's statement_timeout
	// does the same on the server); a primary that stops answering ends the session.
	dbWait = 10 * time.Second
	// maxBackoff caps the waits after failures.
	maxBackoff = 5 * time.Second
	// pruneBatch is the most rows one prune statement deletes.
	pruneBatch = 1000
	// progressEvery is how often a draining backlog logs its progress.
	progressEvery = 5 * time.Second
	// relayLockClass is the first key of the relay's advisory lock (the second is
	// hashtext(shard)). The two-key form does not collide with goose's one-key lock.
	relayLockClass int32 = 0x6d72656c // "mrel"
)

// The relay's statements, as meridian_worker. clock_timestamp, the unsent rows and the WAL
// position are three statements of one round trip (a pgx batch): under READ COMMITTED each
// statement takes its own snapshot, so every write acknowledged before AsOf is visible to the
// select that follows it, and the LSN read after the select is at or past the commit of every
// row it saw. The insert position, not pg_current_wal_lsn (the write position), because the
// write position can trail an asynchronous commit record (as replication.CurrentLSN).
const (
	asOfSQL    = `SELECT clock_timestamp()`
	unsentSQL  = `SELECT id, tenant_id, seq, collection, record_id, op, version, created_at FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1`
	lsnSQL     = `SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint`
	backlogSQL = `SELECT count(*) FROM outbox WHERE sent_at IS NULL`
	markSQL    = `UPDATE outbox SET sent_at = now() WHERE id = ANY($1) AND sent_at IS NULL`
	pruneSQL   = `DELETE FROM outbox WHERE id = ANY(ARRAY(
		SELECT id FROM outbox WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2))`
	lockSQL = `SELECT pg_try_advisory_lock($1, hashtext($2))`
	// Writers pg_notify('meridian_outbox', shard) in their transaction: a wake-up at commit.
	listenSQL = `LISTEN meridian_outbox`
)

// Relay publishes the outbox of every shard homed in its region to JetStream: one loop per
// shard, active only while it holds the shard's advisory lock, so that across all API nodes of
// the region one relay at a time publishes a shard (DESIGN.md §7).
//
// Per-tenant order: a writer locks its tenant's row (UPDATE tenants ... change_seq + 1) before
// it inserts the outbox row, and holds the lock until it commits (pgstore's write). So the next
// write of the same tenant takes its outbox id, and commits, only after the previous one
// committed: among one tenant's rows, id order is seq order, and a snapshot that sees a row sees
// every earlier row of its tenant. The relay reads the visible unsent rows ORDER BY id and
// publishes them in that order, so each tenant's events reach the stream in seq order. Rows of
// different tenants may commit out of id order (a lower id becoming visible later); the relay
// selects unsent rows, not rows after the last id, so such a row is published by a later batch
// and never skipped.
//
// A batch is published asynchronously and every acknowledgement awaited before the rows are
// marked sent and a heartbeat follows. A failed publish or acknowledgement stops the batch:
// the acknowledged prefix is marked sent and the rest is read and published again after a
// back-off (the stream's deduplication drops what had in fact been stored). Because the
// connection does not buffer across reconnects (ErrReconnectBuffer), what the stream stored of
// a batch is a prefix of it, so the retry keeps the order.
type Relay struct {
	cfg RelayConfig
	log *slog.Logger
	m   relayMetrics
}

// NewRelay returns a relay; Run starts it.
func NewRelay(cfg RelayConfig) *Relay {
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.PruneEvery <= 0 {
		cfg.PruneEvery = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Relay{cfg: cfg, log: cfg.Logger.With("component", "relay", "region", cfg.Region), m: newRelayMetrics()}
	r.m.register(cfg.Registerer, r.log)
	return r
}

// Run relays every shard Shards names until ctx ends, then stops every shard's loop (closing
// its session, which releases its lock) and returns ctx's error. It returns at once with
// ErrRelayConfig or ErrReconnectBuffer when the configuration cannot work.
func (r *Relay) Run(ctx context.Context) error {
	switch {
	case r.cfg.Region == "" || r.cfg.Shards == nil || r.cfg.Connect == nil || r.cfg.JS == nil:
		return fmt.Errorf("%w: Region, Shards, Connect and JS are required", ErrRelayConfig)
	case r.cfg.JS.Conn() != nil && r.cfg.JS.Conn().Opts.ReconnectBufSize >= 0:
		return ErrReconnectBuffer
	}
	loops := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer func() {
		for _, stop := range loops {
			stop()
		}
		wg.Wait()
	}()
	tick := time.NewTicker(shardsEvery)
	defer tick.Stop()
	for {
		want := map[string]bool{}
		for _, s := range r.cfg.Shards() {
			want[s] = true
		}
		for s, stop := range loops {
			if !want[s] {
				r.log.Info("relay: shard no longer homed here; stopping", "shard", s)
				stop()
				delete(loops, s)
			}
		}
		for s := range want {
			if loops[s] == nil {
				lctx, stop := context.WithCancel(ctx)
				loops[s] = stop
				wg.Go(func() { r.shardLoop(lctx, s) })
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// shardLoop runs sessions for one shard until ctx ends, backing off between failed ones.
func (r *Relay) shardLoop(ctx context.Context, shard string) {
	log := r.log.With("shard", shard)
	bo := backoff{min: r.cfg.Poll}
	for ctx.Err() == nil {
		start := time.Now()
		err := r.session(ctx, shard, log)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > maxBackoff {
			bo.reset() // the session had worked for a while: start over quickly
		}
		wait := bo.next()
		log.Warn("relay: session ended; reconnecting", "err", err, "retry_in", wait)
		sleep(ctx, wait)
	}
}

// session connects, waits for the shard's lock and relays while it holds it. It returns when
// the session fails or ctx ends; closing the connection releases the lock.
func (r *Relay) session(ctx context.Context, shard string, log *slog.Logger) error {
	conn, err := r.cfg.Connect(ctx, shard)
	if err != nil {
		r.m.errors.WithLabelValues(shard, "connect").Inc()
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	waiting := false
	for {
		var got bool
		err := withTimeout(ctx, func(ctx context.Context) error {
			return conn.QueryRow(ctx, lockSQL, relayLockClass, shard).Scan(&got)
		})
		if err != nil {
			r.m.errors.WithLabelValues(shard, "lock").Inc()
			return fmt.Errorf("advisory lock: %w", err)
		}
		if got {
			break
		}
		if !waiting {
			log.Info("relay: another relay is active for the shard; standing by", "retry_every", 4*r.cfg.Poll)
			waiting = true
		}
		if !sleep(ctx, 4*r.cfg.Poll) {
			return ctx.Err()
		}
	}
	if err := withTimeout(ctx, func(ctx context.Context) error {
		_, err := conn.Exec(ctx, listenSQL)
		return err
	}); err != nil {
		r.m.errors.WithLabelValues(shard, "listen").Inc()
		return fmt.Errorf("listen: %w", err)
	}
	log.Info("relay: active for the shard")
	r.m.active.WithLabelValues(shard).Set(1)
	defer r.m.active.WithLabelValues(shard).Set(0)
	a := &shardRelay{r: r, shard: shard, conn: conn, log: log, subject: Subject(r.cfg.Region, shard),
		session: newSession(), since: time.Now()}
	return a.run(ctx)
}

// shardRelay is the active loop of one shard on its locked session.
type shardRelay struct {
	r       *Relay
	shard   string
	conn    *pgx.Conn
	log     *slog.Logger
	subject string

	// The publishing session (this lock holder's run): every change it publishes names it, and
	// its heartbeats say how many changes it has had acknowledged so far (count) and the
	// highest outbox id among them (maxID), so a consumer can tell that it received every one
	// (Consumer: lost changes). since is when the session began (this process's clock).
	session string
	since   time.Time
	count   int64
	maxID   int64

	lastHeartbeat time.Time
	lastCount     time.Time // last backlog count (only full batches count)
	nextPrune     time.Time
	pruning       bool // a prune round is under way
	pruned        int64

	// A backlog is a run of full batches; logged while it drains.
	backlogStart   time.Time
	backlogSent    int64
	backlogLogged  time.Time
	backlogPending int64
}

// batch is what one read of the outbox returned.
type batch struct {
	asOf time.Time
	rows []outboxRow
	lsn  uint64
}

type outboxRow struct {
	id, seq, version      int64
	tenant, coll, rec, op string
	created               time.Time
}

func (a *shardRelay) run(ctx context.Context) error {
	cfg := a.r.cfg
	a.nextPrune = time.Now() // prune once on taking over, then every PruneEvery
	bo := backoff{min: cfg.Poll}
	for {
		a.dropNotifications()
		b, err := a.read(ctx)
		if err != nil {
			return err
		}
		full := len(b.rows) == cfg.Batch
		a.gauge(ctx, b, full)
		err = a.publish(ctx, b, full)
		if errors.Is(err, errPublish) {
			wait := bo.next()
			a.log.Warn("relay: publish failed; retrying the batch", "err", err, "rows", len(b.rows), "retry_in", wait)
			if err := a.prune(ctx); err != nil {
				return err
			}
			if !sleep(ctx, wait) {
				return ctx.Err()
			}
			continue
		} else if err != nil {
			return err
		}
		bo.reset()
		if err := a.prune(ctx); err != nil {
			return err
		}
		if full {
			continue // a backlog: read on at once
		}
		if err := a.wait(ctx); err != nil {
			return err
		}
	}
}

// read takes AsOf, then the unsent rows in id order, then the WAL position, in one round trip.
func (a *shardRelay) read(ctx context.Context) (batch, error) {
	var b batch
	err := withTimeout(ctx, func(ctx context.Context) error {
		pb := &pgx.Batch{}
		pb.Queue(asOfSQL).QueryRow(func(row pgx.Row) error { return row.Scan(&b.asOf) })
		pb.Queue(unsentSQL, a.r.cfg.Batch).Query(func(rows pgx.Rows) error {
			var err error
			b.rows, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (outboxRow, error) {
				var o outboxRow
				err := row.Scan(&o.id, &o.tenant, &o.seq, &o.coll, &o.rec, &o.op, &o.version, &o.created)
				return o, err
			})
			return err
		})
		var lsn int64
		pb.Queue(lsnSQL).QueryRow(func(row pgx.Row) error { return row.Scan(&lsn) })
		if err := a.conn.SendBatch(ctx, pb).Close(); err != nil {
			return err
		}
		b.lsn = uint64(lsn)
		return nil
	})
	if err != nil {
		a.r.m.errors.WithLabelValues(a.shard, "read").Inc()
		return b, fmt.Errorf("read outbox: %w", err)
	}
	return b, nil
}

// gauge sets the backlog metrics from a batch just read: its row count when it was not full
// (then it holds every unsent row), else a count at most once per Heartbeat; the age is that
// of the lowest unsent id, which is about the oldest.
func (a *shardRelay) gauge(ctx context.Context, b batch, full bool) {
	m := a.r.m
	age := 0.0
	if len(b.rows) > 0 {
		age = max(0, b.asOf.Sub(b.rows[0].created).Seconds())
	}
	m.backlogAge.WithLabelValues(a.shard).Set(age)
	if !full {
		a.backlogPending = int64(len(b.rows))
		m.backlogRows.WithLabelValues(a.shard).Set(float64(len(b.rows)))
		return
	}
	if time.Since(a.lastCount) < a.r.cfg.Heartbeat {
		return
	}
	a.lastCount = time.Now()
	var n int64
	if err := withTimeout(ctx, func(ctx context.Context) error {
		return a.conn.QueryRow(ctx, backlogSQL).Scan(&n)
	}); err != nil {
		// Only a metric: the next read finds out whether the session is gone.
		a.log.Warn("relay: counting the backlog", "err", err)
		return
	}
	a.backlogPending = n
	m.backlogRows.WithLabelValues(a.shard).Set(float64(n))
}

// publish sends the batch's rows, waits for every acknowledgement, marks the rows sent and,
// when the batch held every unsent row (not full) or a heartbeat is due, publishes a heartbeat.
// A publish or acknowledgement failure marks the acknowledged prefix sent and returns an error
// wrapping errPublish; a database failure returns another error.
func (a *shardRelay) publish(ctx context.Context, b batch, full bool) error {
	cfg := a.r.cfg
	m := a.r.m
	acked, pubErr := a.send(ctx, b)
	if acked > 0 {
		ids := make([]int64, acked)
		for i := range acked {
			ids[i] = b.rows[i].id
		}
		if err := withTimeout(ctx, func(ctx context.Context) error {
			_, err := a.conn.Exec(ctx, markSQL, ids)
			return err
		}); err != nil {
			m.errors.WithLabelValues(a.shard, "mark").Inc()
			// Published but not marked: the next session publishes them again, and the
			// stream's deduplication drops them.
			return fmt.Errorf("mark sent: %w", err)
		}
		m.published.WithLabelValues(a.shard).Add(float64(acked))
		// Acknowledged rows are in the stream exactly once (a re-publish within the
		// deduplication window is dropped), and a session publishes in id order.
		a.count += int64(acked)
		a.maxID = b.rows[acked-1].id
	}
	if pubErr != nil {
		m.errors.WithLabelValues(a.shard, "publish").Inc()
		return pubErr
	}
	a.progress(len(b.rows), full)
	// A full batch may have left unsent rows written before AsOf, so its AsOf proves nothing:
	// no heartbeat until a batch drains the outbox (consumers then see the shard as not
	// fresh, which is true).
	if full || (len(b.rows) == 0 && time.Since(a.lastHeartbeat) < cfg.Heartbeat) {
		return nil
	}
	hb := Event{Kind: KindHeartbeat, Shard: a.shard, AsOf: b.asOf, LSN: b.lsn,
		Session: a.session, Since: a.since, Count: a.count, OutboxID: a.maxID}
	if err := a.publishHeartbeat(ctx, hb); err != nil {
		m.errors.WithLabelValues(a.shard, "heartbeat").Inc()
		return fmt.Errorf("%w: heartbeat: %w", errPublish, err)
	}
	a.lastHeartbeat = time.Now()
	m.backlogRows.WithLabelValues(a.shard).Set(0)
	m.backlogAge.WithLabelValues(a.shard).Set(0)
	return nil
}

// publishHeartbeat publishes hb and waits for its acknowledgement, at most ackWait. It
// publishes asynchronously, as send does: an asynchronous publish's acknowledgement fails when
// the connection it went out on is lost, where a synchronous Publish's request waits its
// context out — after a NATS restart that held the heartbeats, and the consumers' freshness,
// for ackWait (TestRelayHeartbeatFailsWithItsConnection).
func (a *shardRelay) publishHeartbeat(ctx context.Context, hb Event) error {
	cfg := a.r.cfg
	f, err := cfg.JS.PublishMsgAsync(&nats.Msg{Subject: a.subject, Data: hb.Marshal()},
		jetstream.WithExpectStream(OriginStream(cfg.Region)))
	if err != nil {
		return err
	}
	timeout := time.NewTimer(ackWait)
	defer timeout.Stop()
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-timeout.C:
		return fmt.Errorf("no acknowledgement within %v", ackWait)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send publishes the rows asynchronously in order and returns how many of them, from the first,
// were acknowledged, and an error wrapping errPublish unless all were.
func (a *shardRelay) send(ctx context.Context, b batch) (int, error) {
	cfg := a.r.cfg
	futures := make([]jetstream.PubAckFuture, 0, len(b.rows))
	var pubErr error
	for _, o := range b.rows {
		ev := Event{Kind: KindChange, Shard: a.shard, Tenant: o.tenant, Seq: o.seq, OutboxID: o.id,
			Collection: o.coll, ID: o.rec, Op: o.op, Version: o.version, LSN: b.lsn, AsOf: o.created, Session: a.session}
		f, err := cfg.JS.PublishMsgAsync(&nats.Msg{Subject: a.subject, Data: ev.Marshal()},
			jetstream.WithMsgID(MsgID(a.shard, o.id)), jetstream.WithExpectStream(OriginStream(cfg.Region)))
		if err != nil {
			// Publish nothing further: a later row stored before this one could break a
			// tenant's order in the stream.
			pubErr = fmt.Errorf("outbox id %d: %w", o.id, err)
			break
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(ackWait)
	defer timeout.Stop()
	acked, prefix := 0, true
	var ackErr error // the first row whose acknowledgement failed
	for i, f := range futures {
		select {
		case <-f.Ok():
			if prefix {
				acked = i + 1
			}
		case err := <-f.Err():
			if prefix {
				ackErr = fmt.Errorf("outbox id %d: %w", b.rows[i].id, err)
			}
			prefix = false
		case <-timeout.C:
			return acked, fmt.Errorf("%w: no acknowledgement within %v (outbox id %d)", errPublish, ackWait, b.rows[i].id)
		case <-ctx.Done():
			return acked, ctx.Err()
		}
	}
	if err := cmp.Or(ackErr, pubErr); err != nil {
		return acked, fmt.Errorf("%w: %w", errPublish, err)
	}
	return acked, nil
}

// progress logs a draining backlog: every progressEvery while full batches follow each other,
// and once when it is drained.
func (a *shardRelay) progress(n int, full bool) {
	now := time.Now()
	if full {
		if a.backlogStart.IsZero() {
			a.backlogStart, a.backlogSent, a.backlogLogged = now, 0, now
			a.log.Info("relay: draining a backlog", "backlog_rows", a.backlogPending)
		}
		a.backlogSent += int64(n)
		if now.Sub(a.backlogLogged) >= progressEvery {
			a.backlogLogged = now
			el := now.Sub(a.backlogStart)
			a.log.Info("relay: backlog progress", "published", a.backlogSent, "backlog_rows", a.backlogPending,
				"elapsed", el.Round(time.Millisecond), "rows_per_second", int(float64(a.backlogSent)/el.Seconds()))
		}
		return
	}
	if !a.backlogStart.IsZero() {
		a.backlogSent += int64(n)
		el := now.Sub(a.backlogStart)
		a.log.Info("relay: backlog drained", "published", a.backlogSent, "elapsed", el.Round(time.Millisecond),
			"rows_per_second", int(float64(a.backlogSent)/max(el.Seconds(), 1e-3)))
		a.backlogStart = time.Time{}
	}
}

// prune deletes one batch of sent rows older than Retention when a prune round is due or under
// way; a round ends with a batch that was not full.
func (a *shardRelay) prune(ctx context.Context) error {
	cfg := a.r.cfg
	if !a.pruning {
		if time.Now().Before(a.nextPrune) {
			return nil
		}
		a.pruning, a.pruned = true, 0
	}
	var n int64
	err := withTimeout(ctx, func(ctx context.Context) error {
		tag, err := a.conn.Exec(ctx, pruneSQL, cfg.Retention.Seconds(), pruneBatch)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		a.r.m.errors.WithLabelValues(a.shard, "prune").Inc()
		return fmt.Errorf("prune: %w", err)
	}
	a.r.m.pruned.WithLabelValues(a.shard).Add(float64(n))
	a.pruned += n
	if n < pruneBatch {
		a.pruning = false
		a.nextPrune = time.Now().Add(cfg.PruneEvery)
		if a.pruned > 0 {
			a.log.Info("relay: pruned sent outbox rows", "rows", a.pruned, "retention", cfg.Retention)
		}
	}
	return nil
}

// dropNotifications discards the notifications pgx buffered during earlier statements: the
// read that follows sees every commit they announced. Without this they would pile up, one
// per write, while a backlog keeps the relay from waiting.
func (a *shardRelay) dropNotifications() {
	done, cancel := context.WithCancel(context.Background())
	cancel() // with an ended context, only buffered notifications are returned
	for {
		if n, _ := a.conn.WaitForNotification(done); n == nil {
			return
		}
	}
}

// wait blocks until a NOTIFY, Poll, or the next heartbeat or prune round is due. pgx.Conn's
// WaitForNotification returns a notification that arrived during an earlier statement first.
func (a *shardRelay) wait(ctx context.Context) error {
	cfg := a.r.cfg
	d := min(cfg.Poll, time.Until(a.lastHeartbeat.Add(cfg.Heartbeat)))
	if !a.pruning {
		d = min(d, time.Until(a.nextPrune))
	}
	if d <= 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := a.conn.WaitForNotification(wctx)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case pgconn.Timeout(err):
		return nil
	default:
		a.r.m.errors.WithLabelValues(a.shard, "listen").Inc()
		return fmt.Errorf("wait for notify: %w", err)
	}
}

// withTimeout runs f with ctx bounded by dbWait.
func withTimeout(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, dbWait)
	defer cancel()
	return f(ctx)
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff doubles from min up to maxBackoff.
type backoff struct {
	min, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, maxBackoff)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// relayMetrics are the relay's metrics, all by shard.
type relayMetrics struct {
	active, backlogRows, backlogAge *prometheus.GaugeVec
	published, pruned, errors       *prometheus.CounterVec
}

func newRelayMetrics() relayMetrics {
	return relayMetrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meridian_relay_active", Help: "1 while this node's relay holds the shard's lock and publishes its outbox.",
		}, []string{"shard"}),
		backlogRows: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meridian_relay_backlog_rows", Help: "Unsent outbox rows of the shard at the relay's last read (0 once published).",
		}, []string{"shard"}),
		backlogAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meridian_relay_backlog_age_seconds", Help: "Age of the oldest unsent outbox row of the shard at the relay's last read.",
		}, []string{"shard"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_relay_published_total", Help: "Change events published and acknowledged (re-publishes of a retried batch included).",
		}, []string{"shard"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_relay_errors_total", Help: "Relay failures by stage (connect, lock, listen, read, publish, mark, heartbeat, prune).",
		}, []string{"shard", "stage"}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_relay_pruned_total", Help: "Sent outbox rows deleted after the retention.",
		}, []string{"shard"}),
	}
}

// register registers the metrics on reg; a collector already registered (a second relay on the
// same registry) is shared instead.
func (m *relayMetrics) register(reg prometheus.Registerer, log *slog.Logger) {
	if reg == nil {
		return
	}
	for _, p := range []**prometheus.GaugeVec{&m.active, &m.backlogRows, &m.backlogAge} {
		if err := reg.Register(*p); err != nil {
			if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
				*p = are.ExistingCollector.(*prometheus.GaugeVec)
			} else {
				log.Warn("relay: metrics not registered", "err", err)
			}
		}
	}
	for _, p := range []**prometheus.CounterVec{&m.published, &m.pruned, &m.errors} {
		if err := reg.Register(*p); err != nil {
			if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
				*p = are.ExistingCollector.(*prometheus.CounterVec)
			} else {
				log.Warn("relay: metrics not registered", "err", err)
			}
		}
	}
}

// newSession names a relay session: random, so two sessions never share a name.
func newSession() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
