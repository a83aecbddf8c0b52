package events

import (
	"context"
	"fmt"
	"sync"

	"github.com/meridian-dev/meridian/internal/records"
)

// feedPage bounds one outbox read of a feed, so a long backlog is never held in memory at once.
const feedPage = 500

// follower is one Feed as the consumer sees it.
type follower struct {
	// q carries the tenant's live changes from the consumer to the feed; the consumer never
	// blocks on it.
	q chan records.ChangeEvent
	// slow is closed by the consumer when q overflowed (the follower is unregistered then).
	slow chan struct{}
}

// Feed is one tenant's change stream: every change with seq > the Follow's after, in order,
// without gaps or repeats. Read C until it closes, then Err says why.
type Feed struct {
	c      *Consumer
	t      records.Target
	f      *follower
	out    chan records.ChangeEvent
	cancel context.CancelFunc
	done   chan struct{}

	// delivered is the seq of the last event sent on out (the feed's goroutine only).
	delivered int64

	mu  sync.Mutex // guards err
	err error
}

// Follow starts a feed of t's changes with seq > after; after < 0 starts at the tenant's
// current seq (OutboxReader.ChangeSeq), so only changes from now on are sent. buf (at least 1)
// is how many live events may wait for the reader: a reader further behind gets
// ErrSlowFollower. The feed reads the backlog from the outbox, then the live events the
// consumer applies, filling any gap from the outbox; it ends when ctx is done, Close is called
// or an error occurs. Follow fails only when the current seq cannot be read.
func (c *Consumer) Follow(ctx context.Context, t records.Target, after int64, buf int) (*Feed, error) {
	if c.cfg.Outbox == nil {
		return nil, ErrNoOutbox
	}
	f := &follower{q: make(chan records.ChangeEvent, max(buf, 1)), slow: make(chan struct{})}
	// Registered before anything is read: a change not yet in the outbox read below is
	// published after this, so it reaches q (or is read by a gap fill).
	c.addFollower(t.Tenant, f)
	if after < 0 {
		seq, err := c.cfg.Outbox.ChangeSeq(ctx, t)
		if err != nil {
			c.removeFollower(t.Tenant, f)
			return nil, fmt.Errorf("events: change seq of tenant %s: %w", t.Tenant, err)
		}
		after = seq
	}
	fctx, cancel := context.WithCancel(ctx)
	fd := &Feed{c: c, t: t, f: f, out: make(chan records.ChangeEvent), cancel: cancel, done: make(chan struct{}), delivered: after}
	go fd.run(fctx, ctx)
	return fd, nil
}

// C is the feed's events; it is closed when the feed ends.
func (fd *Feed) C() <-chan records.ChangeEvent { return fd.out }

// Err is why the feed ended, once C is closed: ErrSlowFollower, the context's error, an
// outbox error (ErrMissingChanges for a gap the outbox cannot fill), or nil after Close.
func (fd *Feed) Err() error {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	return fd.err
}

// Close ends the feed and waits until its goroutine is gone and C is closed. It is safe to
// call more than once.
func (fd *Feed) Close() {
	fd.cancel()
	<-fd.done
}

func (fd *Feed) run(ctx, parent context.Context) {
	defer close(fd.done)
	defer close(fd.out)
	defer fd.c.removeFollower(fd.t.Tenant, fd.f)
	err := fd.fill(ctx, 0)
	for err == nil {
		select {
		case e := <-fd.f.q:
			err = fd.live(ctx, e)
		case <-fd.f.slow:
			err = ErrSlowFollower
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if ctx.Err() != nil {
		err = parent.Err() // nil when ended by Close
	}
	fd.mu.Lock()
	fd.err = err
	fd.mu.Unlock()
}

// live sends one event the consumer handed over: a repeat is dropped, a gap before it is
// filled from the outbox first.
func (fd *Feed) live(ctx context.Context, e records.ChangeEvent) error {
	if e.Seq <= fd.delivered {
		return nil
	}
	if e.Seq > fd.delivered+1 {
		if err := fd.fill(ctx, e.Seq-1); err != nil {
			return err
		}
	}
	return fd.send(ctx, e)
}

// fill sends the outbox's events after fd.delivered up to upto (0 = to the end of the outbox),
// a page at a time. Seqs are gap-free per tenant, so a missing one (pruned rows) is an error,
// and a page shorter than asked is the end.
func (fd *Feed) fill(ctx context.Context, upto int64) error {
	for upto == 0 || fd.delivered < upto {
		end := fd.delivered + feedPage
		if upto != 0 {
			end = min(end, upto)
		}
		evs, err := fd.c.cfg.Outbox.Changes(ctx, fd.t.Tenant, fd.t.Shard, fd.delivered, end)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fd.c.m.errors.WithLabelValues("outbox").Inc()
			return fmt.Errorf("events: outbox of tenant %s after seq %d: %w", fd.t.Tenant, fd.delivered, err)
		}
		for _, e := range evs {
			if e.Seq <= fd.delivered {
				continue
			}
			if e.Seq != fd.delivered+1 {
				return fmt.Errorf("%w: tenant %s: seq %d follows %d", ErrMissingChanges, fd.t.Tenant, e.Seq, fd.delivered)
			}
			if err := fd.send(ctx, e); err != nil {
				return err
			}
		}
		if fd.delivered < end {
			if upto == 0 {
				return nil // the end of the outbox
			}
			return fmt.Errorf("%w: tenant %s: seq %d to %d not in the outbox", ErrMissingChanges, fd.t.Tenant, fd.delivered+1, end)
		}
	}
	return nil
}

func (fd *Feed) send(ctx context.Context, e records.ChangeEvent) error {
	select {
	case fd.out <- e:
		fd.delivered = e.Seq
		return nil
	case <-fd.f.slow:
		return ErrSlowFollower
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Consumer) addFollower(tenant string, f *follower) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fs := c.followers[tenant]
	if fs == nil {
		fs = map[*follower]struct{}{}
		c.followers[tenant] = fs
	}
	fs[f] = struct{}{}
	c.m.followers.Inc()
}

func (c *Consumer) removeFollower(tenant string, f *follower) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeFollowerLocked(tenant, f)
}

func (c *Consumer) removeFollowerLocked(tenant string, f *follower) {
	fs := c.followers[tenant]
	if _, ok := fs[f]; !ok {
		return
	}
	delete(fs, f)
	if len(fs) == 0 {
		delete(c.followers, tenant)
	}
	c.m.followers.Dec()
}

func (c *Consumer) hasFollowers(tenant string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.followers[tenant]) > 0
}

// deliver hands evs to each of tenant's followers without blocking: a follower whose queue is
// full is dropped as slow.
func (c *Consumer) deliver(tenant string, evs ...records.ChangeEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for f := range c.followers[tenant] {
		if !offer(f, evs) {
			c.removeFollowerLocked(tenant, f)
			close(f.slow)
		}
	}
}

// offer queues evs for f, reporting false if its queue overflowed.
func offer(f *follower, evs []records.ChangeEvent) bool {
	for _, e := range evs {
		select {
		case f.q <- e:
		default:
			return false
		}
	}
	return true
}
