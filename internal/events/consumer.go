package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/records"
)

// The consumer's and change feed's errors.
var (
	// ErrSlowFollower ends a Feed whose reader fell its buffer's worth of events behind; the
	// client resumes after the last event it received (Last-Event-ID).
	ErrSlowFollower = errors.New("events: follower fell too far behind")
	// ErrMissingChanges is a gap the outbox cannot fill: the rows were pruned (a resume from
	// further back than the replay window) or are not there at all.
	ErrMissingChanges = errors.New("events: changes missing from the outbox")
	// ErrNoOutbox: Follow needs ConsumerConfig.Outbox.
	ErrNoOutbox = errors.New("events: no outbox reader configured")
)

// Applier is what the consumer drives: the region's cache implements it. The consumer calls it
// from one goroutine, in stream order.
type Applier interface {
	// Invalidate drops what is cached for one record of tenant (and the lists of its
	// collection); lsn is at or past the change's commit.
	Invalidate(ctx context.Context, tenant, shard, collection, id string, lsn uint64) error
	// ResetTenant drops everything cached for tenant.
	ResetTenant(ctx context.Context, tenant string) error
	// ResetAll drops everything cached in the region.
	ResetAll(ctx context.Context) error
}

// OutboxReader reads a tenant's outbox: the truth the consumer and the change feed repair gaps
// from. pgstore implements it (the local standby first, the primary for what the standby does
// not have yet).
type OutboxReader interface {
	// Changes returns the tenant's outbox rows with after < seq ≤ upto, in seq order; upto 0
	// means to the end.
	Changes(ctx context.Context, tenant, shard string, after, upto int64) ([]records.ChangeEvent, error)
	// ChangeSeq returns the tenant's current change sequence (the seq of its newest change).
	ChangeSeq(ctx context.Context, t records.Target) (int64, error)
}

// ConsumerConfig configures NewConsumer.
type ConsumerConfig struct {
	// Region is this region: the consumer reads FanInStream(Region).
	Region string
	// JS is this region's JetStream; its connection's reconnects are watched.
	JS jetstream.JetStream
	// Replay is how far back in time each (re)created consumer starts in the fan-in stream
	// (from now, or from the last message it handled if that is older); 0 = 10 s (2×
	// max_staleness: a cache fill from a standby can miss only events younger than the
	// staleness bound).
	Replay time.Duration
	// Apply receives invalidations and resets; nil = none (the consumer only feeds followers).
	Apply Applier
	// Outbox fills gaps; nil = a gap only resets the tenant's cache, and Follow returns
	// ErrNoOutbox.
	Outbox OutboxReader
	// Logger; nil = discard.
	Logger *slog.Logger
	// Registerer receives the metrics; nil = kept but not registered.
	Registerer prometheus.Registerer
	// Now is the clock (the replay start and the lag metric); nil = time.Now.
	Now func() time.Time
	// StreamCheck is how often the fan-in stream is checked for a reset (deleted and
	// re-created, or gone backwards after a server lost its tail), and the longest the consumer
	// waits for a message before looking at its connection; 0 = 2 s.
	StreamCheck time.Duration
	// FetchTimeout bounds one outbox read made by the consumer's goroutine to fill a gap for
	// followers; 0 = 5 s. (A Feed's own reads are bounded by its context.)
	FetchTimeout time.Duration
}

