package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// changesReader is one `/v1/changes` reader: one tenant, through one region's router, from
// the beginning (Last-Event-ID: 0), reconnecting with the Last-Event-ID of the newest event
// it recorded after every clean end of a stream and every error, for as long as its context
// lives. Its whole life becomes one history.Changes op (FinishChanges).
type changesReader struct {
	w      *Workload
	p      int
	region string
	t      Tenant
	url    string
	rng    *rand.Rand
	invoke time.Duration
	done   chan struct{}

	// mu guards the fields below.
	mu     sync.Mutex
	events []history.Event
	got    map[evKey]bool
	last   int64 // the highest sequence recorded: what a reconnect resumes after
	// The last connection attempt: its status (0: no answer), problem slug and error.
	status  int
	problem string
	err     string
	// served says the last attempt was answered 200 with an event stream.
	served                                bool
	connects, ends, malformed, heartbeats int
	// firstMalformed describes the first event that broke DESIGN.md §4.
	firstMalformed string
}

// evKey names a write as an event does.
type evKey struct {
	coll, rec string
	version   int64
}

// changeData is the `data:` JSON of a change event (DESIGN.md §4).
type changeData struct {
	Collection string `json:"collection"`
	ID         string `json:"id"`
	Op         string `json:"op"`
	Version    *int64 `json:"version"`
}

// parseChange turns a dispatched SSE event into a history event; ok false means the event
// breaks DESIGN.md §4 (an `id:` that is no positive integer, data that is no change).
func parseChange(ev sseEvent) (history.Event, bool) {
	if !ev.HasID || ev.Data == "" {
		return history.Event{}, false
	}
	seq, err := strconv.ParseInt(ev.ID, 10, 64)
	if err != nil || seq < 1 {
		return history.Event{}, false
	}
	var d changeData
	if err := json.Unmarshal([]byte(ev.Data), &d); err != nil || d.Collection == "" || d.ID == "" || d.Version == nil || *d.Version < 0 {
		return history.Event{}, false
	}
	return history.Event{Seq: seq, Coll: d.Collection, Rec: d.ID, Op: d.Op, Version: *d.Version}, true
}

