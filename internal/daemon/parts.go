package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// ErrStoppedItself means a part started with Parts.Go returned before it was asked to stop.
var ErrStoppedItself = errors.New("daemon: part stopped by itself")

// Parts is what a command's main has started, in order, with how to stop each part, so that a
// main reads top to bottom: build a part, start it and record its stop (Add, or Go for a part
// that runs until its context ends), …, Wait for a signal, Stop in reverse order. A main defers
// Stop as well, so a return on a failed start stops what had been started; Stop forgets the
// parts it stopped, so the deferred call does nothing after the final one. Safe for concurrent
// use.
type Parts struct {
	log    *slog.Logger
	failed chan error // the first part that stopped by itself

	mu    sync.Mutex
	parts []part // guarded by mu
}

type part struct {
	name string
	stop func(context.Context) error
}

// NewParts returns an empty list that logs each stop to log (nil = slog.Default()).
func NewParts(log *slog.Logger) *Parts {
	if log == nil {
		log = slog.Default()
	}
	return &Parts{log: log, failed: make(chan error, 1)}
}

// Add records a started part and the function that stops it. stop receives Stop's context.
func (p *Parts) Add(name string, stop func(context.Context) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.parts = append(p.parts, part{name, stop})
}

// Go starts run in a goroutine as the part name. Stopping the part cancels run's context and
// waits for run to return, so run must return soon after its context ends; a
// context.Canceled it returns then is not an error. If run returns before it is stopped, Wait
// returns ErrStoppedItself with run's error.
func (p *Parts) Go(name string, run func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := run(ctx)
		if ctx.Err() == nil {
			select {
			case p.failed <- fmt.Errorf("%w: %s: %v", ErrStoppedItself, name, err):
			default: // another part failed first; Wait reports that one
			}
		}
		done <- err
	}()
	p.Add(name, func(context.Context) error {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	})
}

// Wait blocks until ctx ends (the command's signal context: nil is returned) or a part started
// with Go stops by itself (its ErrStoppedItself error is returned).
func (p *Parts) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-p.failed:
		return err
	}
}

// Stop stops the parts in the reverse order of their start, each with ctx, whatever the
// previous ones returned, logs each, and returns their errors joined.
func (p *Parts) Stop(ctx context.Context) error {
	p.mu.Lock()
	parts := p.parts
	p.parts = nil
	p.mu.Unlock()
	var errs []error
	for i := len(parts) - 1; i >= 0; i-- {
		pt := parts[i]
		if err := pt.stop(ctx); err != nil {
			p.log.Warn("stop "+pt.name, "err", err)
			errs = append(errs, fmt.Errorf("stop %s: %w", pt.name, err))
			continue
		}
		p.log.Info("stopped " + pt.name)
	}
	return errors.Join(errs...)
}

// ServeHTTP serves srv on ln until ctx ends, then shuts srv down gracefully: the listener closes
// at once and requests in flight get up to grace to finish, after which the remaining
// connections are closed. It returns nil after a clean shutdown, or the error that stopped
// serving or the shutdown. Use it as a Parts.Go run function.
func ServeHTTP(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	err := ShutdownHTTP(srv, grace)
	if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) {
		return errors.Join(err, serveErr)
	}
	return err
}

// ShutdownHTTP shuts srv down gracefully: its listeners close at once and requests in flight
// get up to grace to finish, after which the remaining connections are closed.
func ShutdownHTTP(srv *http.Server, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		_ = srv.Close()
	}
	return err
}
