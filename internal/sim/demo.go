package sim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// DemoRow is one request the demo made.
type DemoRow struct {
	Kind         string // "write" or "read"
	Tenant       string
	HomeRegion   string
	ViaRouter    string // region of the router the request went through
	Status       int
	ServedRegion string // X-Served-Region
	ReadSource   string // X-Read-Source
	Latency      time.Duration
}

// Demo creates one tenant homed in each region and, through every region's router, writes a
// record of each tenant and reads it back. It returns every request it made; an error means
// the cluster did not behave (a non-2xx answer or a missing header).
func Demo(ctx context.Context, f *ClusterFile, out io.Writer) ([]DemoRow, error) {
	regions := make([]string, 0, len(f.Regions))
	for r := range f.Regions {
		regions = append(regions, r)
	}
	sort.Strings(regions)
	client := &http.Client{Timeout: 10 * time.Second}
	var rows []DemoRow

	tenants := map[string]string{} // tenant -> home region
	for _, home := range regions {
		tenant := "demo-" + home
		body := fmt.Sprintf(`{"id":%q,"region":%q}`, tenant, home)
		st, _, _, err := call(ctx, client, http.MethodPost, f.Regions[home].Router+"/admin/v1/tenants", f.AdminToken, body, "")
		if err != nil {
			return rows, err
		}
		if st != http.StatusCreated && st != http.StatusConflict {
			return rows, fmt.Errorf("create tenant %s: status %d", tenant, st)
		}
		tenants[tenant] = home
	}
	names := make([]string, 0, len(tenants))
	for t := range tenants {
		names = append(names, t)
	}
	sort.Strings(names)

	for _, tenant := range names {
		tok, err := MintToken(f.DevJWTSecret, TokenSpec{Subject: "demo", Tenant: tenant})
		if err != nil {
			return rows, err
		}
		for _, via := range regions {
			router := f.Regions[via].Router
			id := "from-" + via
			url := router + "/v1/collections/notes/records/" + id
			body := fmt.Sprintf(`{"data":{"written_via":%q,"at":%q}}`, via, time.Now().UTC().Format(time.RFC3339Nano))
			// The read carries the write's Consistency-Token (read-your-writes, DESIGN.md §6), so
			// a standby that hasn't replayed the write yet can't answer with the old state.
			var consistency string
			for _, kind := range []string{"write", "read"} {
				method, b := http.MethodPut, body
				if kind == "read" {
					method, b = http.MethodGet, ""
				}
				t0 := time.Now()
				st, h, _, err := call(ctx, client, method, url, tok, b, consistency)
				if err != nil {
					return rows, err
				}
				row := DemoRow{Kind: kind, Tenant: tenant, HomeRegion: tenants[tenant], ViaRouter: via, Status: st,
					ServedRegion: h.Get("X-Served-Region"), ReadSource: h.Get("X-Read-Source"), Latency: time.Since(t0)}
				rows = append(rows, row)
				if st >= 300 {
					return rows, fmt.Errorf("%s %s via %s: status %d", method, url, via, st)
				}
				if row.ServedRegion == "" {
					return rows, fmt.Errorf("%s %s via %s: no X-Served-Region", method, url, via)
				}
				if kind == "write" {
					if consistency = h.Get("Consistency-Token"); consistency == "" {
						return rows, fmt.Errorf("%s %s via %s: no Consistency-Token", method, url, via)
					}
				}
			}
		}
	}
	if out != nil {
		printDemo(out, rows)
	}
	if err := demoCache(ctx, f, client, names[0], tenants[names[0]], regions, out); err != nil {
		return rows, err
	}
	return rows, nil
}

