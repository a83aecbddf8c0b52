package daemon

import (
	"flag"
	"net/http"
	"time"

	"github.com/meridian-dev/meridian/internal/envflag"
)

// HTTPLimits bounds what one client connection may cost a router or an API node. Zero values
// mean the defaults below; a negative duration means no limit.
type HTTPLimits struct {
	// ReadHeaderTimeout bounds how long a client may take to send a request's headers; 0: 5 s.
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds how long a client may take to send a request's body, counted from
	// the moment its headers have been read; 0: 5 s. A body read past it fails with an error
	// wrapping os.ErrDeadlineExceeded (handlers answer 408), and whatever of the body the
	// server still has to discard after the handler is bounded by the same deadline, so a
	// stalled body never holds a goroutine or a connection beyond it.
	BodyTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its next request; 0: 2 min.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps a request's header block (net/http answers 431 above it, give or take
	// its 4 KiB of slack); 0: 64 KiB.
	MaxHeaderBytes int
}

// Default HTTPLimits values (the flags' documented defaults).
const (
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultBodyTimeout       = 5 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxHeaderBytes    = 64 << 10
)

// HTTPLimitFlags declares the flags of l on fs, each defaulting to its MERIDIAN_* variable
// from env and then to the documented default; cmd/router and cmd/api both call it.
func HTTPLimitFlags(fs *flag.FlagSet, env *envflag.Env, l *HTTPLimits) {
	fs.DurationVar(&l.ReadHeaderTimeout, "read-header-timeout", env.Duration("MERIDIAN_READ_HEADER_TIMEOUT", DefaultReadHeaderTimeout), "time a client may take to send a request's headers (MERIDIAN_READ_HEADER_TIMEOUT)")
	fs.DurationVar(&l.BodyTimeout, "body-timeout", env.Duration("MERIDIAN_BODY_TIMEOUT", DefaultBodyTimeout), "time a client may take to send a request's body, from its headers; later → 408 (MERIDIAN_BODY_TIMEOUT)")
	fs.DurationVar(&l.IdleTimeout, "idle-timeout", env.Duration("MERIDIAN_IDLE_TIMEOUT", DefaultIdleTimeout), "keep-alive connections idle this long are closed (MERIDIAN_IDLE_TIMEOUT)")
	fs.IntVar(&l.MaxHeaderBytes, "max-header-bytes", env.Int("MERIDIAN_MAX_HEADER_BYTES", DefaultMaxHeaderBytes), "cap on a request's header block; above → 431 (MERIDIAN_MAX_HEADER_BYTES)")
}

// withDefaults returns l with zero values replaced by the defaults and negative durations by 0
// (net/http's "no limit").
func (l HTTPLimits) withDefaults() HTTPLimits {
	dur := func(d, def time.Duration) time.Duration {
		switch {
		case d == 0:
			return def
		case d < 0:
			return 0
		}
		return d
	}
	l.ReadHeaderTimeout = dur(l.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	l.BodyTimeout = dur(l.BodyTimeout, DefaultBodyTimeout)
	l.IdleTimeout = dur(l.IdleTimeout, DefaultIdleTimeout)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return l
}

// NewHTTPServer is the HTTP server routers and API nodes serve h with, bounded by limits (see
// HTTPLimits). Serve it with ServeHTTP.
//
// net/http has a whole-request ReadTimeout but no body timeout, and ReadTimeout cannot be used:
// once a body has been read the server keeps a background read on the connection, and that
// read failing at the deadline cancels the request's context, which would cut every event
// stream and every slow upstream answer at ReadTimeout. Instead, for a request that has a body,
// the connection's read deadline is set to BodyTimeout from the handler's start and cleared as
// soon as the body has been read to its end (net/http does that part).
func NewHTTPServer(h http.Handler, limits HTTPLimits) *http.Server {
	l := limits.withDefaults()
	if l.BodyTimeout > 0 {
		h = bodyDeadline(h, l.BodyTimeout)
	}
	return &http.Server{Handler: h, ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout: l.IdleTimeout, MaxHeaderBytes: l.MaxHeaderBytes}
}

// bodyDeadline sets the read deadline of a request with a body to timeout from now. net/http
// clears it when the body has been read to its end (it then starts its background read, and
// sets no deadline for it); TestBodyDeadlineClearedAfterBody checks that this stays so.
func bodyDeadline(h http.Handler, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			// An error means a writer that is no net/http connection (a test recorder):
			// there is no connection to bound.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout))
		}
		// A body the handler leaves unread keeps the deadline: net/http discards the rest
		// before the next request, and the deadline bounds that too.
		h.ServeHTTP(w, r)
	})
}
