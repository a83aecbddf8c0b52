package router

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-dev/meridian/internal/problem"
)

// This file holds the cutover hold (DESIGN.md §8 step 5, docs/router.md "Cutover holds"): a
// write whose API node answers 503 tenant-fenced — the tenant's source shard is fenced for a
// move's cutover — is not answered but held until this router's map shows the tenant's write
// epoch above the one the write was sent with (the Cutover command pinned it elsewhere), then
// routed again and sent to the new home. Resending is safe for every method: the fence is read
// first in the write's own transaction, so a fenced write changed nothing. The hold is bounded
// per router (HoldPolicy.Max writes at once, each at most HoldPolicy.Time); beyond either the
// write is answered 503 tenant-fenced with Retry-After: 1.

// HoldPolicy bounds the cutover hold. The zero value is the default.
type HoldPolicy struct {
	// Max is how many writes this router holds at once; a fenced write beyond it is answered
	// at once. 0: 1000; negative: nothing is held (fenced answers are passed on as they came).
	Max int
	// Time is how long one write may be held in all (a write fenced again after its release is
	// held again within what is left of it). 0: 5 s.
	Time time.Duration
}

func (p HoldPolicy) withDefaults() HoldPolicy {
	if p.Max == 0 {
		p.Max = 1000
	}
	if p.Time <= 0 {
		p.Time = 5 * time.Second
	}
	return p
}

// holdResult is how a hold ended.
type holdResult string

const (
	holdReleased holdResult = "released" // the map moved on: route again and resend
	holdTimeout  holdResult = "timeout"  // held for HoldPolicy.Time: 503
	holdOverflow holdResult = "overflow" // HoldPolicy.Max writes already held: 503, not held
	holdGone     holdResult = "gone"     // the client went away: no answer
)

// maxProblemPeek bounds how much of a 503's body is read to see whether it is tenant-fenced:
// the API node's problem documents are a few hundred bytes.
const maxProblemPeek = 4 << 10

// heldWrite is one write's place in its record's queue: its ticket, taken when its first fenced
// answer arrived and kept until its resend is answered (or it gives up), so that writes of one
// record are resent in the order they were held, each only after the one before has its answer.
//
// The queue is the record's, not the tenant's: held writes were all in flight at once, so no
// order among them is owed to anyone (any order is linearizable), and the order that can matter
// — two writes of one record — is kept. One queue per tenant resent a cutover's few hundred held
// writes one round trip at a time, seconds in all, past the hold time (found by `bench
// -scenario moves`). A create (POST) names no record yet and queues behind nothing.
type heldWrite struct {
	tenant string
	// key is the queue: the tenant and the record's path; "" = none (a create).
	key string
	// turn is closed when the write is first in its tenant's queue.
	turn chan struct{}
	// first is when the write was first held; HoldPolicy.Time counts from it.
	first time.Time
	// queued: the write is in its tenant's queue (guarded by holds.mu).
	queued bool
}

// holds is a Server's hold state and its metrics.
type holds struct {
	pol HoldPolicy
	m   ShardMap

	mu sync.Mutex // guards the fields below
	// held is the number of writes waiting in a hold now (bounded by pol.Max).
	held int
	// queues are each record's writes with a ticket (by heldWrite.key), in the order their
	// fenced answers came; a record has an entry only while it has one.
	queues map[string][]*heldWrite
	// changed is closed and replaced whenever the watcher sees a newer map.
	changed chan struct{}
	// stopWatch stops the map watcher, which runs only while something is held.
	stopWatch context.CancelFunc

	gauge   prometheus.Gauge
	seconds prometheus.Histogram
	results map[holdResult]prometheus.Counter
}

func newHolds(reg prometheus.Registerer, pol HoldPolicy, m ShardMap) *holds {
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "meridian_router_held_writes",
		Help: "Writes held by this router now, waiting for a moved tenant's new home (cutover hold).",
	})
	seconds := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "meridian_router_hold_seconds", Help: "Time writes spent held during a tenant's cutover, per hold.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	results := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meridian_router_held_writes_total",
		Help: "Fenced writes by how their hold ended: released (resent to the new home), timeout and overflow (answered 503 tenant-fenced), gone (the client left).",
	}, []string{"result"})
	reg.MustRegister(gauge, seconds, results)
	h := &holds{pol: pol, m: m, queues: map[string][]*heldWrite{}, changed: make(chan struct{}),
		gauge: gauge, seconds: seconds, results: map[holdResult]prometheus.Counter{}}
	for _, r := range []holdResult{holdReleased, holdTimeout, holdOverflow, holdGone} {
		h.results[r] = results.WithLabelValues(string(r))
	}
	return h
}

// enabled reports whether fenced writes are held at all.
func (h *holds) enabled() bool { return h.pol.Max > 0 }

