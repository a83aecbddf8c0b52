package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Serve serves h on ln until ctx ends, then shuts down gracefully: the listener closes at once
// (new connections are refused) and requests already in flight get up to grace to finish.
// It returns nil after a clean shutdown, or the error that stopped serving or the shutdown.
// readHeaderTimeout bounds how long a client may take to send its headers (0 = 5 s).
func Serve(ctx context.Context, ln net.Listener, h http.Handler, readHeaderTimeout, grace time.Duration) error {
	if readHeaderTimeout == 0 {
		readHeaderTimeout = 5 * time.Second
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(shCtx)
	if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) {
		return errors.Join(err, serveErr)
	}
	return err
}
