package main

// The bare fasthttp proxy of the proxy scenario (-baseline-fasthttp): what a Go reverse proxy
// costs per request on an event-loop-style HTTP/1.1 server and client instead of net/http's,
// with nothing of the router's work. Issue 16's spike: it tells whether the router could come
// within 1.5× of nginx's CPU per request on a leaner server at all.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/valyala/fasthttp"
)

// fastProxyArg, as the first argument, makes bench serve as the bare fasthttp proxy.
const fastProxyArg = "internal-fasthttp-proxy"

// fastProxyName is the bare fasthttp proxy's target (and process role) name.
const fastProxyName = "fasthttp-proxy"

// startFastProxy starts this executable again as a bare fasthttp reverse proxy in front of
// upstream (host:port), in its own process like a router, and returns its base URL and pid.
func startFastProxy(ctx context.Context, upstream string) (base string, pid int, stop func(), err error) {
	return startChild(ctx, fastProxyArg, upstream)
}

// serveFastProxy is the child side: listen on a loopback port, print the base URL, forward
// every request to upstream over keep-alive connections until stdin closes. It forwards as a
// proxy must and no more: hop-by-hop headers dropped, X-Forwarded-For appended, 502 when the
// upstream cannot be reached.
func serveFastProxy(upstream string) error {
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return fmt.Errorf("%w: fasthttp proxy upstream %q: want host:port", errUsage, upstream)
	}
	hc := &fasthttp.HostClient{Addr: upstream, MaxConns: 1024, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, MaxIdleConnDuration: 60 * time.Second}
	h := func(ctx *fasthttp.RequestCtx) {
		req := &ctx.Request
		for _, k := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
			req.Header.Del(k)
		}
		ip := ctx.RemoteIP().String()
		if prior := req.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
			ip = string(prior) + ", " + ip
		}
		req.Header.Set("X-Forwarded-For", ip)
		if err := hc.Do(req, &ctx.Response); err != nil {
			ctx.ResetBody()
			ctx.Error("upstream unreachable", fasthttp.StatusBadGateway)
		}
	}
	srv := &fasthttp.Server{Handler: h, ReadTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		NoDefaultServerHeader: true, NoDefaultDate: false}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); _ = srv.Shutdown() }()
	fmt.Printf("http://%s\n", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
