package sim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
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
	return rows, nil
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
