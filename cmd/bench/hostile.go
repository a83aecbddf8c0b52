package main

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The hostile scenario (issue 12, DESIGN.md §4 "Slow or hostile clients"): a well-behaved
// tenant (the victim) reads through one router, alone and while another tenant sends a hostile
// mix through the same router, side by side in rounds. The mix has fast kinds, sent on a fixed
// schedule at -hostile-rate requests per second in turn, and slow kinds, held on
// -hostile-slow connections that are reopened as soon as the router closes one.

// hostileKind is one kind of request of the hostile mix.
type hostileKind struct {
	name string
	// want is what the contract says the router answers it (for the report).
	want string
	// slow kinds hold their connection until the router's body timeout.
	slow  bool
	build func(seq uint64) rawRequest
}

// hostileTokens are the credentials the hostile mix uses: a valid token of the hostile tenant
// and three that must be refused.
type hostileTokens struct {
	valid, wrongSecret, expired string
}

// slowBodyLen is the Content-Length of the slow and stalled bodies; slowBodyFirst bytes of it are
// sent with the headers, slowDrip is the pace of the rest of a slow body (so it would take
// 28 s, far past any body timeout).
const (
	slowBodyLen   = 64
	slowBodyFirst = 8
	slowDrip      = 500 * time.Millisecond
)

// paddedBody is a valid record body of exactly n bytes (n ≥ 20).
func paddedBody(n int) []byte {
	const pre, post = `{"data":{"pad":"`, `"}}`
	return []byte(pre + strings.Repeat("p", n-len(pre)-len(post)) + post)
}

// hostileKinds returns the mix, for a router at host and a collection of the hostile tenant.
func hostileKinds(host string, tok hostileTokens) []hostileKind {
	list := "/v1/collections/" + collection + "/records"
	bearer := func(t string) header { return header{"Authorization", "Bearer " + t} }
	accept := header{"Accept", "application/json"}
	ctype := header{"Content-Type", "application/json"}
	get := func(target string, hs ...header) rawRequest {
		return newRawRequest(http.MethodGet, target, host, append([]header{accept}, hs...), nil)
	}
	pick := func(seq uint64, xs []string) string { return xs[seq%uint64(len(xs))] }
	slowPost := func(drip time.Duration) func(uint64) rawRequest {
		return func(uint64) rawRequest {
			r := newRawRequest(http.MethodPost, list, host, []header{bearer(tok.valid), accept, ctype}, paddedBody(slowBodyLen))
			r.first, r.drip = slowBodyFirst, drip
			return r
		}
	}
	return []hostileKind{
		{name: "bad-token", want: "401", build: func(seq uint64) rawRequest {
			return get(list+"/x", bearer(pick(seq, []string{tok.wrongSecret, tok.expired, "not.a.jwt"})))
		}},
		{name: "malformed-json", want: "400 invalid-body", build: func(seq uint64) rawRequest {
			body := pick(seq, []string{`{"data":{"a":1},"DATA":{"a":2}}`, `{"data":{"a":1}}x`, `{"data":`,
				`{"data":{"a":1},"data":{"b":2}}`})
			return newRawRequest(http.MethodPost, list, host, []header{bearer(tok.valid), accept, ctype}, []byte(body))
		}},
		{name: "malformed-query", want: "400 invalid-query", build: func(seq uint64) rawRequest {
			return get(list+pick(seq, []string{"?limit=%zz", "?limit=5;order=id", "?limit=0", "?where[a]=%"}), bearer(tok.valid))
		}},
		{name: "rejected-value", want: "400 value-rejected", build: func(seq uint64) rawRequest {
			// A JSON string holding U+0000 (Postgres text cannot), a number past numeric's range.
			return get(list+pick(seq, []string{"?where[owner]=%22%5Cu0000%22", "?where[n]=1e999999999"}), bearer(tok.valid))
		}},
		{name: "expect-continue", want: "201", build: func(seq uint64) rawRequest {
			r := newRawRequest(http.MethodPost, list, host, []header{bearer(tok.valid), accept, ctype,
				{"Expect", "100-continue"}}, fmt.Appendf(nil, `{"data":{"hostile":true,"seq":%d}}`, seq))
			r.expect = true
			return r
		}},
		{name: "oversized-header", want: "431", build: func(uint64) rawRequest {
			return get(list+"/x", bearer(tok.valid), header{"X-Pad", strings.Repeat("h", 80<<10)})
		}},
		{name: "slow-body", want: "408", slow: true, build: slowPost(slowDrip)},
		{name: "stalled-body", want: "408", slow: true, build: slowPost(0)},
	}
}

