// Package workload is the fault suite's client side (issue 15): many tenants at once, through
// the router of every region of a running cluster, doing what a history can be judged on —
// per-key registers (unconditional PUTs, compare-and-sets with If-Match, strong reads), sets
// (POST creates with an Idempotency-Key, retried with the same key after an unknown outcome),
// plain reads (some of them repeated reads of hot keys; one answered `X-Read-Source: cache` is
// recorded as a CachedRead), token reads (the Consistency-Token of an earlier write), and, at
// the end, a strong read of every set. Every request becomes one history.Op with its invocation
// and completion on one monotonic clock and its outcome (history.Classify), recorded as it
// completes; an acknowledged write also gets the time its cache invalidation is due (Op.Due,
// InvalidationBound after the acknowledgement). Alongside, `/v1/changes` readers
// (StartChanges, FinishChanges) follow some tenants through every region's router for the
// whole run, resuming with Last-Event-ID, and each becomes one Changes op at the end.
//
// It owns making requests and recording them. It must never judge a history
// (internal/faults/check does), inject a fault (internal/faults/nemesis does) or talk to
// anything but the loopback cluster it is given; every loop is bounded by a duration and an
// operation count. Tests should run it against a real cluster (internal/sim).
package workload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
	"github.com/meridian-dev/meridian/internal/sim"
)

// The collections the workload uses in every tenant.
const (
	// RegColl holds the registers ("r<period>-<j>").
	RegColl = "regs"
	// SetColl holds the set elements the creates add.
	SetColl = "items"
)

// Defaults of Config.
const (
	DefaultTenantsPerRegion = 2
	DefaultProcsPerRegion   = 3
	DefaultKeysPerTenant    = 3
	DefaultKeyPeriod        = 15 * time.Second
	DefaultMaxOps           = 1_000_000
	DefaultRequestTimeout   = 10 * time.Second
	DefaultCreateRetries    = 3
	// DefaultInvalidationBound is how long after a write's acknowledgement its cache
	// invalidation is due in every region (Op.Due, judged by check.CachedReads).
	DefaultInvalidationBound = time.Second
	// DefaultChangesTenants tenants get `/v1/changes` readers, one per region each.
	DefaultChangesTenants = 2
	// DefaultChangesIdle is how long a `/v1/changes` connection may stay silent (no event,
	// no heartbeat comment) before the reader takes it for dead and reconnects: more than the
	// API's 15 s heartbeat.
	DefaultChangesIdle = 20 * time.Second
	// HotTenants is how many tenants the hot-key reads pick from.
	HotTenants = 2
	// HotRepeats is how many times in a row a hot-key read reads its key.
	HotRepeats = 3
)

// Config parameterises a workload. Zero values take the defaults above.
type Config struct {
	// Cluster is the running cluster's file (routers, secrets). Required.
	Cluster *sim.ClusterFile
	// RunID makes this run's tenant ids unique, so a reused cluster holds no earlier data
	// under them. Required: [a-z0-9-], a few characters.
	RunID string
	// Seed seeds every random choice (each process draws from its own stream of it).
	Seed int64
	// TenantsPerRegion tenants are created homed in each region.
	TenantsPerRegion int
	// ProcsPerRegion sequential clients send through each region's router.
	ProcsPerRegion int
	// KeysPerTenant registers are in use per tenant at a time; KeyPeriod is how long a
	// register is in use before the clients move to fresh ones (it bounds the history per
	// register, which keeps the linearizability check tractable).
	KeysPerTenant int
	KeyPeriod     time.Duration
	// MaxOps bounds the operations of Run (the final reads come on top).
	MaxOps int
	// RequestTimeout bounds one request; a request without an answer by then is Unknown.
	RequestTimeout time.Duration
	// CreateRetries is how often a create of unknown outcome is retried with its key.
	CreateRetries int
	// InvalidationBound is how long after its acknowledgement a write's cache invalidation
	// is due in every region: an acknowledged write's Op.Due is its completion plus this, and
	// a read answered `X-Read-Source: cache` (a CachedRead) that was invoked after it must
	// not return an older version.
	InvalidationBound time.Duration
	// ChangesTenants is how many tenants get `/v1/changes` readers (one per region each,
	// started by StartChanges); negative means none.
	ChangesTenants int
	// ChangesIdle is how long a changes connection may be silent before a reconnect.
	ChangesIdle time.Duration
	// Clock and Recorder are where operations go. Required.
	Clock    Clock
	Recorder *Recorder
}

