package ratelimit

import (
	"context"
	"errors"
	"sync"
	"time"
)

// leaseState is one Limiter's view of one Redis bucket (see "Leases" in the package doc).
// Times are microseconds on the Limiter's clock.
type leaseState struct {
	held        int64 // tokens Redis granted to this Limiter and not yet spent
	expires     int64 // held tokens are void from then on; 0: never leased
	grantEnd    int64 // the bucket's TAT right after the last batch was granted
	want        int64 // size of the next batch
	remaining   int64 // Redis's remaining count after the last grant
	resetAt     int64 // when the bucket is full again, as of the last answer
	deniedUntil int64 // a denial Redis gave holds until then
	refilling   bool  // a batch request is in flight
	// batch is the size of the last batch granted: a lease gives back at most that many
	// (refundable counts back from that batch's end, grantEnd; a renewed lease's older tokens,
	// whose slots lie before it, may have been refilled since, so they are never given back).
	batch int64
	// key is the bucket's Redis key, the state's own key in leaseTable.m: a request decided
	// from the lease finds its state by a key built on the stack and takes this string for
	// its bucket, so that no request builds a key string while the state lives.
	key string
}

// leaseTable holds the lease states of every bucket in use. It is also where a leased
// decision finds its buckets' key strings (leaseState.key): a separate cache of keys by
// (scope, class, id) would be one more map to bound against hostile ids, and would save
// nothing, since the state must be looked up by its key anyway. So each request builds its
// keys in a buffer on its stack (a few bytes copied, nothing allocated), looks its states up
// with them, and only a new state allocates its key. The table's size is bounded as before:
// sweep drops idle states, and with them their keys.
type leaseTable struct {
	mu        sync.Mutex // guards the fields below and every leaseState in m
	m         map[string]*leaseState
	lastSweep int64
}

// sweep drops the states of idle buckets, so memory follows active buckets only. A state whose
// lease ended with tokens unspent is kept a while longer, so that the bucket's next request can
// give them back.
func (lt *leaseTable) sweep(now int64) {
	if now-lt.lastSweep <= sweepEvery {
		return
	}
	for k, st := range lt.m {
		idle := now >= st.expires && (st.held == 0 || now-st.expires >= sweepEvery)
		if idle && !st.refilling && now >= st.deniedUntil {
			delete(lt.m, k)
		}
	}
	lt.lastSweep = now
}

// leaseCap is the largest batch b may take: max(1, min(burst/10, rate×lease)).
func (l *Limiter) leaseCap(b bucket) int64 {
	return max(1, min(b.limit.burst()/10, int64(b.limit.Rate*l.lease.Seconds())))
}

// allowLeased decides a request from tokens leased earlier, a remembered denial, or one Redis
// call that also refills the buckets that ran dry. done is false when Redis failed and the
// fallback has been entered: the caller then decides locally. err is ctx's error when the
// request's context ended.
func (l *Limiter) allowLeased(ctx context.Context, bs []bucket, now int64) (res Result, backend int, done bool, err error) {
	return l.allowLeasedOr(ctx, bs, now, false)
}

// errWouldWait is allowLeasedOr's answer, with noWait, to a request that needs Redis.
var errWouldWait = errors.New("ratelimit: the decision needs a call to Redis")

