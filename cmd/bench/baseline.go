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

// echoArg, as the first argument, makes bench serve as the echo server (see serveEcho).
const echoArg = "internal-http-echo"

// echoName is the target name of the echo server in compare-router.
const echoName = "http-echo"

// echoBody is what the echo server answers: about the size of a small record's JSON.
var echoBody = []byte(`{"id":"01a208d0-b397-72eb-9637-c413048a3435","collection":"bench","data":{"n":1,"s":"bench record"},` +
	`"version":1,"created_at":"2026-11-23T14:30:00.000000Z","updated_at":"2026-11-23T14:30:00.000000Z"}`)

// startStdlibProxy starts this executable again as a plain net/http/httputil.ReverseProxy in
// front of upstream, in its own process like a router, and returns its base URL. The proxy does
// nothing but forward: no authentication, limits, routing, retries or metrics. Measured beside
// the router it shows what any Go HTTP hop costs on the machine, so the router's own work can be
// told apart from the hop's. stop ends it.
func startStdlibProxy(ctx context.Context, upstream string) (base string, stop func(), err error) {
	base, _, stop, err = startChild(ctx, stdlibProxyArg, upstream)
	return base, stop, err
}

// startEcho starts this executable again as a bare net/http server in its own process that
// answers every request at once from memory (200, a record-sized JSON body), and returns its
// base URL. Measured beside the others its latency is one HTTP round trip to another process
// and nothing else: the least that putting any process on a request's path costs on the
// machine, which is what a proxy adds at minimum. stop ends it.
func startEcho(ctx context.Context) (base string, stop func(), err error) {
	base, _, stop, err = startChild(ctx, echoArg, "")
	return base, stop, err
}

// startChild starts this executable with arg (and upstream, if any), reads the base URL it
// prints first, and returns it with the child's pid and a stop function; the child exits when
// its stdin closes.
func startChild(ctx context.Context, arg, upstream string) (base string, pid int, stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return "", 0, nil, err
	}
	args := []string{arg}
	if upstream != "" {
		args = append(args, upstream)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe() // the child exits when this closes (also when we die)
	if err != nil {
		return "", 0, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", 0, nil, err
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
		return "", 0, nil, fmt.Errorf("%s did not start within 10s", arg)
	case <-ctx.Done():
		stop()
		return "", 0, nil, ctx.Err()
	}
	if !validBase(base) {
		stop()
		return "", 0, nil, fmt.Errorf("%s: unexpected first line %q", arg, base)
	}
	return base, cmd.Process.Pid, stop, nil
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
	return serveUntilStdinCloses(ln, p)
}

// serveEcho is the echo child: listen on a loopback port, print the base URL, answer every
// request with 200 and echoBody until stdin closes.
func serveEcho() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	return serveUntilStdinCloses(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(echoBody)
	}))
}

// serveUntilStdinCloses prints ln's base URL on stdout (the parent's handshake) and serves h
// on it until stdin closes.
func serveUntilStdinCloses(ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); _ = srv.Close() }()
	fmt.Printf("http://%s\n", ln.Addr())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
