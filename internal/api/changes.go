package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/records"
)

// changesPath is the route of the change stream. guard and the gzip middleware treat it as a
// stream: no request deadline, no compression (a gzip writer holds events back).
const changesPath = "/v1/changes"

// ChangeFeed is what GET /v1/changes needs from the node's event consumer
// (internal/events.Consumer, adapted by cmd/api so this package stays free of NATS).
type ChangeFeed interface {
	// Follow returns the tenant's change events with seq > after, in order, with no gap and no
	// repeat; after < 0 starts at the tenant's current seq. buf bounds how far the follower may
	// fall behind before the feed ends it. Follow must fail with records.ErrTenantNotFound for
	// a tenant without a row on its shard; other records errors are mapped like a read's. The
	// feed ends when ctx ends.
	Follow(ctx context.Context, t records.Target, after int64, buf int) (Feed, error)
}

// Feed is one follower's stream of change events.
type Feed interface {
	// C delivers the events; it is closed when the feed ends.
	C() <-chan records.ChangeEvent
	// Err says why C was closed (valid once it is): a follower too slow, the context's error,
	// an outbox read that failed. The stream then ends cleanly; the client resumes with
	// Last-Event-ID.
	Err() error
	// Close stops the feed and releases what it holds; it may be called more than once.
	Close()
}

// hdrLastEventID is the SSE resume header: the id of the last event the client received.
const hdrLastEventID = "Last-Event-ID"

// maxEventIDDigits bounds a Last-Event-ID: a change seq is an int64 (19 digits at most).
const maxEventIDDigits = 19

// parseLastEventID reads the Last-Event-ID values of a request: none → -1 (start at the
// tenant's current seq); one non-negative decimal integer (digits only, at most 19, within
// int64) → that seq. Anything else (empty, repeated, signed, spaced, too long) is a 400.
func parseLastEventID(vals []string) (int64, error) {
	if len(vals) == 0 {
		return -1, nil
	}
	bad := invalid(problem.InvalidLastEventID, "Last-Event-ID must be the id of an event of this stream (a non-negative integer)")
	if len(vals) > 1 {
		return 0, invalid(problem.InvalidLastEventID, "Last-Event-ID must be given at most once")
	}
	v := vals[0]
	if v == "" || len(v) > maxEventIDDigits {
		return 0, bad
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, bad
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, bad // above int64
	}
	return n, nil
}

// changeData is an event's data line.
type changeData struct {
	Collection string `json:"collection"`
	ID         string `json:"id"`
	Op         string `json:"op"`
	Version    int64  `json:"version"`
}

// appendEvent appends ev in the text/event-stream format: its id line, its data line, a blank
// line.
func appendEvent(b *bytes.Buffer, ev records.ChangeEvent) {
	data, _ := json.Marshal(changeData{Collection: ev.Collection, ID: ev.ID, Op: ev.Op, Version: ev.Version}) // strings and an int always marshal
	b.WriteString("id: ")
	b.WriteString(strconv.FormatInt(ev.Seq, 10))
	b.WriteString("\ndata: ")
	b.Write(data)
	b.WriteString("\n\n")
}

// heartbeatComment keeps an idle stream's connection (and every proxy on the way) alive.
const heartbeatComment = ": heartbeat\n\n"

// changes serves GET and HEAD /v1/changes: the tenant's change events as Server-Sent Events
// (DESIGN.md §4). Everything that can fail is checked before the headers are sent, so a
// failure is a problem+json answer; once the stream has started it only ever ends cleanly
// after a whole event (the client resumes with Last-Event-ID). The request deadline does not
// apply (guard); the stream lives until the client leaves, the feed ends or StopStreams.
func (s *Server) changes(c *gin.Context) {
	after, err := parseLastEventID(c.Request.Header.Values(hdrLastEventID))
	if err != nil {
		s.failWith(c, err)
		return
	}
	t, ok := s.resolve(c, false)
	if !ok {
		return
	}
	if s.cfg.Changes == nil {
		c.Header("Retry-After", "5")
		problem.ChangesUnavailable.Write(c, "this node serves no change stream")
		return
	}
	ctx := c.Request.Context()
	feed, err := s.cfg.Changes.Follow(ctx, t, after, s.cfg.FollowBuffer)
	if err != nil {
		s.followFailed(c, err)
		return
	}
	defer feed.Close()

	h := c.Writer.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	c.Status(http.StatusOK)
	c.Writer.WriteHeaderNow()
	c.Writer.Flush()
	if c.Request.Method == http.MethodHead {
		return
	}
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()

	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	var b bytes.Buffer
	for {
		b.Reset()
		select {
		case ev, ok := <-feed.C():
			if !ok {
				s.streamEnded(c, feed.Err())
				return
			}
			appendEvent(&b, ev)
			// Whatever else is ready goes in the same write and flush.
		more:
			for b.Len() < 64<<10 {
				select {
				case ev, ok := <-feed.C():
					if !ok {
						break more // the next turn sees the channel closed
					}
					appendEvent(&b, ev)
				default:
					break more
				}
			}
		case <-heartbeat.C:
			b.WriteString(heartbeatComment)
		case <-ctx.Done():
			return
		case <-s.stopStreams:
			return
		}
		if _, err := c.Writer.Write(b.Bytes()); err != nil {
			return // the client went away
		}
		c.Writer.Flush()
	}
}

// followFailed answers a Follow that failed before anything was written: a tenant without a
// row 404 tenant-not-found, a client gone 499, anything else (the consumer not running, the
// outbox read failing or timing out) 503 changes-unavailable, which the client retries.
func (s *Server) followFailed(c *gin.Context, err error) {
	switch {
	case errors.Is(err, records.ErrTenantNotFound), errors.Is(err, context.Canceled):
		s.failWith(c, err)
	default:
		s.log.Warn("change feed unavailable", "request_id", c.GetString(problem.ContextKey), "tenant", c.GetString("tenant"), "err", err)
		c.Header("Retry-After", "1")
		problem.ChangesUnavailable.Write(c, "the change stream cannot start now")
	}
}

// streamEnded logs why a started stream's feed ended.
func (s *Server) streamEnded(c *gin.Context, err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	s.log.Info("change stream ended by its feed", "request_id", c.GetString(problem.ContextKey), "tenant", c.GetString("tenant"), "err", err)
}

// StopStreams ends every open change stream cleanly (after its last whole event) and makes
// new ones end at once after their headers, so clients reconnect elsewhere with Last-Event-ID.
// Register it with http.Server.RegisterOnShutdown: Shutdown waits for active requests, and a
// stream is never idle. Safe to call more than once.
func (s *Server) StopStreams() { s.stopOnce.Do(func() { close(s.stopStreams) }) }