// Tenant is one tenant of the workload and its home region.
type Tenant struct {
	ID, Home string
	token    string
}

// Workload is a configured workload: Setup once, then Run, then FinalReads.
type Workload struct {
	cfg     Config
	regions []string
	tenants []Tenant
	client  *http.Client
	stream  *http.Client
	ops     atomic.Int64
	// readers are the `/v1/changes` readers StartChanges started; stopReaders stops them.
	readers     []*changesReader
	stopReaders context.CancelFunc
}

// New checks cfg and fills in the defaults.
func New(cfg Config) (*Workload, error) {
	if cfg.Cluster == nil || cfg.Recorder == nil || cfg.RunID == "" {
		return nil, errors.New("workload: Config.Cluster, RunID and Recorder are required")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.TenantsPerRegion, DefaultTenantsPerRegion)
	def(&cfg.ProcsPerRegion, DefaultProcsPerRegion)
	def(&cfg.KeysPerTenant, DefaultKeysPerTenant)
	def(&cfg.MaxOps, DefaultMaxOps)
	def(&cfg.CreateRetries, DefaultCreateRetries)
	if cfg.KeyPeriod <= 0 {
		cfg.KeyPeriod = DefaultKeyPeriod
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.InvalidationBound <= 0 {
		cfg.InvalidationBound = DefaultInvalidationBound
	}
	if cfg.ChangesTenants == 0 {
		cfg.ChangesTenants = DefaultChangesTenants
	}
	if cfg.ChangesIdle <= 0 {
		cfg.ChangesIdle = DefaultChangesIdle
	}
	w := &Workload{cfg: cfg}
	for r := range cfg.Cluster.Regions {
		w.regions = append(w.regions, r)
	}
	slices.Sort(w.regions)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	w.client = &http.Client{Transport: tr, Timeout: cfg.RequestTimeout}
	// Streams have no overall timeout (a reader's idle timer stands in for one) and their own
	// connections.
	w.stream = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	return w, nil
}

// Tenants are the workload's tenants (after Setup).
func (w *Workload) Tenants() []Tenant { return w.tenants }

// Setup creates the tenants (TenantsPerRegion homed in each region, through the admin API)
// and waits until every region's router knows each of them.
func (w *Workload) Setup(ctx context.Context) error {
	f := w.cfg.Cluster
	for _, home := range w.regions {
		for i := range w.cfg.TenantsPerRegion {
			id := fmt.Sprintf("f%s-%s-%d", w.cfg.RunID, home, i)
			tok, err := sim.MintToken(f.DevJWTSecret, sim.TokenSpec{Subject: "faults", Tenant: id, TTL: 24 * time.Hour})
			if err != nil {
				return err
			}
			body := fmt.Sprintf(`{"id":%q,"region":%q}`, id, home)
			if err := retry(ctx, time.Minute, func() error {
				a := w.do(ctx, http.MethodPost, f.Regions[home].Router+"/admin/v1/tenants", f.AdminToken, []byte(body), nil)
				if a.err == nil && (a.status == http.StatusCreated || a.status == http.StatusConflict) {
					return nil
				}
				return fmt.Errorf("create tenant %s: %d %s %v", id, a.status, a.problem, a.err)
			}); err != nil {
				return err
			}
			w.tenants = append(w.tenants, Tenant{ID: id, Home: home, token: tok})
		}
	}
	// Visible on every router: a read of a missing record is "record not found", not
	// "tenant not found".
	for _, t := range w.tenants {
		for _, r := range w.regions {
			url := w.recordURL(-1, r, RegColl, "probe")
			if err := retry(ctx, time.Minute, func() error {
				a := w.do(ctx, http.MethodGet, url, t.token, nil, map[string]string{"Prefer": "consistency=strong"})
				if a.err == nil && a.status == http.StatusNotFound && a.problem == "record-not-found" {
					return nil
				}
				return fmt.Errorf("tenant %s via %s: %d %s %v", t.ID, r, a.status, a.problem, a.err)
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Run runs the clients until d has passed, ctx ends or MaxOps operations were made.
func (w *Workload) Run(ctx context.Context, d time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	p := 0
	for _, r := range w.regions {
		for range w.cfg.ProcsPerRegion {
			p++
			wg.Add(1)
			go func(p int, region string) {
				defer wg.Done()
				w.process(ctx, p, region)
			}(p, r)
		}
	}
	wg.Wait()
}

// lastWrite is what a process remembers of its last ok write to a tenant: the op, and the
// Consistency-Token it answered.
type lastWrite struct {
	op    history.Op
	token string
}

// process is one sequential client sending through region's router.
func (w *Workload) process(ctx context.Context, p int, region string) {
	rng := rand.New(rand.NewPCG(uint64(w.cfg.Seed), uint64(p)))
	versions := map[string]int64{} // tenant/key → last version this process saw
	last := map[string]lastWrite{} // tenant → last ok write with its token
	// Requests run to their own timeout even when the run ends, so the end of a run cuts no
	// request off (a cut write would be one more unknown outcome); ctx only stops the loop.
	run := ctx
	ctx = context.WithoutCancel(ctx)
	n := 0
	var pause, writesFrom time.Duration
	for run.Err() == nil && w.ops.Add(1) <= int64(w.cfg.MaxOps) {
		n++
		t := w.tenants[rng.IntN(len(w.tenants))]
		rec := fmt.Sprintf("r%d-%d", w.cfg.Clock.Now()/w.cfg.KeyPeriod, rng.IntN(w.cfg.KeysPerTenant))
		vk := t.ID + "/" + rec
		if pause > 0 {
			select {
			case <-run.Done():
			case <-time.After(pause):
			}
		}
		x := rng.IntN(100)
		if w.cfg.Clock.Now() < writesFrom && (x < 37 || x >= 85) {
			// No writes for a while after an unknown one: read instead (strong, plain or
			// token, in their usual proportions).
			x = 37 + rng.IntN(48)
		}
		var o history.Op
		switch {
		case x < 22:
			var tok string
			o, tok = w.write(ctx, p, region, t, rec, fmt.Sprintf("p%d-%d", p, n), 0)
			w.noteWrite(o, tok, versions, last)
		case x < 37:
			v, ok := versions[vk]
			if !ok {
				o = w.read(ctx, p, region, t, rec, history.StrongRead, nil)
				if o.Outcome == history.OK {
					versions[vk] = o.Version
				}
				break
			}
			// A version 0 (no such record) makes this an unconditional write: If-Match
			// needs a record.
			var tok string
			o, tok = w.write(ctx, p, region, t, rec, fmt.Sprintf("p%d-%d", p, n), v)
			if o.Outcome == history.Fail && o.Status == http.StatusPreconditionFailed {
				delete(versions, vk)
			}
			w.noteWrite(o, tok, versions, last)
		case x < 57:
			o = w.read(ctx, p, region, t, rec, history.StrongRead, nil)
			if o.Outcome == history.OK {
				versions[vk] = o.Version
			}
		case x < 72 && rng.IntN(2) == 0:
			o = w.read(ctx, p, region, t, rec, history.PlainRead, nil)
		case x < 72:
			// A hot key read several times in a row through this region, so a cache has
			// something to answer: the first register of one of the first tenants.
			ht := w.tenants[rng.IntN(min(HotTenants, len(w.tenants)))]
			hot := fmt.Sprintf("r%d-0", w.cfg.Clock.Now()/w.cfg.KeyPeriod)
			for i := range HotRepeats {
				if i > 0 && (run.Err() != nil || w.ops.Add(1) > int64(w.cfg.MaxOps)) {
					break
				}
				o = w.read(ctx, p, region, ht, hot, history.PlainRead, nil)
				if o.Outcome != history.OK {
					break
				}
			}
		case x < 85:
			lw, ok := last[t.ID]
			if !ok {
				o = w.read(ctx, p, region, t, rec, history.PlainRead, nil)
				break
			}
			o = w.read(ctx, p, region, t, lw.op.Rec, history.TokenRead, &lw)
		default:
			o = w.create(ctx, p, region, t, fmt.Sprintf("e%d-%d", p, n), rng)
		}
		pause = backoff(o, rng)
		if o.Outcome == history.Unknown && (o.Kind == history.Write || o.Kind == history.Create) {
			writesFrom = w.cfg.Clock.Now() + time.Duration(500+rng.IntN(1000))*time.Millisecond
		}
	}
}

// backoff is how long a client waits after o: nothing after a good answer (a 412 is one to a
// compare-and-set), a little after anything else (a router down, a region cut off) instead of
// spinning on refused connections. After an unknown write or create the process also makes
// only reads for 0.5–1.5 s (see process), as a client that cannot tell what happened would:
// every unknown write stays a candidate for every later point of its register's history, so
// many of them make the linearizability check exponential, while the reads keep testing
// staleness where writes fail (a cut-off region).
func backoff(o history.Op, rng *rand.Rand) time.Duration {
	if o.Outcome == history.OK || o.Status == http.StatusPreconditionFailed {
		return 0
	}
	return time.Duration(50+rng.IntN(150)) * time.Millisecond
}

func (w *Workload) noteWrite(o history.Op, token string, versions map[string]int64, last map[string]lastWrite) {
	vk := o.Tenant + "/" + o.Rec
	if o.Outcome != history.OK {
		delete(versions, vk) // unknown: the version is no longer known
		return
	}
	versions[vk] = o.Version
	if token != "" {
		last[o.Tenant] = lastWrite{op: o, token: token}
	}
}

// due is when an acknowledged write's cache invalidation is due in every region: its
// acknowledgement (the op's completion) plus InvalidationBound. check.CachedReads holds every
// CachedRead invoked after it to the write's version or a later one.
func (w *Workload) due(o history.Op) time.Duration { return o.Complete + w.cfg.InvalidationBound }

// recordURL is a record's URL through region's router, as process p reaches it: a process
// with an odd number through the router's event-loop listener when the cluster has one
// (router_loop_listen), every other through its HTTP port (p < 0 too). The suite serves that
// port by net/http alone (router_front: http), so that the checkers judge both fronts.
func (w *Workload) recordURL(p int, region, coll, rec string) string {
	ep := w.cfg.Cluster.Regions[region]
	base := ep.Router
	if p >= 0 && p%2 == 1 && ep.RouterLoop != "" {
		base = ep.RouterLoop
	}
	return base + "/v1/collections/" + coll + "/records/" + rec
}

// record is the part of a record body the workload reads.
type record struct {
	ID      string `json:"id"`
	Version int64  `json:"version"`
	Data    struct {
		V string `json:"v"`
	} `json:"data"`
}

// write PUTs value to rec, as a compare-and-set from ifMatch when it is above 0, and returns
// the op and the Consistency-Token of an ok answer.
func (w *Workload) write(ctx context.Context, p int, region string, t Tenant, rec, value string, ifMatch int64) (history.Op, string) {
	o := w.begin(p, region, t, history.Write, RegColl, rec)
	o.Value, o.IfMatch = value, ifMatch
	hdr := map[string]string{}
	if ifMatch > 0 {
		hdr["If-Match"] = strconv.Quote(strconv.FormatInt(ifMatch, 10))
	}
	body, _ := json.Marshal(map[string]any{"data": map[string]string{"v": value}})
	a := w.do(ctx, http.MethodPut, w.recordURL(p, region, RegColl, rec), t.token, body, hdr)
	w.finish(&o, a)
	token := ""
	if o.Outcome == history.OK {
		var r record
		if err := json.Unmarshal(a.body, &r); err != nil || r.Version < 1 {
			// An ok answer without its version is no evidence of anything: unknown.
			o.Outcome, o.Error = history.Unknown, fmt.Sprintf("undecodable ok answer: %v", err)
		} else {
			o.Version = r.Version
			o.Due = w.due(o)
			token = a.header.Get("Consistency-Token")
		}
	}
	w.cfg.Recorder.Add(o)
	return o, token
}

// read GETs rec as kind (a strong read with Prefer, a token read with lw's token).
func (w *Workload) read(ctx context.Context, p int, region string, t Tenant, rec string, kind history.Kind, lw *lastWrite) history.Op {
	o := w.begin(p, region, t, kind, RegColl, rec)
	hdr := map[string]string{}
	switch kind {
	case history.StrongRead:
		hdr["Prefer"] = "consistency=strong"
	case history.TokenRead:
		hdr["Consistency-Token"] = lw.token
		o.TokenOf = lw.op.ID
	}
	a := w.do(ctx, http.MethodGet, w.recordURL(p, region, RegColl, rec), t.token, nil, hdr)
	w.finish(&o, a)
	if kind == history.PlainRead && a.err == nil && a.header.Get("X-Read-Source") == "cache" {
		// Answered by a cache: judged against the writes' invalidation due times instead
		// of the staleness bound.
		o.Kind = history.CachedRead
	}
	switch {
	case a.err == nil && a.status == http.StatusNotFound && a.problem == "record-not-found":
		o.Outcome = history.OK // the answer "no such record": version 0
	case o.Outcome == history.OK:
		var r record
		if err := json.Unmarshal(a.body, &r); err != nil || r.Version < 1 {
			o.Outcome, o.Error = history.Unknown, fmt.Sprintf("undecodable ok answer: %v", err)
		} else {
			o.Value, o.Version = r.Data.V, r.Version
		}
	}
	w.cfg.Recorder.Add(o)
	return o
}

// create POSTs element to the set with a fresh Idempotency-Key, and retries an unknown
// outcome with the same key (each attempt is its own op) up to CreateRetries times. It
// returns the last attempt.
func (w *Workload) create(ctx context.Context, p int, region string, t Tenant, element string, rng *rand.Rand) history.Op {
	key := "ik-" + w.cfg.RunID + "-" + element
	body, _ := json.Marshal(map[string]any{"data": map[string]string{"v": element}})
	url := w.cfg.Cluster.Regions[region].Router + "/v1/collections/" + SetColl + "/records"
	for attempt := 0; attempt <= w.cfg.CreateRetries; attempt++ {
		o := w.begin(p, region, t, history.Create, SetColl, "")
		o.Value, o.IdemKey = element, key
		a := w.do(ctx, http.MethodPost, url, t.token, body, map[string]string{"Idempotency-Key": key})
		w.finish(&o, a)
		if o.Outcome == history.OK {
			var r record
			if err := json.Unmarshal(a.body, &r); err != nil || r.ID == "" || r.Version < 1 {
				o.Outcome, o.Error = history.Unknown, fmt.Sprintf("undecodable ok answer: %v", err)
			} else {
				o.Rec, o.Version = r.ID, r.Version
				o.Due = w.due(o)
			}
		}
		w.cfg.Recorder.Add(o)
		if o.Outcome != history.Unknown || attempt == w.cfg.CreateRetries {
			return o
		}
		// A client retrying an unknown outcome, after a short pause. ctx is not the run's
		// (process passes one without its cancel), so the retries happen even at its end.
		pause := time.Duration(100+rng.IntN(400)) * time.Millisecond
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return o
		}
	}
	panic("unreachable")
}

// FinalReads reads every tenant's set with `Prefer: consistency=strong`, page by page
// (through each tenant's home router), retrying a failed read for up to patience. Each
// complete read is one SetRead op.
func (w *Workload) FinalReads(ctx context.Context, patience time.Duration) error {
	var errs []error
	for i, t := range w.tenants {
		if err := retry(ctx, patience, func() error { return w.setRead(ctx, i, t) }); err != nil {
			errs = append(errs, fmt.Errorf("final read of %s: %w", t.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (w *Workload) setRead(ctx context.Context, i int, t Tenant) error {
	// Process numbers past the clients' own.
	p := len(w.regions)*w.cfg.ProcsPerRegion + 1 + i
	o := w.begin(p, t.Home, t, history.SetRead, SetColl, "")
	base := w.cfg.Cluster.Regions[t.Home].Router + "/v1/collections/" + SetColl + "/records?limit=200"
	url := base
	var els []history.Element
	for pages := 0; ; pages++ {
		if pages > 10_000 {
			return errors.New("more than 10000 pages")
		}
		a := w.do(ctx, http.MethodGet, url, t.token, nil, map[string]string{"Prefer": "consistency=strong"})
		if a.err != nil || a.status != http.StatusOK {
			return fmt.Errorf("page %d: %d %s %v", pages, a.status, a.problem, a.err)
		}
		var page struct {
			Items      []record `json:"items"`
			NextCursor *string  `json:"next_cursor"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			return fmt.Errorf("page %d: %w", pages, err)
		}
		for _, r := range page.Items {
			els = append(els, history.Element{Rec: r.ID, Value: r.Data.V})
		}
		if page.NextCursor == nil || *page.NextCursor == "" {
			break
		}
		url = base + "&cursor=" + *page.NextCursor
	}
	o.Complete, o.Outcome, o.Status, o.Elements = w.cfg.Clock.Now(), history.OK, http.StatusOK, els
	w.cfg.Recorder.Add(o)
	return nil
}

// begin starts an op: its id, process, region, tenant, kind, record and invocation time.
func (w *Workload) begin(p int, region string, t Tenant, kind history.Kind, coll, rec string) history.Op {
	return history.Op{ID: w.cfg.Recorder.ID(), Process: p, Region: region, Tenant: t.ID, Kind: kind,
		Coll: coll, Rec: rec, Invoke: w.cfg.Clock.Now()}
}

// finish sets an op's completion time, status and outcome from its answer.
func (w *Workload) finish(o *history.Op, a answer) {
	o.Complete = w.cfg.Clock.Now()
	o.Status, o.Problem = a.status, a.problem
	switch {
	case a.err == nil:
		o.Outcome = history.Classify(a.status, a.problem)
	case a.dialFailed:
		// Nothing was sent: the connection was never made.
		o.Outcome, o.Error = history.Fail, a.err.Error()
	default:
		o.Outcome, o.Error = history.Unknown, a.err.Error()
	}
}

// answer is a response, or the error that stood in for one.
type answer struct {
	status  int
	header  http.Header
	body    []byte
	problem string
	err     error
	// dialFailed says the request was never sent (no connection could be made).
	dialFailed bool
}

// do makes one request with a bearer token.
func (w *Workload) do(ctx context.Context, method, url, token string, body []byte, hdr map[string]string) answer {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return answer{err: err, dialFailed: true}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		// A failed dial proves nothing was sent only for a request net/http never retries
		// after writing it: it may retry an idempotent one (GET, or any request with an
		// Idempotency-Key) on a new connection when a reused one broke, so its dial error
		// can follow a first attempt that reached the server.
		var op *net.OpError
		retried := method == http.MethodGet || method == http.MethodHead || req.Header.Get("Idempotency-Key") != ""
		return answer{err: err, dialFailed: !retried && errors.As(err, &op) && op.Op == "dial"}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		// The status came but not the whole body: for a write that status still decides.
		return answer{status: resp.StatusCode, header: resp.Header, err: err}
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: b}
	if resp.StatusCode >= 400 {
		var p struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(b, &p) == nil && p.Type != "" {
			a.problem = path.Base(p.Type)
		}
	}
	return a
}

// retry calls f every 250 ms until it succeeds, patience has passed or ctx ends.
func retry(ctx context.Context, patience time.Duration, f func() error) error {
	deadline := time.Now().Add(patience)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