// benignKinds is the control of the hostile mix: a well-formed list GET of one record, sent
// the same way (a new connection each).
func benignKinds(host, token string) []hostileKind {
	return []hostileKind{{name: "list-get", want: "200", build: func(uint64) rawRequest {
		return newRawRequest(http.MethodGet, "/v1/collections/"+collection+"/records?limit=1", host,
			[]header{{"Accept", "application/json"}, {"Authorization", "Bearer " + token}}, nil)
	}}}
}

// kindStats counts one kind's answers.
type kindStats struct {
	sent    int64
	answers map[string]int64
	// took are the times to the answer (or to the close when none came), for slow kinds.
	took []time.Duration
}

// hostileLoad runs the hostile mix against addr while it is started, and counts what it saw.
type hostileLoad struct {
	addr    string
	kinds   []hostileKind
	rate    float64
	slow    int
	timeout time.Duration
	// maxInFlight bounds the fast kinds' requests in flight; a slot finding it full is skipped.
	maxInFlight int

	mu      sync.Mutex
	stats   map[string]*kindStats
	skipped int64
	active  time.Duration // time the load ran

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started time.Time
}

func newHostileLoad(addr string, kinds []hostileKind, rate float64, slow int, timeout time.Duration) *hostileLoad {
	h := &hostileLoad{addr: addr, kinds: kinds, rate: rate, slow: slow, timeout: timeout, maxInFlight: 256,
		stats: map[string]*kindStats{}}
	for _, k := range kinds {
		h.stats[k.name] = &kindStats{answers: map[string]int64{}}
	}
	return h
}

func (h *hostileLoad) record(k hostileKind, res rawResult) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.stats[k.name]
	st.sent++
	st.answers[res.key()]++
	if k.slow {
		took := res.answered
		if res.status == 0 {
			took = res.closedAt
		}
		st.took = append(st.took, took)
	}
}

// start begins the load in the background; a running load is left as it is.
func (h *hostileLoad) start(ctx context.Context) {
	if h.cancel != nil {
		return
	}
	ctx, h.cancel = context.WithCancel(ctx)
	h.started = time.Now()
	var fast, slow []hostileKind
	for _, k := range h.kinds {
		if k.slow {
			slow = append(slow, k)
		} else {
			fast = append(fast, k)
		}
	}
	// sendOne counts an answer only if the load was not stopped under it.
	sendOne := func(k hostileKind, seq uint64) {
		res := doRaw(ctx, h.addr, k.build(seq), h.timeout)
		if ctx.Err() == nil {
			h.record(k, res)
		}
	}
	for i := range h.slow {
		if len(slow) == 0 {
			break
		}
		h.wg.Go(func() {
			for seq := uint64(i); ctx.Err() == nil; seq += uint64(h.slow) {
				sendOne(slow[i%len(slow)], seq)
			}
		})
	}
	if h.rate > 0 && len(fast) > 0 {
		h.wg.Go(func() {
			sem := make(chan struct{}, h.maxInFlight)
			var inner sync.WaitGroup
			defer inner.Wait()
			start := time.Now()
			timer := time.NewTimer(0)
			defer timer.Stop()
			for i := uint64(0); ; i++ {
				at := start.Add(time.Duration(float64(i) * 1e9 / h.rate))
				timer.Reset(time.Until(at))
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
				select {
				case sem <- struct{}{}:
				default:
					h.mu.Lock()
					h.skipped++
					h.mu.Unlock()
					continue
				}
				k := fast[i%uint64(len(fast))]
				inner.Go(func() {
					defer func() { <-sem }()
					sendOne(k, i/uint64(len(fast)))
				})
			}
		})
	}
}