// Consumer reads its region's fan-in stream and applies every shard's events in stream order:
// invalidations to the Applier, heartbeats to the freshness Fresh reports, changes to the
// tenant's followers (Follow). Postgres is the truth: per tenant it keeps the last change seq
// it saw, drops repeats, and on a gap resets the tenant's cache and reads the missing events
// from the outbox; whatever may have lost messages it cannot name (a stream sequence jump, a
// re-created consumer, a reconnect) resets the whole region's cache.
//
// Every ResetAll is followed by a replay of the last Replay of the stream, whose changes are
// invalidated again (but not sent to followers again): a cache fill after the reset may read a
// standby up to max_staleness behind, so it can miss a change applied just before the reset;
// the replayed invalidation (and the cache's fill guard) keeps such a fill from staying.
type Consumer struct {
	cfg ConsumerConfig
	log *slog.Logger
	m   *consumerMetrics

	// Owned by the Run goroutine.
	last       map[string]int64 // tenant → last change seq seen
	broken     bool             // an Applier call failed: ResetAll must succeed before applying again
	lastRepair time.Time        // last ResetAll attempt while broken
	reconnects uint64           // the connection's reconnect count at the session's start
	// reapplyUpTo: this session re-applies the invalidations of repeats at or below this
	// stream sequence (the replay after a ResetAll); 0 = none.
	reapplyUpTo uint64
	lastStored  time.Time // when the last message handled was stored in the stream
	// jumpedTo is the stream sequence after the last jump already reset for, in the stream
	// created at streamCreated: the replay reads across that jump again and must go on.
	jumpedTo      uint64
	streamCreated time.Time
	// started is when Run began; sessions tracks, per shard, the relay session whose changes
	// are being counted against its heartbeats (lost changes).
	started  time.Time
	sessions map[string]*relaySession

	// fmu guards fresh and newest.
	fmu    sync.Mutex
	fresh  map[string]time.Time // shard → AsOf of its newest heartbeat since the last ResetAll
	newest map[string]time.Time // home region → AsOf of its newest heartbeat (the lag metric)

	// mu guards followers.
	mu        sync.Mutex
	followers map[string]map[*follower]struct{} // tenant → its followers
}

