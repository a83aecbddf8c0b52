package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"
)

// stdlibProxyArg, as the first argument, makes bench serve as the baseline proxy (see
// startStdlibProxy) instead of measuring.
const stdlibProxyArg = "internal-stdlib-proxy"

// baselineName is the target name of the baseline proxy in compare-router.
const baselineName = "stdlib-proxy"

// startStdlibProxy starts this executable again as a plain net/http/httputil.ReverseProxy in
// front of upstream, in its own process like a router, and returns its base URL. The proxy does
// nothing but forward: no authentication, limits, routing, retries or metrics. Measured beside
// the router it shows what any Go HTTP hop costs on the machine, so the router's own work can be
// told apart from the hop's. stop ends it.
func startStdlibProxy(ctx context.Context, upstream string) (base string, stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(exe, stdlibProxyArg, upstream)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // the child exits when this closes (also when we die)
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case base = <-line:
	case <-time.After(10 * time.Second):
		stop()
		return "", nil, errors.New("baseline proxy did not start within 10s")
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	if !validBase(base) {
		stop()
		return "", nil, fmt.Errorf("baseline proxy: unexpected first line %q", base)
	}
	return base, stop, nil
}

// serveStdlibProxy is the child side: listen on a loopback port, print the base URL, forward to
// upstream until stdin closes.
func serveStdlibProxy(upstream string) error {
	u, err := url.Parse(upstream)
	if err != nil || !validBase(upstream) {
		return fmt.Errorf("%w: baseline proxy upstream %q", errUsage, upstream)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	// Keep-alive to the upstream for every concurrent request, as the router's transport does.
	p.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); _ = srv.Close() }()
	fmt.Printf("http://%s\n", ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