// stop ends the load and waits for its connections to close; a stopped load is left as it is.
func (h *hostileLoad) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.wg.Wait()
	h.cancel = nil
	h.mu.Lock()
	h.active += time.Since(h.started)
	h.mu.Unlock()
}

// phaseCounter is a RoundTripper that counts the victim's answers by status and by
// X-Read-Source, under the phase (target) being measured; answers outside a phase (warm-up) are
// not counted.
type phaseCounter struct {
	base  http.RoundTripper
	phase atomic.Pointer[string]

	mu     sync.Mutex
	counts map[string]*phaseCounts
}

// phaseCounts is what the victim saw in one phase.
type phaseCounts struct {
	status map[string]int64 // "200", "429", "transport"
	source map[string]int64 // "primary", "replica", "cache", "none"
}

var _ http.RoundTripper = (*phaseCounter)(nil)

func newPhaseCounter(base http.RoundTripper) *phaseCounter {
	return &phaseCounter{base: base, counts: map[string]*phaseCounts{}}
}

// setPhase names the phase answers count under from now on; "" counts nothing.
func (p *phaseCounter) setPhase(name string) { p.phase.Store(&name) }

func (p *phaseCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := p.base.RoundTrip(req)
	name := p.phase.Load()
	if name == nil || *name == "" {
		return resp, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.counts[*name]
	if c == nil {
		c = &phaseCounts{status: map[string]int64{}, source: map[string]int64{}}
		p.counts[*name] = c
	}
	if err != nil {
		c.status["transport"]++
		return resp, err
	}
	c.status[fmt.Sprint(resp.StatusCode)]++
	src := resp.Header.Get("X-Read-Source")
	if src == "" {
		src = "none"
	}
	c.source[src]++
	return resp, err
}

// countCell renders counts as "k×n, …" in key order, or "–".
func countCell(m map[string]int64) string {
	if len(m) == 0 {
		return "–"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// durationsCell is "p50 / max" of ds in seconds, or "–".
func durationsCell(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("%.2f / %.2f s", s[(len(s)-1)/2].Seconds(), s[len(s)-1].Seconds())
}

// writeVictimTable writes the victim's answers by phase.
func writeVictimTable(w *strings.Builder, pc *phaseCounter, phases []string) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	w.WriteString("\nThe well-behaved tenant's answers (measured rounds only):\n\n")
	w.WriteString("| phase | answers by status | X-Read-Source |\n|---|---|---|\n")
	for _, ph := range phases {
		c := pc.counts[ph]
		if c == nil {
			c = &phaseCounts{}
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", ph, countCell(c.status), countCell(c.source))
	}
}

// writeHostileTable writes what the hostile tenant sent and got.
func (h *hostileLoad) writeTable(w *strings.Builder) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var total int64
	for _, st := range h.stats {
		total += st.sent
	}
	fmt.Fprintf(w, "\nThe other tenant, only while it ran (%.1f s in all): %d requests answered, %.0f req/s; "+
		"fast kinds scheduled at %s req/s in turn (%d slots skipped: %d already in flight), slow kinds on %d connections "+
		"held open and reopened when closed (requests cut when a phase ended are not counted).\n\n",
		h.active.Seconds(), total, float64(total)/math.Max(h.active.Seconds(), 1e-9), formatRate(h.rate), h.skipped, h.maxInFlight, h.slow)
	w.WriteString("| kind | contract | requests | answers | time to answer p50 / max |\n|---|---|---:|---|---|\n")
	for _, k := range h.kinds {
		st := h.stats[k.name]
		took := "–"
		if k.slow {
			took = durationsCell(st.took)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s |\n", k.name, k.want, st.sent, countCell(st.answers), took)
	}
}

// formatRate writes a rate without exponent or trailing zeros.
func formatRate(r float64) string { return fmt.Sprint(math.Round(r*1000) / 1000) }