// NewConsumer returns a consumer; Run starts it. A metric that cannot be registered (a second
// consumer on one Registerer) is logged and kept unregistered.
func NewConsumer(cfg ConsumerConfig) *Consumer {
	if cfg.Replay <= 0 {
		cfg.Replay = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StreamCheck <= 0 {
		cfg.StreamCheck = 2 * time.Second
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 5 * time.Second
	}
	c := &Consumer{
		cfg:       cfg,
		log:       cfg.Logger.With("region", cfg.Region, "part", "events-consumer"),
		last:      map[string]int64{},
		sessions:  map[string]*relaySession{},
		fresh:     map[string]time.Time{},
		newest:    map[string]time.Time{},
		followers: map[string]map[*follower]struct{}{},
	}
	c.m = newConsumerMetrics(c)
	return c
}

// Fresh returns the AsOf of the newest heartbeat of shard applied since the last ResetAll
// (every change of shard published before it has been applied); ok is false when there is
// none. The cache serves shard's entries only while now − asOf is under max_staleness.
func (c *Consumer) Fresh(shard string) (asOf time.Time, ok bool) {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	asOf, ok = c.fresh[shard]
	return asOf, ok
}

// Reasons a session ends and the next one resets the cache.
var (
	errStreamReset   = errors.New("events: fan-in stream was reset")
	errReconnected   = errors.New("events: NATS connection reconnected")
	errConsumerReset = errors.New("events: ordered consumer was re-created")
	errSequenceJump  = errors.New("events: fan-in stream sequence jumped")
	errRepaired      = errors.New("events: cache repaired after a failed update")
)

// Run consumes until ctx is done and returns ctx.Err(). Any failure re-creates the consumer
// (Replay back by time: what the replay repeats is dropped per tenant) after a ResetAll.
func (c *Consumer) Run(ctx context.Context) error {
	if c.cfg.JS == nil {
		return errors.New("events: ConsumerConfig.JS is nil")
	}
	c.started = c.cfg.Now()
	created := false // a session got as far as a consumer: the next one resets
	fails := 0
	var err error
	for ctx.Err() == nil {
		began := c.cfg.Now()
		// Every session resets the region's cache, the first included: while this node was
		// down (or before it started) nobody may have applied the region's invalidations — a
		// region of one API node, or all of them restarted — and entries older than the replay
		// window would outlive the invalidations the replay cannot repeat. A repair has just
		// reset and only needs the replay.
		reset := !errors.Is(err, errRepaired)
		var made bool
		made, err = c.session(ctx, reset, created)
		created = created || made
		if ctx.Err() != nil {
			break
		}
		stage := "consume"
		if !made {
			stage = "subscribe"
		}
		c.m.errors.WithLabelValues(stage).Inc()
		c.log.Warn("fan-in consumer ended; re-creating", "stream", FanInStream(c.cfg.Region), "err", err)
		if c.cfg.Now().Sub(began) > time.Minute {
			fails = 0
		}
		fails++
		// The reasons that are not failures restart at once; a failing server is retried
		// with a capped backoff.
		if errors.Is(err, errReconnected) || errors.Is(err, errConsumerReset) || errors.Is(err, errStreamReset) ||
			errors.Is(err, errSequenceJump) || errors.Is(err, errRepaired) {
			continue
		}
		d := min(time.Duration(1<<min(fails, 6))*50*time.Millisecond, 3*time.Second)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	return ctx.Err()
}

// session runs one ordered consumer; made reports whether it was created. With reset, the
// region's cache is reset once the consumer exists (before its first message); with reapply,
// the replayed changes (the stream as it was at the start) are invalidated again.
func (c *Consumer) session(ctx context.Context, reset, reapply bool) (made bool, err error) {
	name := FanInStream(c.cfg.Region)
	st, err := c.cfg.JS.Stream(ctx, name)
	if err != nil {
		return false, fmt.Errorf("events: stream %s: %w", name, err)
	}
	streamCreated := st.CachedInfo().Created
	if !streamCreated.Equal(c.streamCreated) {
		c.streamCreated, c.jumpedTo = streamCreated, 0
	}
	// Replay back from now, or from the last message handled if that is older (a consumer
	// that was behind must not skip what it had not read yet).
	start := c.cfg.Now()
	if !c.lastStored.IsZero() && c.lastStored.Before(start) {
		start = c.lastStored
	}
	start = start.Add(-c.cfg.Replay)
	oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &start,
	})
	if err != nil {
		return false, fmt.Errorf("events: ordered consumer on %s: %w", name, err)
	}
	it, err := oc.Messages()
	if err != nil {
		return false, fmt.Errorf("events: messages of %s: %w", name, err)
	}
	defer it.Stop()
	// Next can block inside the library while it re-creates its consumer; Stop ends that.
	defer context.AfterFunc(ctx, it.Stop)()

	c.reconnects = c.cfg.JS.Conn().Stats().Reconnects
	c.reapplyUpTo = 0
	if reapply {
		c.reapplyUpTo = st.CachedInfo().State.LastSeq
	}
	if reset {
		c.resetAll(ctx, "recreated")
	}
	var (
		prevSeq   uint64 // stream sequence of the previous message (0 = none yet)
		consumer  string // the library's consumer the previous message came from
		nextCheck = c.cfg.Now().Add(c.cfg.StreamCheck)
	)
	for {
		msg, err := it.Next(jetstream.NextMaxWait(c.cfg.StreamCheck))
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) {
			return true, err
		}
		// A reconnect may have lost messages on either side (a server that restarted can
		// lose its unsynced tail): start again by time.
		if n := c.cfg.JS.Conn().Stats().Reconnects; n != c.reconnects {
			return true, errReconnected
		}
		if c.repair(ctx) {
			return true, errRepaired
		}
		if now := c.cfg.Now(); !now.Before(nextCheck) {
			nextCheck = now.Add(c.cfg.StreamCheck)
			if err := c.checkStream(ctx, st, streamCreated, prevSeq); err != nil {
				return true, err
			}
		}
		if msg == nil {
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			return true, fmt.Errorf("events: message metadata: %w", err)
		}
		if consumer != "" && meta.Consumer != consumer {
			// The library re-created its consumer (missed heartbeats, a deleted consumer): it
			// resumed after our stream sequence, which is wrong if the stream itself was
			// re-created, so start again by time.
			return true, fmt.Errorf("%w: %s became %s", errConsumerReset, consumer, meta.Consumer)
		}
		consumer = meta.Consumer
		if prevSeq != 0 && meta.Sequence.Stream != prevSeq+1 && meta.Sequence.Stream > c.jumpedTo {
			// Messages were removed before we read them (limits, a purge) or the stream was
			// replaced: whose they were is unknown. This message is read again by the next
			// session's replay.
			c.jumpedTo = meta.Sequence.Stream
			return true, fmt.Errorf("%w: %d after %d", errSequenceJump, meta.Sequence.Stream, prevSeq)
		}
		prevSeq = meta.Sequence.Stream
		c.lastStored = meta.Timestamp
		c.handle(ctx, msg.Subject(), msg.Data(), meta.Sequence.Stream <= c.reapplyUpTo)
	}
}

