package pgstore

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
)

// The dual write's group commit. A mirror is one version-guarded upsert on the move's target
// shard, usually in another region: one round trip each, on the API node's pool for that shard
// (-pool-max-conns, 10), capped a tenant's mirrored writes at pool size / round trip — about 68
// writes/s over a 146 ms link, below the 200 writes/s a move must sustain (found by the move
// system tests). So mirrors to one shard queue up, and one of the writers waiting sends every
// queued row in one statement per tenant while the others wait for its answer: a write's mirror
// costs at most two round trips, and a shard's mirror rate is batch size / round trip.

// maxMirrorBatch bounds the rows of one mirror statement.
const maxMirrorBatch = 500

// mirrorQueues are the queues by target shard.
type mirrorQueues struct {
	mu     sync.Mutex
	queues map[string]*mirrorQueue
	// batches counts the statements sent (for tests).
	batches atomic.Int64
}

// mirrorQueue is one target shard's queue: pending rows, and whether a writer is sending.
type mirrorQueue struct {
	pending []*mirrorReq
	sending bool
}

// mirrorReq is one write's row to mirror and where its outcome goes.
type mirrorReq struct {
	tenant string
	r      row
	done   chan error // buffered: the sender never blocks
}

// send mirrors r of tenant to shard, in a batch with whatever else is queued for shard, and
// returns the outcome of the statement that carried it (records.ErrTenantNotFound when the
// shard has no row for the tenant). ctx bounds the wait; the batch the caller sends itself
// runs under ctx as well.
func (q *mirrorQueues) send(ctx context.Context, s *Store, tenant, shard string, r row) error {
	req := &mirrorReq{tenant: tenant, r: r, done: make(chan error, 1)}
	q.mu.Lock()
	if q.queues == nil {
		q.queues = map[string]*mirrorQueue{}
	}
	mq := q.queues[shard]
	if mq == nil {
		mq = &mirrorQueue{}
		q.queues[shard] = mq
	}
	mq.pending = append(mq.pending, req)
	lead := !mq.sending
	if lead {
		mq.sending = true
	}
	q.mu.Unlock()
	if lead {
		q.drain(ctx, s, shard, mq)
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain sends shard's queued rows, batch after batch, until the queue is empty. The writer that
// starts it sends the first batch, which holds its own row (the queue was empty when it found
// nobody sending), and leaves the rest to a goroutine, so its client's answer waits for no
// more than its own batch.
func (q *mirrorQueues) drain(ctx context.Context, s *Store, shard string, mq *mirrorQueue) {
	for first := true; ; first = false {
		q.mu.Lock()
		n := min(len(mq.pending), maxMirrorBatch)
		if n == 0 {
			mq.sending = false
			q.mu.Unlock()
			return
		}
		if !first {
			q.mu.Unlock()
			go q.drain(context.WithoutCancel(ctx), s, shard, mq)
			return
		}
		batch := mq.pending[:n:n]
		mq.pending = mq.pending[n:]
		q.mu.Unlock()
		// A batch outlives its first writer's deadline: the others are waiting on it.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.MirrorTimeout)
		s.sendMirrorBatch(bctx, shard, batch)
		cancel()
	}
}

// sendMirrorBatch upserts a batch's rows, one statement per tenant (each runs under its
// tenant's row-level security scope), keeping of two rows of one key only the newer (one
// statement may not change a row twice), and hands each writer its statement's outcome.
func (s *Store) sendMirrorBatch(ctx context.Context, shard string, batch []*mirrorReq) {
	byTenant := map[string][]*mirrorReq{}
	var order []string
	for _, req := range batch {
		if _, ok := byTenant[req.tenant]; !ok {
			order = append(order, req.tenant)
		}
		byTenant[req.tenant] = append(byTenant[req.tenant], req)
	}
	var wg sync.WaitGroup
	for _, tenant := range order {
		reqs := byTenant[tenant]
		wg.Go(func() {
			newest := map[records.Key]row{}
			for _, req := range reqs {
				if cur, ok := newest[req.r.key]; !ok || req.r.version > cur.version {
					newest[req.r.key] = req.r
				}
			}
			rows := make([]row, 0, len(newest))
			for _, r := range newest {
				rows = append(rows, r)
			}
			// In key order, as the backfill's and the repair's statements write: two statements
			// locking the same rows in different orders deadlock (seen under a 200,000-row
			// backfill: Postgres aborted the copy batch, and the backfill started over).
			slices.SortFunc(rows, func(a, b row) int { return a.key.Compare(b.key) })
			start := time.Now()
			s.mirrors.batches.Add(1)
			_, err := s.upsertRows(ctx, tenant, shard, rows, upsertNewerSQL)
			if err != nil {
				s.log.Debug("mirror batch failed", "tenant", tenant, "shard", shard, "rows", len(rows), "took", time.Since(start), "err", err)
			}
			for _, req := range reqs {
				req.done <- err
			}
		})
	}
	wg.Wait()
}