// run reads until ctx ends.
func (r *changesReader) run(ctx context.Context) {
	defer close(r.done)
	for ctx.Err() == nil {
		clean := r.connect(ctx)
		pause := time.Duration(100+r.rng.IntN(200)) * time.Millisecond
		if clean {
			pause = 10 * time.Millisecond // a clean end: resume at once (a slow reader's close)
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
}

// connect makes one connection and records its events until the stream ends; true for a
// clean end of a 200 stream.
func (r *changesReader) connect(ctx context.Context) (clean bool) {
	r.mu.Lock()
	after := r.last
	r.connects++
	r.mu.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Nothing read (no headers, no line) for Idle: the connection is taken for dead (a
	// partition can leave one silent) and a new one is made.
	idle := time.AfterFunc(r.w.cfg.ChangesIdle, cancel)
	defer idle.Stop()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, r.url, nil)
	if err != nil {
		r.attempt(ctx, 0, "", err)
		return false
	}
	req.Header.Set("Authorization", "Bearer "+r.t.token)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatInt(after, 10))
	resp, err := r.w.stream.Do(req)
	if err != nil {
		r.attempt(ctx, 0, "", err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var p struct {
			Type string `json:"type"`
		}
		problem := ""
		if json.Unmarshal(b, &p) == nil && p.Type != "" {
			problem = path.Base(p.Type)
		}
		r.attempt(ctx, resp.StatusCode, problem, fmt.Errorf("%s", resp.Status))
		return false
	}
	r.attempt(ctx, http.StatusOK, "", nil)
	sse := newSSEReader(resp.Body)
	sse.Line = func() { idle.Reset(r.w.cfg.ChangesIdle) }
	for {
		ev, err := sse.Next()
		if err != nil {
			r.mu.Lock()
			r.heartbeats += sse.Comments
			if errors.Is(err, io.EOF) {
				r.ends++
			} else if ctx.Err() == nil {
				r.err = err.Error()
			}
			r.mu.Unlock()
			return errors.Is(err, io.EOF)
		}
		e, ok := parseChange(ev)
		r.mu.Lock()
		if !ok {
			// Not recorded: the checker sees the sequence it should have had as a gap.
			r.malformed++
			if r.malformed == 1 {
				r.firstMalformed = fmt.Sprintf("id %q data %q", ev.ID, ev.Data)
			}
		} else {
			r.events = append(r.events, e)
			r.got[evKey{e.Coll, e.Rec, e.Version}] = true
			r.last = max(r.last, e.Seq)
		}
		r.mu.Unlock()
	}
}

// attempt records how a connection attempt was answered (not once the reader was stopped:
// that cut is the workload's own).
func (r *changesReader) attempt(ctx context.Context, status int, problem string, err error) {
	if ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status, r.problem, r.served = status, problem, status == http.StatusOK
	r.err = ""
	if err != nil {
		r.err = err.Error()
	}
}

// missing counts the writes of want the reader has not received.
func (r *changesReader) missing(want map[evKey]bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k := range want {
		if !r.got[k] {
			n++
		}
	}
	return n
}

// op is the reader's life as one Changes op, completed now and due at due. It is ok when the
// reader caught up, or when its last connection was a 200 event stream (the feed served it:
// whatever is missing is the checker's finding); otherwise its outcome is that of its last
// attempt (history.Classify: no answer or a 503 changes-unavailable is unknown, a 404 is
// fail), so a feed that is not there is recorded, never skipped.
func (r *changesReader) op(id int64, due, now time.Duration, caughtUp bool) history.Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := history.Op{ID: id, Process: r.p, Region: r.region, Tenant: r.t.ID, Kind: history.Changes,
		Invoke: r.invoke, Complete: now, Due: due, Events: append([]history.Event(nil), r.events...)}
	switch {
	case caughtUp || r.served:
		o.Outcome, o.Status = history.OK, http.StatusOK
	default:
		o.Status, o.Problem = r.status, r.problem
		o.Outcome = history.Classify(r.status, r.problem)
		if o.Outcome == history.OK {
			o.Outcome = history.Unknown // a 2xx that was no 200 stream
		}
	}
	o.Error = r.err
	if r.malformed > 0 {
		o.Error = fmt.Sprintf("%d malformed event(s), the first %s; last error: %s", r.malformed, r.firstMalformed, r.err)
	}
	return o
}

// ChangesStats is what FinishChanges saw.
type ChangesStats struct {
	// Readers ran; CaughtUp of them received every acknowledged write of their tenant.
	Readers, CaughtUp int
	// Events received in all, connections made, streams that ended cleanly, heartbeats.
	Events, Connects, CleanEnds, Heartbeats int
}

// StartChanges starts the `/v1/changes` readers: for each of the first ChangesTenants
// tenants (one homed in each region before a second of any), one reader per region through
// that region's router, from the beginning. Call it after Setup and before Run; they read
// until FinishChanges.
func (w *Workload) StartChanges(ctx context.Context) {
	if w.cfg.ChangesTenants <= 0 || len(w.readers) > 0 {
		return
	}
	// Tenants are set up region by region; take the i-th of every region before the i+1-th.
	var order []Tenant
	for i := range w.cfg.TenantsPerRegion {
		for j := range w.regions {
			if k := j*w.cfg.TenantsPerRegion + i; k < len(w.tenants) {
				order = append(order, w.tenants[k])
			}
		}
	}
	if len(order) > w.cfg.ChangesTenants {
		order = order[:w.cfg.ChangesTenants]
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.stopReaders = cancel
	p := len(w.regions)*w.cfg.ProcsPerRegion + len(w.tenants)
	for _, t := range order {
		for _, region := range w.regions {
			p++
			r := &changesReader{w: w, p: p, region: region, t: t,
				url: w.cfg.Cluster.Regions[region].Router + "/v1/changes",
				rng: rand.New(rand.NewPCG(uint64(w.cfg.Seed), uint64(p))), invoke: w.cfg.Clock.Now(),
				done: make(chan struct{}), got: make(map[evKey]bool)}
			w.readers = append(w.readers, r)
			go r.run(rctx)
		}
	}
}

// FinishChanges ends the readers once the run is over and the cluster healed: from now (each
// reader's due time) it waits until every reader has received every write of its tenant
// acknowledged so far, or patience has passed, then stops them and records one Changes op per
// reader.
func (w *Workload) FinishChanges(ctx context.Context, patience time.Duration) ChangesStats {
	if len(w.readers) == 0 {
		return ChangesStats{}
	}
	due := w.cfg.Clock.Now()
	want := map[string]map[evKey]bool{}
	for _, o := range w.cfg.Recorder.Ops() {
		if o.Outcome == history.OK && (o.Kind == history.Write || o.Kind == history.Create) && o.Rec != "" {
			if want[o.Tenant] == nil {
				want[o.Tenant] = map[evKey]bool{}
			}
			want[o.Tenant][evKey{o.Coll, o.Rec, o.Version}] = true
		}
	}
	deadline := time.Now().Add(patience)
	caught := make([]bool, len(w.readers))
	for {
		all := true
		for i, r := range w.readers {
			caught[i] = caught[i] || r.missing(want[r.t.ID]) == 0
			all = all && caught[i]
		}
		if all || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.stopReaders()
	now := w.cfg.Clock.Now()
	var st ChangesStats
	for i, r := range w.readers {
		<-r.done
		o := r.op(w.cfg.Recorder.ID(), due, now, caught[i])
		w.cfg.Recorder.Add(o)
		st.Readers++
		if caught[i] {
			st.CaughtUp++
		}
		r.mu.Lock()
		st.Events += len(r.events)
		st.Connects += r.connects
		st.CleanEnds += r.ends
		st.Heartbeats += r.heartbeats
		r.mu.Unlock()
	}
	w.readers = nil
	return st
}