// checkStream ends the session when the fan-in stream was replaced (a new creation time) or
// has gone back behind what was read (a server lost its tail): the library would resume after
// our sequence and skip the new stream's first messages.
func (c *Consumer) checkStream(ctx context.Context, st jetstream.Stream, created time.Time, prevSeq uint64) error {
	info, err := st.Info(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("%w: %v", errStreamReset, err)
		}
		// The consumer may still be fine; the next check tries again.
		c.m.errors.WithLabelValues("stream-info").Inc()
		c.log.Debug("fan-in stream info failed", "err", err)
		return nil
	}
	if !info.Created.Equal(created) {
		return fmt.Errorf("%w: created %v, was %v", errStreamReset, info.Created, created)
	}
	if info.State.LastSeq < prevSeq {
		return fmt.Errorf("%w: last sequence %d, read up to %d", errStreamReset, info.State.LastSeq, prevSeq)
	}
	return nil
}

// handle applies one message; replayed is set for the replay after a ResetAll.
func (c *Consumer) handle(ctx context.Context, subject string, data []byte, replayed bool) {
	e, err := Unmarshal(data)
	if err != nil {
		c.m.errors.WithLabelValues("decode").Inc()
		c.log.Error("undecodable event skipped", "subject", subject, "err", err)
		return
	}
	switch e.Kind {
	case KindHeartbeat:
		c.m.applied.Inc()
		if c.lost(e) {
			c.m.lost.Inc()
			c.resetAll(ctx, "lost changes")
		}
		c.heartbeat(homeRegion(subject), e)
	case KindReset:
		c.m.applied.Inc()
		c.resetTenant(ctx, e.Tenant, "event")
	case KindChange:
		c.change(ctx, e, replayed)
	}
}

// change applies one change in order: a repeat is dropped (invalidated again if replayed),
// a gap resets the tenant and is filled from the outbox for its followers.
func (c *Consumer) change(ctx context.Context, e Event, replayed bool) {
	c.track(e)
	last, known := c.last[e.Tenant]
	if known && e.Seq <= last {
		// A repeat (the replay after a re-creation, a re-publish).
		if replayed {
			c.invalidate(ctx, e)
		}
		return
	}
	ce := records.ChangeEvent{Seq: e.Seq, OutboxID: e.OutboxID, Collection: e.Collection, ID: e.ID, Op: e.Op, Version: e.Version, At: e.AsOf}
	if known && e.Seq > last+1 {
		c.m.gaps.Inc()
		c.log.Warn("change sequence gap", "tenant", e.Tenant, "shard", e.Shard, "last", last, "got", e.Seq)
		c.resetTenant(ctx, e.Tenant, "gap")
		c.fillFollowers(ctx, e.Tenant, e.Shard, last, e.Seq-1)
	}
	c.last[e.Tenant] = e.Seq
	c.m.applied.Inc()
	c.invalidate(ctx, e)
	c.deliver(e.Tenant, ce)
}

func (c *Consumer) invalidate(ctx context.Context, e Event) {
	if c.cfg.Apply == nil || c.broken {
		return
	}
	if err := c.cfg.Apply.Invalidate(ctx, e.Tenant, e.Shard, e.Collection, e.ID, e.LSN); err != nil {
		c.applyFailed(ctx, "invalidate", err)
	}
}