// hold holds w, sent on route sent and answered tenant-fenced, until the map moves the tenant
// on (released), w has been held for the policy's time in all (timeout), the client goes away
// (gone, ctx done), or at once when the router already holds its maximum (overflow). A released
// write keeps its ticket: the caller resends it and calls leave once the resend is answered. On
// every other result w has left its queue. w's ticket is taken on its first hold.
func (h *holds) hold(ctx context.Context, w *heldWrite, sent Route) holdResult {
	h.mu.Lock()
	if h.held >= h.pol.Max {
		h.mu.Unlock()
		h.leave(w)
		h.results[holdOverflow].Inc()
		return holdOverflow
	}
	if w.first.IsZero() {
		w.first = time.Now()
		w.turn = make(chan struct{})
		if w.key == "" {
			close(w.turn)
		} else {
			q := h.queues[w.key]
			if len(q) == 0 {
				close(w.turn)
			}
			h.queues[w.key] = append(q, w)
			w.queued = true
		}
	}
	h.held++
	if h.held == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		h.stopWatch = cancel
		go h.watch(ctx)
	}
	h.mu.Unlock()
	h.gauge.Inc()

	start := time.Now()
	res := h.wait(ctx, w, sent)

	h.mu.Lock()
	if h.held--; h.held == 0 {
		h.stopWatch()
	}
	h.mu.Unlock()
	h.gauge.Dec()
	h.seconds.Observe(time.Since(start).Seconds())
	h.results[res].Inc()
	if res != holdReleased {
		h.leave(w)
	}
	return res
}

// wait is the hold itself: first for the map to move the tenant on, then for w's turn.
func (h *holds) wait(ctx context.Context, w *heldWrite, sent Route) holdResult {
	timer := time.NewTimer(time.Until(w.first.Add(h.pol.Time)))
	defer timer.Stop()
	for {
		// The channel is taken before the map is read, so a change between the two is not
		// missed.
		h.mu.Lock()
		changed := h.changed
		h.mu.Unlock()
		if r, err := h.m.Lookup(w.tenant); err == nil && movedOn(sent, r) {
			break
		}
		select {
		case <-changed:
		case <-timer.C:
			return holdTimeout
		case <-ctx.Done():
			return holdGone
		}
	}
	select {
	case <-w.turn:
		return holdReleased
	case <-timer.C:
		return holdTimeout
	case <-ctx.Done():
		return holdGone
	}
}

// movedOn reports whether route now says a write sent on sent and fenced can be sent again:
// the tenant's write epoch went up (the Cutover command pinned it to the move's target), or a
// move going on when it was sent has ended without one (failed or cancelled: the source, no
// longer fenced, is the home again).
func movedOn(sent, now Route) bool {
	return now.Epoch > sent.Epoch || sent.Moving && !now.Moving
}

// leave takes w out of its record's queue (if it is in it) and gives the next write its turn.
func (h *holds) leave(w *heldWrite) {
	if w == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !w.queued {
		return
	}
	w.queued = false
	q := h.queues[w.key]
	for i, x := range q {
		if x != w {
			continue
		}
		q = append(q[:i], q[i+1:]...)
		if i == 0 && len(q) > 0 {
			close(q[0].turn)
		}
		break
	}
	if len(q) == 0 {
		delete(h.queues, w.key)
	} else {
		h.queues[w.key] = q
	}
}

// watch wakes the held writes whenever the map's version goes up, until ctx ends (nothing is
// held any more). One watcher serves every held write. Each round wakes them all once after
// reading the version it then waits past, so a change made before that read is not missed
// either. It waits with ShardMap.WaitVersion: NodeMap's polls the local copy every 5 ms (the
// shardmap node's change notification is not exported), so a release follows the new map
// within a poll.
func (h *holds) watch(ctx context.Context) {
	for {
		v := h.m.Version()
		h.mu.Lock()
		if ctx.Err() != nil { // stopped under mu: a newer watcher may own changed now
			h.mu.Unlock()
			return
		}
		close(h.changed)
		h.changed = make(chan struct{})
		h.mu.Unlock()
		if err := h.m.WaitVersion(ctx, v+1); err != nil {
			return // ctx ended
		}
	}
}

// isFenced reports whether resp, an API node's answer, is 503 tenant-fenced. It reads at most
// maxProblemPeek bytes of a 503's body and puts them back in front of the rest, so an answer
// that is not fenced is passed on whole.
func isFenced(resp *http.Response) bool {
	if resp.StatusCode != http.StatusServiceUnavailable {
		return false
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxProblemPeek+1))
	resp.Body = peekedBody{io.MultiReader(bytes.NewReader(b), resp.Body), resp.Body}
	if err != nil || len(b) > maxProblemPeek {
		return false
	}
	var p struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(b, &p) == nil && p.Type == problem.TenantFenced.Type()
}

// peekedBody is an answer's body whose first bytes were read ahead.
type peekedBody struct {
	io.Reader
	c io.Closer
}

func (b peekedBody) Close() error { return b.c.Close() }

// newHeldWrite is the ticket of a write of tenant: queued behind the held writes of the same
// record, or behind none for a create.
func newHeldWrite(tenant string, r *http.Request) *heldWrite {
	w := &heldWrite{tenant: tenant}
	if r.Method != http.MethodPost {
		w.key = tenant + " " + r.URL.Path
	}
	return w
}
