package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-dev/meridian/internal/localsrv"
	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/testenv"
)

const (
	testRegion = "us-east"
	testShard  = "us-east-1"
)

// memOutbox is an in-memory OutboxReader: what a test "commits" before (or instead of)
// publishing. It records every Changes call with the caller its context names.
type memOutbox struct {
	mu    sync.Mutex
	rows  map[string][]records.ChangeEvent // tenant → rows in seq order
	calls []outboxCall
	// hook and after, when set, run (without mu) at the start of the next Changes call and
	// after it read its rows, then are cleared.
	hook, after func()
}

type outboxCall struct {
	caller, tenant string
	after, upto    int64
}

type callerKey struct{}

// withCaller names the caller of the outbox reads made under ctx.
func withCaller(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, callerKey{}, who)
}

func newMemOutbox() *memOutbox { return &memOutbox{rows: map[string][]records.ChangeEvent{}} }

var _ OutboxReader = (*memOutbox)(nil)

func (o *memOutbox) commit(tenant string, e records.ChangeEvent) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rows[tenant] = append(o.rows[tenant], e)
}

func (o *memOutbox) Changes(ctx context.Context, tenant, shard string, after, upto int64) ([]records.ChangeEvent, error) {
	o.mu.Lock()
	hook, afterHook := o.hook, o.after
	o.hook, o.after = nil, nil
	o.mu.Unlock()
	if hook != nil {
		hook()
	}
	if afterHook != nil {
		defer afterHook()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	who, _ := ctx.Value(callerKey{}).(string)
	o.calls = append(o.calls, outboxCall{caller: who, tenant: tenant, after: after, upto: upto})
	var out []records.ChangeEvent
	for _, e := range o.rows[tenant] {
		if e.Seq > after && (upto == 0 || e.Seq <= upto) {
			out = append(out, e)
		}
	}
	return out, nil
}

func (o *memOutbox) ChangeSeq(ctx context.Context, t records.Target) (int64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var seq int64
	for _, e := range o.rows[t.Tenant] {
		seq = max(seq, e.Seq)
	}
	return seq, nil
}

func (o *memOutbox) callsOf(tenant string) []outboxCall {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []outboxCall
	for _, c := range o.calls {
		if c.tenant == tenant {
			out = append(out, c)
		}
	}
	return out
}

// recApplier records the Applier calls as words: "inv <tenant> <id>", "reset <tenant>", "reset-all".
type recApplier struct {
	mu    sync.Mutex
	calls []string
	// fail, when set, makes every call fail (Redis is down).
	fail bool
	// gate, when set, holds every Invalidate until it is closed.
	gate chan struct{}
}

func (a *recApplier) setFail(fail bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail = fail
}

// do records call, or fails.
func (a *recApplier) do(call string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail {
		return errors.New("redis down")
	}
	a.calls = append(a.calls, call)
	return nil
}

var _ Applier = (*recApplier)(nil)

func (a *recApplier) Invalidate(ctx context.Context, tenant, shard, collection, id string, lsn uint64) error {
	a.mu.Lock()
	gate := a.gate
	a.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return a.do("inv " + tenant + " " + id)
}

func (a *recApplier) ResetTenant(ctx context.Context, tenant string) error {
	return a.do("reset " + tenant)
}

func (a *recApplier) ResetAll(ctx context.Context) error {
	return a.do("reset-all")
}

func (a *recApplier) clear() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = nil
}

func (a *recApplier) snapshot() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

func (a *recApplier) count(call string) int {
	n := 0
	for _, c := range a.snapshot() {
		if c == call {
			n++
		}
	}
	return n
}

// waitCall waits until the applier has seen call.
func (a *recApplier) waitCall(t *testing.T, call string) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, func() error {
		if a.count(call) == 0 {
			return fmt.Errorf("no %q in %q", call, a.snapshot())
		}
		return nil
	})
}

// rig is a consumer on a real JetStream with an in-memory outbox and a recording applier.
type rig struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	c      *Consumer
	out    *memOutbox
	app    *recApplier
	reg    *prometheus.Registry
	cancel context.CancelFunc
}

// newRig connects to url, makes the streams and runs a consumer until the test ends.
func newRig(t *testing.T, url string, opts ...nats.Option) *rig {
	t.Helper()
	return newRigWith(t, url, StreamLimits{}, &recApplier{}, opts...)
}