// allowLeasedOr is allowLeased; with noWait, a request that needs a call to Redis is answered
// errWouldWait with nothing spent or changed (the tokens it reserved given back).
//
// A decision from held tokens or a remembered denial allocates nothing: bs's keys are built on
// the stack, and every per-bucket slice is an array of len(scopes). bs's keys are set to the
// strings the lease states keep, for the Redis call and the fallback.
func (l *Limiter) allowLeasedOr(ctx context.Context, bs []bucket, now int64, noWait bool) (res Result, backend int, done bool, err error) {
	// The keys are built before the lock is taken; ends[i] is where bucket i's key ends in buf.
	var kbuf [keyBufSize]byte
	var ends [len(scopes)]int
	buf := kbuf[:0]
	for i := range bs {
		buf = bs[i].appendKey(buf, l.prefix)
		ends[i] = len(buf)
	}
	var (
		states   [len(scopes)]*leaseState
		reserved [len(scopes)]bool
		need     [len(scopes)]int // indexes into bs of the buckets that need Redis
		nNeed    int
	)
	lt := l.leases
	lt.mu.Lock()
	lt.sweep(now)
	worst := -1
	for i := range bs {
		k := buf[:ends[i]]
		if i > 0 {
			k = k[ends[i-1]:]
		}
		st := lt.m[string(k)] // no allocation: the compiler looks up with the bytes
		if st == nil {
			st = &leaseState{want: 1, key: string(k)}
			lt.m[st.key] = st
		}
		bs[i].key = st.key
		states[i] = st
		switch {
		case st.held > 0 && now < st.expires:
			// 1. Spend a held token (reserved now, given back if another bucket denies).
			st.held--
			reserved[i] = true
		case now < st.deniedUntil:
			// 2. A remembered denial: nobody can make that bucket admit earlier.
			if worst < 0 || st.deniedUntil > states[worst].deniedUntil {
				worst = i
			}
		default:
			need[nNeed] = i
			nNeed++
		}
	}
	if worst >= 0 {
		st := states[worst]
		res = Result{Limit: bs[worst].limit.burst(), Scope: bs[worst].scope,
			Reset:      usec(max(0, st.resetAt-now)),
			RetryAfter: usec(st.deniedUntil - now)}
		giveBack(states[:len(bs)], reserved[:len(bs)])
		lt.mu.Unlock()
		return res, backendLease, true, nil
	}
	if nNeed == 0 {
		res = leaseResult(bs, states[:len(bs)], now)
		var renew [len(scopes)]int64 // the batch to ask for ahead, per bucket; 0: none
		if noWait {
			for i := range bs {
				if reserved[i] {
					renew[i] = l.renewAhead(states[i], bs[i], now)
				}
			}
		}
		lt.mu.Unlock()
		for i := range bs {
			if renew[i] > 0 {
				go l.renew(bs[i], states[i], renew[i])
			}
		}
		return res, backendLease, true, nil
	}
	if noWait {
		giveBack(states[:len(bs)], reserved[:len(bs)])
		lt.mu.Unlock()
		return Result{}, 0, true, errWouldWait
	}
	// 3. Ask Redis for the dry buckets: a batch where leasing pays, one token otherwise.
	sub := make([]bucket, nNeed)
	want := make([]int64, nNeed)
	refund := make([]int64, nNeed)
	mine := make([]bool, nNeed) // this call owns the bucket's refill
	for j, i := range need[:nNeed] {
		st, c := states[i], l.leaseCap(bs[i])
		sub[j], want[j] = bs[i], 1
		if st.held > 0 { // the lease ended with tokens unspent: give back those still due
			refund[j], st.held = refundable(min(st.held, st.batch), st.grantEnd, now, bs[i].limit.interval()), 0
		}
		if c <= 1 || st.refilling {
			continue
		}
		if st.expires != 0 {
			if now < st.expires {
				st.want *= 2 // the last batch ran out before its lease ended
			} else {
				st.want /= 2
			}
		}
		st.want = min(max(st.want, 1), c)
		want[j], mine[j] = st.want, true
		st.refilling = true
	}
	lt.mu.Unlock()

	rr, rerr := l.allowRedis(ctx, sub, now, want, refund)

	lt.mu.Lock()
	defer lt.mu.Unlock()
	for j, i := range need[:nNeed] {
		if mine[j] {
			states[i].refilling = false
		}
	}
	if rerr != nil {
		giveBack(states[:len(bs)], reserved[:len(bs)])
		if ctx.Err() != nil {
			return Result{}, 0, true, ctx.Err()
		}
		l.redisErrors.Inc()
		l.enterFallback(rerr)
		return Result{}, 0, false, nil
	}
	l.leaveFallback()
	if !rr.Allowed {
		for j, i := range need[:nNeed] {
			if o := rr.outs[j]; o.retryAfter > 0 {
				states[i].deniedUntil = now + o.retryAfter
				states[i].resetAt = now + o.reset
			}
		}
		giveBack(states[:len(bs)], reserved[:len(bs)])
		return rr.Result, backendRedis, true, nil
	}
	for j, i := range need[:nNeed] {
		st := states[i]
		if mine[j] || rr.granted[j] > 1 {
			st.held += rr.granted[j] - 1
			st.batch = rr.granted[j]
			st.expires = now + l.lease.Microseconds()
			st.grantEnd = now + rr.outs[j].reset
		}
		st.remaining = rr.outs[j].remaining
		st.resetAt = now + rr.outs[j].reset
	}
	return leaseResult(bs, states[:len(bs)], now), backendRedis, true, nil
}

