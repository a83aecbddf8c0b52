// Package daemon is the part of a long-running command's main that every Meridian server shares:
// a JSON slog logger tagged with the component (internal/jsonlog's handler, slog's JSON handler
// that also lets the router write its per-request line itself), its writes batched by internal/logbuf; a context
// that ends on SIGINT or SIGTERM; the optional pprof listener (internal/debugsrv); then the
// command's own run function, after which the log is flushed. cmd/router and cmd/api use it.
//
// Inside run both commands keep the same list of started parts (Parts): each part is built,
// started and its stop recorded, in order; after the signal they are stopped in reverse order.
// ServeHTTP is the HTTP server as such a part. Tests use Parts the same way to assemble a node.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meridian-dev/meridian/internal/debugsrv"
	"github.com/meridian-dev/meridian/internal/jsonlog"
	"github.com/meridian-dev/meridian/internal/logbuf"
)

// Main runs run as described in the package doc, with logs to os.Stderr, and returns the exit
// status: 0, or 1 after logging run's error. debugAddr "" means no pprof listener.
func Main(component, debugAddr string, run func(ctx context.Context, log *slog.Logger) error) int {
	// A log line per request: batch the writes, and flush them before the process exits.
	lw := logbuf.New(os.Stderr, 0, 0)
	log := slog.New(jsonlog.NewHandler(lw, nil)).With("component", component)
	slog.SetDefault(log)
	err := serve(debugAddr, log, run)
	if err != nil {
		log.Error("exit", "err", err)
	}
	_ = lw.Close()
	if err != nil {
		return 1
	}
	return 0
}

func serve(debugAddr string, log *slog.Logger, run func(ctx context.Context, log *slog.Logger) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if debugAddr != "" {
		if _, err := debugsrv.Start(ctx, debugAddr, log); err != nil {
			return fmt.Errorf("-debug-addr: %w", err)
		}
	}
	return run(ctx, log)
}