func newRigWith(t *testing.T, url string, lim StreamLimits, app *recApplier, opts ...nats.Option) *rig {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := EnsureStreams(ctx, js, testRegion, []string{testRegion}, lim); err != nil {
		t.Fatal(err)
	}
	r := &rig{js: js, nc: nc, out: newMemOutbox(), app: app, reg: prometheus.NewPedanticRegistry()}
	r.c = NewConsumer(ConsumerConfig{
		Region: testRegion, JS: js, Apply: r.app, Outbox: r.out, Registerer: r.reg,
		StreamCheck: 200 * time.Millisecond,
		Logger:      testLogger(t),
	})
	runCtx, stop := context.WithCancel(context.Background())
	r.cancel = stop
	done := make(chan error, 1)
	go func() { done <- r.c.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
	// Every consumer resets the region's cache when it starts (nobody may have applied the
	// invalidations while it was away); the tests count what follows.
	r.app.waitCall(t, "reset-all")
	r.app.clear()
	return r
}

// change is tenant's change seq (record id n<seq>).
func change(tenant string, seq int64) Event {
	return Event{Kind: KindChange, Shard: testShard, Tenant: tenant, Seq: seq, OutboxID: seq, Collection: "notes",
		ID: fmt.Sprintf("n%d", seq), Op: "update", Version: seq, LSN: uint64(seq), AsOf: time.Now()}
}

func asChange(e Event) records.ChangeEvent {
	return records.ChangeEvent{Seq: e.Seq, OutboxID: e.OutboxID, Collection: e.Collection, ID: e.ID, Op: e.Op, Version: e.Version, At: e.AsOf}
}

// publish sends e on its shard's subject, retrying while the server is away. A change gets a
// message id unique per call, so a re-publish is not deduplicated by the server: repeats reach
// the consumer.
func (r *rig) publish(t *testing.T, e Event) {
	t.Helper()
	var opts []jetstream.PublishOpt
	if e.Kind == KindChange {
		opts = append(opts, jetstream.WithMsgID(fmt.Sprintf("%s:%d", MsgID(e.Shard, e.OutboxID), time.Now().UnixNano())))
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := r.js.Publish(ctx, Subject(testRegion, e.Shard), e.Marshal(), opts...)
		return err
	})
}

// commitPublish commits e to the outbox, then publishes it (the relay's order).
func (r *rig) commitPublish(t *testing.T, e Event) {
	t.Helper()
	r.out.commit(e.Tenant, asChange(e))
	r.publish(t, e)
}

func heartbeat(asOf time.Time) Event {
	return Event{Kind: KindHeartbeat, Shard: testShard, AsOf: asOf}
}

// waitFresh waits until Fresh(testShard) is asOf.
func (r *rig) waitFresh(t *testing.T, asOf time.Time) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, func() error {
		got, ok := r.c.Fresh(testShard)
		if !ok || !got.Equal(asOf) {
			return fmt.Errorf("Fresh = %v, %v; want %v", got, ok, asOf)
		}
		return nil
	})
}

// testLogger writes the consumer's logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestConsumerAppliesInOrderDropsDuplicatesAndTracksFreshness: changes are applied once each,
// in order, whatever JetStream repeats; heartbeats advance Fresh, which never goes back, and
// the lag metric is now minus the newest heartbeat.
func TestConsumerAppliesInOrderDropsDuplicatesAndTracksFreshness(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	if _, ok := r.c.Fresh(testShard); ok {
		t.Fatal("Fresh before any heartbeat")
	}
	for _, seq := range []int64{1, 2, 2, 1, 3, 3, 4} {
		r.publish(t, change("acme", seq))
	}
	r.publish(t, change("globex", 7)) // first seen at 7: nothing known before it, no gap
	r.app.waitCall(t, "inv globex n7")
	want := []string{"inv acme n1", "inv acme n2", "inv acme n3", "inv acme n4", "inv globex n7"}
	if got := r.app.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}

	t1 := time.Now().Add(-time.Hour).Truncate(time.Millisecond).UTC()
	r.publish(t, heartbeat(t1))
	r.waitFresh(t, t1)
	t2 := t1.Add(time.Second)
	r.publish(t, heartbeat(t2))
	r.waitFresh(t, t2)
	// An older heartbeat (a replay, a relay's failover) does not move freshness back; marked
	// by a change after it.
	r.publish(t, heartbeat(t1))
	r.publish(t, change("acme", 5))
	r.app.waitCall(t, "inv acme n5")
	if got, ok := r.c.Fresh(testShard); !ok || !got.Equal(t2) {
		t.Fatalf("Fresh = %v, %v after an older heartbeat; want %v", got, ok, t2)
	}
	// Without heartbeats freshness stays where it was, so the cache sees it age: an hour old
	// here, far past any max_staleness.
	if _, ok := r.c.Fresh("us-east-2"); ok {
		t.Fatal("Fresh of a shard that never sent a heartbeat")
	}
	lag := lagSeconds(t, r.reg)
	if lag < 3590 || lag > 3700 {
		t.Fatalf("meridian_events_lag_seconds = %v, want about 3599", lag)
	}
	if n := testutil.ToFloat64(r.c.m.gaps); n != 0 {
		t.Fatalf("gaps = %v, want 0", n)
	}
}