// fillFollowers reads a gap's events from the outbox once for all of the tenant's followers.
// Without followers nothing is read (the tenant's reset already covers the cache); if the read
// fails, each follower fills the gap itself when the next event reaches it.
func (c *Consumer) fillFollowers(ctx context.Context, tenant, shard string, after, upto int64) {
	if c.cfg.Outbox == nil || !c.hasFollowers(tenant) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.FetchTimeout)
	defer cancel()
	evs, err := c.cfg.Outbox.Changes(ctx, tenant, shard, after, upto)
	if err != nil {
		c.m.errors.WithLabelValues("outbox").Inc()
		c.log.Warn("gap not read from the outbox; followers fill it themselves", "tenant", tenant, "shard", shard, "after", after, "upto", upto, "err", err)
		return
	}
	c.deliver(tenant, evs...)
}

// heartbeat records a shard's freshness (not while the Applier is broken: its invalidations
// are not being applied).
func (c *Consumer) heartbeat(home string, e Event) {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	if home != "" && e.AsOf.After(c.newest[home]) {
		c.newest[home] = e.AsOf
	}
	if c.broken {
		return
	}
	if e.AsOf.After(c.fresh[e.Shard]) {
		c.fresh[e.Shard] = e.AsOf
	}
}

func (c *Consumer) resetTenant(ctx context.Context, tenant, reason string) {
	c.m.resets.WithLabelValues("tenant").Inc()
	c.log.Info("tenant cache reset", "tenant", tenant, "reason", reason)
	if c.cfg.Apply == nil || c.broken {
		return
	}
	if err := c.cfg.Apply.ResetTenant(ctx, tenant); err != nil {
		c.applyFailed(ctx, "reset-tenant", err)
	}
}

// resetAll resets the region's cache and forgets every shard's freshness (first, so the
// cache stops serving before its entries go). The per-tenant seqs are kept: followers still
// need their next event's gap, if any, detected and filled.
func (c *Consumer) resetAll(ctx context.Context, reason string) {
	c.m.resets.WithLabelValues("all").Inc()
	c.log.Warn("region cache reset", "reason", reason)
	c.clearFresh()
	if c.cfg.Apply == nil {
		return
	}
	c.lastRepair = c.cfg.Now()
	if err := c.cfg.Apply.ResetAll(ctx); err != nil {
		c.applyFailed(ctx, "reset-all", err)
		return
	}
	c.broken = false
}

// applyFailed turns the cache off: a missed invalidation must never leave a stale entry
// served, so freshness is gone (the cache serves nothing) until a ResetAll succeeds (repair).
// Followers keep being fed meanwhile.
func (c *Consumer) applyFailed(ctx context.Context, op string, err error) {
	if ctx.Err() != nil {
		return
	}
	c.m.errors.WithLabelValues("apply").Inc()
	c.log.Error("cache update failed; caching off until a region reset succeeds", "op", op, "err", err)
	c.broken = true
	c.clearFresh()
}

// repair retries the ResetAll a failed Applier call needs, at most once a second; true once
// it succeeded (the session then ends, so the next one replays what was not invalidated).
func (c *Consumer) repair(ctx context.Context) bool {
	if !c.broken || c.cfg.Now().Sub(c.lastRepair) < time.Second {
		return false
	}
	c.resetAll(ctx, "repair")
	return !c.broken
}

func (c *Consumer) clearFresh() {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	clear(c.fresh)
}

// homeRegion is the home region in a subject made by Subject ("" if it is not one).
func homeRegion(subject string) string {
	rest, ok := strings.CutPrefix(subject, subjectPrefix)
	if !ok {
		return ""
	}
	region, _, _ := strings.Cut(rest, ".")
	return region
}

// consumerMetrics are the consumer's and its followers' metrics.
type consumerMetrics struct {
	applied   prometheus.Counter
	gaps      prometheus.Counter
	lost      prometheus.Counter
	resets    *prometheus.CounterVec
	errors    *prometheus.CounterVec
	followers prometheus.Gauge
}

