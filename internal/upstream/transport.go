package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

type regionsKey struct{}

// WithRegions returns a context telling Transport which regions may serve the request, in
// order of preference (e.g. local region first, then the home region for reads).
func WithRegions(ctx context.Context, regions ...string) context.Context {
	return context.WithValue(ctx, regionsKey{}, regions)
}

// statusError is a 502/503/504 answer, treated as a node failure.
type statusError struct{ code int }

func (e statusError) Error() string { return fmt.Sprintf("upstream: status %d", e.code) }

// Transport returns an http.RoundTripper for httputil.ReverseProxy that sends each request to
// a node chosen by the Pool (regions from WithRegions), through base (nil =
// http.DefaultTransport). Connection errors and 502/503/504 answers count as node failures and
// are retried on another node for idempotent requests (see Idempotent); the last answer or
// error is returned. ErrSaturated and ErrNoUpstream are returned as errors for the proxy's
// ErrorHandler to map to 503 + Retry-After.
func (p *Pool) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{p: p, base: base}
}

type transport struct {
	p    *Pool
	base http.RoundTripper
}

func (tr *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	regions, _ := req.Context().Value(regionsKey{}).([]string)
	if len(regions) == 0 {
		return nil, ErrNoRegion
	}
	idem := Idempotent(req.Method, req.Header)
	getBody := req.GetBody
	if idem && req.Body != nil && req.Body != http.NoBody && getBody == nil {
		// Buffer small bodies so a retry can resend them; larger ones get one attempt.
		buf, err := io.ReadAll(io.LimitReader(req.Body, tr.p.cfg.MaxBufferedBody+1))
		if err != nil {
			return nil, fmt.Errorf("upstream: read request body: %w", err)
		}
		if int64(len(buf)) > tr.p.cfg.MaxBufferedBody {
			idem = false
			req.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
		} else {
			_ = req.Body.Close()
			getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
		}
	}
	var resp *http.Response
	first := true
	err := tr.p.Do(req.Context(), Call{Regions: regions, Idempotent: idem}, func(ctx context.Context, t Target) error {
		out := req.Clone(ctx)
		if getBody != nil {
			b, err := getBody()
			if err != nil {
				return Permanent(err)
			}
			out.Body = b
		} else if !first && req.Body != nil && req.Body != http.NoBody {
			return Permanent(errors.New("upstream: body cannot be replayed"))
		}
		first = false
		out.URL.Scheme, out.URL.Host = "http", t.Addr
		if s, h, ok := strings.Cut(t.Addr, "://"); ok {
			out.URL.Scheme, out.URL.Host = s, h
		}
		out.Host = ""
		r, err := tr.base.RoundTrip(out)
		if err != nil {
			return err
		}
		if resp != nil {
			_ = resp.Body.Close() // an earlier failed answer superseded by this attempt
		}
		resp = r
		switch r.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return statusError{r.StatusCode}
		}
		return nil
	})
	if resp != nil {
		var se statusError
		if err == nil || errors.As(err, &se) {
			return resp, nil // the upstream's own 502/503/504 is passed through as is
		}
		_ = resp.Body.Close()
	}
	return nil, err
}