// demoCache shows the read cache and an invalidation crossing regions: through another
// region's router a record is read until that region's cache answers, then it is updated
// through the home region's router and read again until the new version shows, and the
// tenant's change stream is read in that region. An error means the cache never answered, the
// new version never arrived, or the stream missed the write.
func demoCache(ctx context.Context, f *ClusterFile, client *http.Client, tenant, home string, regions []string, out io.Writer) error {
	reader := regions[len(regions)-1]
	if reader == home {
		reader = regions[0]
	}
	if out == nil {
		out = io.Discard
	}
	tok, err := MintToken(f.DevJWTSecret, TokenSpec{Subject: "demo", Tenant: tenant})
	if err != nil {
		return err
	}
	url := func(region string) string { return f.Regions[region].Router + "/v1/collections/notes/records/cached" }
	put := func(v int) (string, error) {
		st, h, _, err := call(ctx, client, http.MethodPut, url(home), tok, fmt.Sprintf(`{"data":{"v":%d}}`, v), "")
		if err != nil {
			return "", err
		}
		if st >= 300 {
			return "", fmt.Errorf("cache demo: PUT via %s: status %d", home, st)
		}
		return h.Get("ETag"), nil
	}
	fmt.Fprintf(out, "\ncache and invalidation: tenant %s (home %s), read through %s\n", tenant, home, reader)
	etag, err := put(1)
	if err != nil {
		return err
	}
	// Read until the reader region's cache answers (the first reads fill it; the standby must
	// have replayed the write and the relay's heartbeats must have reached the region, and a
	// cache serves only while they arrive within -cache-max-lag, 1 s). 45 s: on a machine
	// running other clusters beside it (CI runs three at once) heartbeats came later than that
	// for the whole of an earlier 15 s wait.
	var seq []string
	deadline := time.Now().Add(45 * time.Second)
	for {
		st, h, _, err := call(ctx, client, http.MethodGet, url(reader), tok, "", "")
		if err != nil {
			return err
		}
		src := h.Get("X-Read-Source")
		seq = append(seq, fmt.Sprintf("%d %s %s", st, h.Get("ETag"), src))
		if st == http.StatusOK && src == "cache" && h.Get("ETag") == etag {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cache demo: %s never answered from its cache: %q", reader, seq)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(out, "  reads via %s until cached: %s\n", reader, strings.Join(seq, ", "))
	etag2, err := put(2)
	if err != nil {
		return err
	}
	acked := time.Now()
	var polls int
	for {
		st, h, _, err := call(ctx, client, http.MethodGet, url(reader), tok, "", "")
		if err != nil {
			return err
		}
		polls++
		if st == http.StatusOK && h.Get("ETag") == etag2 {
			fmt.Fprintf(out, "  updated via %s; %s answered the new version %s after %s (%d reads; X-Read-Source: %s)\n",
				home, reader, etag2, time.Since(acked).Round(time.Millisecond), polls, h.Get("X-Read-Source"))
			break
		}
		if time.Since(acked) > 10*time.Second {
			return fmt.Errorf("cache demo: %s still answers %s 10 s after the update to %s", reader, h.Get("ETag"), etag2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return demoChanges(ctx, f.Regions[reader].Router, tok, reader, etag2, out)
}

// demoChanges reads the tenant's change stream through router from the beginning until it
// shows the record "cached" at version etag, and prints what it received.
func demoChanges(ctx context.Context, router, tok, region, etag string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, router+"/v1/changes", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Last-Event-ID", "0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cache demo: /v1/changes via %s: %w", region, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cache demo: /v1/changes via %s: status %d", region, resp.StatusCode)
	}
	want := fmt.Sprintf(`"id":"cached","op":"update","version":%s}`, strings.Trim(etag, `"`))
	sc := bufio.NewScanner(resp.Body)
	var n int
	var id string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			n++
			if strings.HasSuffix(line, want) {
				fmt.Fprintf(out, "  /v1/changes via %s from Last-Event-ID 0: %d events in order; the update is event %s: %s\n",
					region, n, id, strings.TrimPrefix(line, "data: "))
				return nil
			}
		}
	}
	return fmt.Errorf("cache demo: /v1/changes via %s ended after %d events without the update (%v)", region, n, sc.Err())
}

// call makes one request with a bearer token, an optional JSON body and an optional
// Consistency-Token.
func call(ctx context.Context, c *http.Client, method, url, token, body, consistency string) (int, http.Header, []byte, error) {
	var r io.Reader
	if body != "" {
		r = bytes.NewBufferString(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if consistency != "" {
		req.Header.Set("Consistency-Token", consistency)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}

// printDemo prints every request and then the median latency per request kind and locality.
func printDemo(w io.Writer, rows []DemoRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tTENANT (HOME)\tVIA ROUTER\tSTATUS\tSERVED BY\tREAD SOURCE\tLATENCY")
	for _, r := range rows {
		src := r.ReadSource
		if src == "" {
			src = "-"
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%d\t%s\t%s\t%s\n", r.Kind, r.Tenant, r.HomeRegion, r.ViaRouter,
			r.Status, r.ServedRegion, src, r.Latency.Round(100*time.Microsecond))
	}
	tw.Flush()

	groups := map[string][]time.Duration{}
	for _, r := range rows {
		where := "home region"
		if r.ViaRouter != r.HomeRegion {
			where = "other region"
		}
		k := r.Kind + " via " + where
		groups[k] = append(groups[k], r.Latency)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUEST KIND\tCOUNT\tMEDIAN")
	for _, k := range keys {
		d := groups[k]
		slices.Sort(d)
		fmt.Fprintf(tw, "%s\t%d\t%s\n", k, len(d), d[len(d)/2].Round(100*time.Microsecond))
	}
	tw.Flush()
}