func newConsumerMetrics(c *Consumer) *consumerMetrics {
	m := &consumerMetrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_events_applied_total", Help: "Events applied from the region's fan-in stream (changes, heartbeats, resets; repeats dropped are not counted).",
		}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_events_gaps_total", Help: "Gaps in a tenant's change sequence (its cache reset, the missing events read from the outbox).",
		}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meridian_events_lost_total", Help: "Heartbeats that showed changes acknowledged by JetStream but never received here (the region's cache reset).",
		}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_events_resets_total", Help: "Cache resets by scope: tenant (a gap or a reset event) or all (a re-created consumer, a reconnect, a stream sequence jump).",
		}, []string{"scope"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_events_errors_total", Help: "Consumer failures by stage (subscribe, consume, stream-info, decode, apply, outbox).",
		}, []string{"stage"}),
		followers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meridian_events_followers", Help: "Change feeds (/v1/changes streams) following this node's consumer.",
		}),
	}
	if r := c.cfg.Registerer; r != nil {
		for _, col := range []prometheus.Collector{m.applied, m.gaps, m.lost, m.resets, m.errors, m.followers, lagCollector{c}} {
			if err := r.Register(col); err != nil {
				c.log.Error("events consumer metric not registered", "err", err)
			}
		}
	}
	return m
}

var lagDesc = prometheus.NewDesc("meridian_events_lag_seconds",
	"Now minus the AsOf of the newest heartbeat applied from each home region (grows while a relay, a link or the consumer is stuck).",
	[]string{"home_region"}, nil)

// lagCollector computes the lag at scrape time, so a stuck consumer shows a growing lag.
type lagCollector struct{ c *Consumer }

func (l lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagDesc }

func (l lagCollector) Collect(ch chan<- prometheus.Metric) {
	now := l.c.cfg.Now()
	l.c.fmu.Lock()
	defer l.c.fmu.Unlock()
	for home, asOf := range l.c.newest {
		ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, now.Sub(asOf).Seconds(), home)
	}
}

// relaySession is what a consumer knows of one relay session of a shard: the Count and the
// highest outbox id of its last heartbeat checked (once baseline), and the ids of its changes
// received above that id since.
type relaySession struct {
	name     string
	baseline bool
	count    int64
	maxID    int64
	got      map[int64]struct{}
}

// track counts a change against its relay session.
func (c *Consumer) track(e Event) {
	if e.Session == "" {
		return
	}
	s := c.sessions[e.Shard]
	if s == nil || s.name != e.Session {
		s = &relaySession{name: e.Session, got: map[int64]struct{}{}}
		c.sessions[e.Shard] = s
	}
	if e.OutboxID > s.maxID {
		s.got[e.OutboxID] = struct{}{}
	}
}

// lost checks a heartbeat against the changes of its session received since the previous
// one: fewer than its Count says were acknowledged means JetStream lost some after
// acknowledging them (a crash without fsync, a truncated store) and nothing else might ever
// tell, since the fan-in stream's own sequence has no hole where the origin never had the
// message. The tenants are unknown, so the caller resets the region. A session's first
// heartbeat is checked from zero only if the session began after this consumer's replay
// window did (otherwise its early changes were never in view), with a second of margin for
// the clocks of the relay and this node.
func (c *Consumer) lost(e Event) bool {
	if e.Session == "" {
		return false
	}
	s := c.sessions[e.Shard]
	if s == nil || s.name != e.Session {
		s = &relaySession{name: e.Session, got: map[int64]struct{}{}}
		c.sessions[e.Shard] = s
	}
	if s.baseline && e.Count < s.count {
		return false // a replayed older heartbeat: already checked
	}
	var n, want int64
	check := true
	switch {
	case s.baseline:
		want = e.Count - s.count
	case e.Since.After(c.started.Add(-c.cfg.Replay + time.Second)):
		want = e.Count
	default:
		check = false
	}
	for id := range s.got {
		if id <= e.OutboxID {
			n++
			delete(s.got, id)
		}
	}
	s.baseline, s.count, s.maxID = true, e.Count, e.OutboxID
	if check && n < want {
		c.log.Warn("changes lost between the relay and this region", "shard", e.Shard, "session", e.Session, "acknowledged", want, "received", n)
		return true
	}
	return false
}