// lagSeconds reads meridian_events_lag_seconds{home_region="us-east"} from reg.
func lagSeconds(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "meridian_events_lag_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "home_region" && l.GetValue() == testRegion {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatal("no meridian_events_lag_seconds{home_region=us-east}")
	return 0
}

// TestConsumerGapFilledFromOutbox: change 3 reaches the outbox but never the consumer. When 4
// arrives the consumer resets the tenant's cache and reads 3 from the outbox for the
// followers, who get 1, 2, 3, 4 in order. A gap of a tenant nobody follows only resets it.
func TestConsumerGapFilledFromOutbox(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	ctx := withCaller(t.Context(), "feed")
	feed, err := r.c.Follow(ctx, records.Target{Tenant: "acme", Shard: testShard}, 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	r.commitPublish(t, change("acme", 1))
	r.commitPublish(t, change("acme", 2))
	r.out.commit("acme", asChange(change("acme", 3))) // lost between JetStream and the consumer
	r.commitPublish(t, change("acme", 4))

	r.commitPublish(t, change("globex", 1))
	r.out.commit("globex", asChange(change("globex", 2)))
	r.commitPublish(t, change("globex", 3))

	for want := int64(1); want <= 4; want++ {
		select {
		case e, ok := <-feed.C():
			if !ok {
				t.Fatalf("feed ended before seq %d: %v", want, feed.Err())
			}
			if e.Seq != want || e.ID != fmt.Sprintf("n%d", want) {
				t.Fatalf("feed event %+v, want seq %d", e, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no seq %d on the feed", want)
		}
	}
	r.app.waitCall(t, "inv globex n3")
	want := []string{"inv acme n1", "inv acme n2", "reset acme", "inv acme n4", "inv globex n1", "reset globex", "inv globex n3"}
	if got := r.app.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}
	// The consumer read the gap (not the feed on its own), once.
	var consumerReads []outboxCall
	for _, c := range r.out.callsOf("acme") {
		if c.caller != "feed" {
			consumerReads = append(consumerReads, c)
		}
	}
	if want := []outboxCall{{tenant: "acme", after: 2, upto: 3}}; !slices.Equal(consumerReads, want) {
		t.Fatalf("consumer's outbox reads %+v, want %+v", consumerReads, want)
	}
	if calls := r.out.callsOf("globex"); len(calls) != 0 {
		t.Fatalf("outbox read for a tenant without followers: %+v", calls)
	}
	if n := testutil.ToFloat64(r.c.m.gaps); n != 2 {
		t.Fatalf("gaps = %v, want 2", n)
	}
}

// TestConsumerStreamReset: the streams are deleted and re-created (their sequences start
// again at 1, below what the consumer read): the consumer resets the region's cache, forgets
// freshness, and goes on with the new stream's events.
func TestConsumerStreamReset(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	r.publish(t, change("acme", 1))
	r.publish(t, change("acme", 2))
	t1 := time.Now().Truncate(time.Millisecond).UTC()
	r.publish(t, heartbeat(t1))
	r.waitFresh(t, t1)
	if n := r.app.count("reset-all"); n != 0 {
		t.Fatalf("%d ResetAll before the reset", n)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, s := range []string{FanInStream(testRegion), OriginStream(testRegion)} {
		if err := r.js.DeleteStream(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// The server removes a deleted stream's store asynchronously: re-creating it at once can
	// fail.
	testenv.WaitFor(t, 30*time.Second, func() error {
		return EnsureStreams(ctx, r.js, testRegion, []string{testRegion}, StreamLimits{})
	})
	r.publish(t, change("acme", 3))
	r.app.waitCall(t, "inv acme n3")
	got := r.app.snapshot()
	reset := slices.Index(got, "reset-all")
	if reset < 0 || reset > slices.Index(got, "inv acme n3") {
		t.Fatalf("applied %q: want a reset-all before inv acme n3", got)
	}
	if _, ok := r.c.Fresh(testShard); ok {
		t.Fatal("Fresh after a ResetAll with no heartbeat since")
	}
	t2 := time.Now().Truncate(time.Millisecond).UTC()
	r.publish(t, heartbeat(t2))
	r.waitFresh(t, t2)
	r.publish(t, change("acme", 4))
	r.app.waitCall(t, "inv acme n4")
	if n := r.app.count("inv acme n3"); n != 1 {
		t.Fatalf("inv acme n3 applied %d times", n)
	}
}

// TestConsumerStreamSequenceJump: while the consumer is stuck, the fan-in stream is purged of
// messages it had not read (a limit or an operator would do the same); it resets the region's
// cache once (the replay reads across the jump again without looping) and goes on.
func TestConsumerStreamSequenceJump(t *testing.T) {
	gate := make(chan struct{})
	var release sync.Once
	open := func() { release.Do(func() { close(gate) }) }
	r := newRigWith(t, testenv.NATS(t).ClientURL(), StreamLimits{}, &recApplier{gate: gate})
	t.Cleanup(open) // before the rig's cleanup waits for Run, if the test fails early
	const n = 2000  // far more than the client buffers
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for seq := int64(1); seq <= n; seq++ {
		e := change("acme", seq)
		if _, err := r.js.PublishAsync(Subject(testRegion, testShard), e.Marshal()); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-r.js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	// The fan-in stream sources the origin stream asynchronously.
	st, err := r.js.Stream(ctx, FanInStream(testRegion))
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.LastSeq < n {
			return fmt.Errorf("fan-in stream holds up to %d of %d", info.State.LastSeq, n)
		}
		return nil
	})
	if err := st.Purge(ctx, jetstream.WithPurgeSequence(1500)); err != nil {
		t.Fatal(err)
	}
	r.app.mu.Lock()
	r.app.gate = nil
	r.app.mu.Unlock()
	open()
	r.app.waitCall(t, fmt.Sprintf("inv acme n%d", n))
	r.publish(t, change("acme", n+1))
	r.app.waitCall(t, fmt.Sprintf("inv acme n%d", n+1))
	if got := r.app.count("reset-all"); got != 1 {
		t.Fatalf("%d ResetAll, want 1", got)
	}
	if got := r.app.count("reset acme"); got != 1 {
		t.Fatalf("%d ResetTenant(acme), want 1 (the tenant's gap)", got)
	}
}

// TestConsumerNATSRestart: the server stops and starts again on the same port and store; the
// consumer reconnects, resets the region's cache and goes on.
func TestConsumerNATSRestart(t *testing.T) {
	dir := t.TempDir()
	port, err := localsrv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	opts := localsrv.NATSOptions{Dir: dir, Port: port}
	s, err := localsrv.StartNATS(opts)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		_ = localsrv.StopNATS(s)
	})
	r := newRig(t, s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	feed, err := r.c.Follow(t.Context(), records.Target{Tenant: "acme", Shard: testShard}, 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	r.commitPublish(t, change("acme", 1))
	r.app.waitCall(t, "inv acme n1")
	expect(t, feed, 1)

	mu.Lock()
	if err := localsrv.StopNATS(s); err != nil {
		mu.Unlock()
		t.Fatal(err)
	}
	s, err = localsrv.StartNATS(opts)
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	r.commitPublish(t, change("acme", 2))
	r.app.waitCall(t, "inv acme n2")
	// The replay after the reset invalidates 1 again (a fill after the reset may have read
	// a standby that had not replayed it), but the follower gets it once.
	want := []string{"inv acme n1", "reset-all", "inv acme n1", "inv acme n2"}
	if got := r.app.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}
	expect(t, feed, 2)
}

// TestConsumerApplierFailureTurnsCachingOff: while the cache cannot be updated, no shard is
// fresh (heartbeats do not count), and followers are fed meanwhile; once a ResetAll succeeds,
// heartbeats make shards fresh again.
func TestConsumerApplierFailureTurnsCachingOff(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	t1 := time.Now().Truncate(time.Millisecond).UTC()
	r.publish(t, heartbeat(t1))
	r.waitFresh(t, t1)
	feed, err := r.c.Follow(t.Context(), records.Target{Tenant: "acme", Shard: testShard}, 0, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	next := func(want int64) {
		t.Helper()
		select {
		case e := <-feed.C():
			if e.Seq != want {
				t.Fatalf("feed event %+v, want seq %d (err %v)", e, want, feed.Err())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no seq %d on the feed", want)
		}
	}

	r.app.setFail(true)
	r.commitPublish(t, change("acme", 1))
	r.publish(t, heartbeat(t1.Add(time.Second)))
	r.commitPublish(t, change("acme", 2))
	next(1)
	next(2) // the heartbeat before it has been handled
	if got, ok := r.c.Fresh(testShard); ok {
		t.Fatalf("Fresh = %v while the cache cannot be updated", got)
	}

	// The relay's heartbeats go on; once the repair's ResetAll succeeds, they count again.
	r.app.setFail(false)
	t3 := t1.Add(3 * time.Second)
	testenv.WaitFor(t, 30*time.Second, func() error {
		r.publish(t, heartbeat(t3))
		if got, ok := r.c.Fresh(testShard); !ok || !got.Equal(t3) {
			return fmt.Errorf("Fresh = %v, %v; want %v", got, ok, t3)
		}
		return nil
	})
	// The changes not invalidated meanwhile are, by the replay after the ResetAll.
	want := []string{"reset-all", "inv acme n1", "inv acme n2"}
	if got := r.app.snapshot(); !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}
}

// TestConsumerLostChanges: JetStream may lose changes it acknowledged (a crash without fsync)
// with nothing after them to show a per-tenant gap. A heartbeat that counts more changes of its
// session than the consumer received resets the region's cache; one that matches does not.
func TestConsumerLostChanges(t *testing.T) {
	r := newRig(t, testenv.NATS(t).ClientURL())
	sess := func(e Event, s string) Event { e.Session = s; return e }
	hbOf := func(s string, since time.Time, count, maxID int64) Event {
		e := heartbeat(time.Now())
		e.Session, e.Since, e.Count, e.OutboxID = s, since, count, maxID
		return e
	}
	lost := func() float64 { return testutil.ToFloat64(r.c.m.lost) }

	// A session that began while the consumer ran: checked from its first change.
	r.publish(t, sess(change("acme", 1), "s1"))
	r.publish(t, sess(change("acme", 2), "s1"))
	h := hbOf("s1", time.Now(), 2, 2)
	r.publish(t, h)
	r.waitFresh(t, h.AsOf)
	if n := r.app.count("reset-all"); n != 0 || lost() != 0 {
		t.Fatalf("all changes received: %d ResetAll, lost %v", n, lost())
	}
	// Change 3 (outbox id 3) acknowledged to the relay but lost: only 4 arrives.
	r.publish(t, sess(change("globex", 4), "s1"))
	r.publish(t, hbOf("s1", time.Now(), 4, 4))
	r.app.waitCall(t, "reset-all")
	if lost() != 1 {
		t.Fatalf("lost_total = %v, want 1", lost())
	}

	// A session that began before the consumer's replay window: its first heartbeat is the
	// baseline, and the changes after it are checked.
	r.app.clear()
	old := time.Now().Add(-time.Hour)
	r.publish(t, hbOf("s2", old, 100, 100))
	c5 := sess(change("acme", 5), "s2")
	c5.OutboxID = 101
	r.publish(t, c5)
	r.publish(t, hbOf("s2", old, 101, 101))
	h = hbOf("s2", old, 101, 101)
	r.publish(t, h) // a repeat: already checked
	r.waitFresh(t, h.AsOf)
	if n := r.app.count("reset-all"); n != 0 || lost() != 1 {
		t.Fatalf("baseline session: %d ResetAll, lost %v", n, lost())
	}
	r.publish(t, hbOf("s2", old, 103, 103)) // two more acknowledged, none received
	r.app.waitCall(t, "reset-all")
	if lost() != 2 {
		t.Fatalf("lost_total = %v, want 2", lost())
	}
}