// renewAhead says how large a batch to ask Redis for now, ahead of need, for st's bucket b,
// from which a decision that may not wait (the router's event loop: AllowNoWait) has just
// spent a token; 0: none. Under lt.mu; a batch asked for marks st refilling.
//
// Without it, the request that finds a lease dry or ended waits for Redis, and so does every
// request on the bucket until the refill answers (each asking for one token of its own): on
// the event loop, a step off the loop each. So a lease is renewed while it still has tokens:
// when fewer than a quarter of its batch is left (the batch then doubles, as when a lease runs
// out before its end), or a quarter of its time. The tokens held stay bounded by the cap, so a
// Limiter still holds at most a tenth of a bucket; renew adds the batch to them and starts a
// new lease. What is unspent at its end goes back to the bucket as for any lease, but no more
// than the latest batch (leaseState.batch): older tokens left unspent are kept by the bucket,
// never given back, because their slots lie before that batch and may have been refilled
// since (giving them back would let the bucket admit more than its limit). So every admitted
// request still spent a token Redis granted and kept; what a router that stops may withhold is
// at most the cap, until the bucket's clock passes those slots (about one lease: a batch is at
// most rate × lease).
func (l *Limiter) renewAhead(st *leaseState, b bucket, now int64) int64 {
	c := l.leaseCap(b)
	if c <= 1 || st.refilling || now >= st.expires || st.held >= c {
		return 0
	}
	low := st.held*4 < st.want
	ending := (st.expires-now)*4 < l.lease.Microseconds()
	if !low && !ending {
		return 0
	}
	if low {
		st.want = min(max(st.want*2, 1), c)
	}
	st.refilling = true
	return max(1, min(st.want, c-st.held))
}

// renew asks Redis for n tokens of bucket b (whose key is set) and adds what it grants to st's
// lease, which it starts again (renewAhead). A failure or a denial leaves the lease as it was:
// its end, or its last token, goes to Redis on the request's path as before, which also
// judges whether Redis is down (the fallback).
func (l *Limiter) renew(b bucket, st *leaseState, n int64) {
	now := l.now().UnixMicro()
	rr, err := l.allowRedis(context.Background(), []bucket{b}, now, []int64{n}, nil)
	lt := l.leases
	lt.mu.Lock()
	defer lt.mu.Unlock()
	st.refilling = false
	if err != nil || !rr.Allowed {
		l.renewals.WithLabelValues("failed").Inc()
		return
	}
	l.renewals.WithLabelValues("granted").Inc()
	st.held += rr.granted[0]
	st.batch = rr.granted[0]
	st.expires = now + l.lease.Microseconds()
	st.grantEnd = now + rr.outs[0].reset
	st.remaining = rr.outs[0].remaining
	st.resetAt = now + rr.outs[0].reset
}

// refundable is how many of held unspent tokens can go back to their bucket at now. A batch's
// tokens are the emission slots just before grantEnd, the unspent ones the latest; a slot whose
// time has passed has already been refilled, so giving it back would let the bucket admit more
// than its limit (another router may have spent the refill meanwhile). Only slots still in the
// future go back.
func refundable(held, grantEnd, now, interval int64) int64 {
	if grantEnd <= now {
		return 0
	}
	return min(held, (grantEnd-now)/interval)
}

// giveBack returns tokens reserved for a request that was not admitted.
func giveBack(states []*leaseState, reserved []bool) {
	for i, st := range states {
		if reserved[i] {
			st.held++
		}
	}
}

// leaseResult describes an admitted request: per bucket, what Redis had left at the last grant
// plus what this Limiter still holds.
func leaseResult(bs []bucket, states []*leaseState, now int64) Result {
	var arr [len(scopes)]outcome
	outs := arr[:len(bs)]
	for i, st := range states {
		outs[i] = outcome{remaining: st.remaining + st.held, reset: max(0, st.resetAt-now)}
	}
	return combine(bs, true, outs)
}

func usec(us int64) time.Duration { return time.Duration(us) * time.Microsecond }
