// Package debugsrv serves Go's runtime profiles (net/http/pprof) on a separate listener, for an
// operator measuring a live process: `go tool pprof http://ADDR/debug/pprof/profile?seconds=10`.
// It is off unless a command is given an address (-debug-addr), and that address should be
// loopback or otherwise private: profiles are unauthenticated and reveal the process's insides.
package debugsrv

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// Start listens on addr and serves /debug/pprof/ until ctx ends. It returns the bound address
// (useful with port 0).
func Start(ctx context.Context, addr string, log *slog.Logger) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("debug server", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("debug server listening (pprof)", "addr", ln.Addr().String())
	return ln.Addr().String(), nil
}
