package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// collection is where bench reads and writes.
const collection = "bench"

// setupWait bounds how long setup waits for a new tenant or record to become visible.
var setupWait = 15 * time.Second

// setup creates the tenant (when an admin token is known) and, for reads, the record to read,
// checks that every target answers the scenario's request, and returns the load targets.
func setup(ctx context.Context, p *plan, log io.Writer) ([]loadgen.Target, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	for _, ten := range p.tenants() {
		if p.adminToken == "" {
			fmt.Fprintf(log, "bench: no admin token; assuming tenant %s exists\n", ten.id)
			continue
		}
		if err := createTenant(ctx, client, p.setupBase, p.adminToken, ten, log); err != nil {
			return nil, err
		}
	}
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	accept := []string{"application/json"}
	ctype := []string{"application/json"}
	records := map[string]string{} // tenant -> id of the record to read

	var targets []loadgen.Target
	for _, t := range p.targets {
		auth := []string{"Bearer " + t.token}
		name := t.name
		rid := func(seq uint64) []string {
			return []string{"bench-" + runID + "-" + name + "-" + strconv.FormatUint(seq, 10)}
		}
		coll := t.base + "/v1/collections/" + collection + "/records"
		if p.scenario == scenarioPost {
			// One POST through the target first, so a target that cannot write fails setup.
			if _, err := createRecord(ctx, client, coll, t.token); err != nil {
				return nil, fmt.Errorf("target %s: %w", t.name, err)
			}
			targets = append(targets, loadgen.Target{Name: name, New: func(worker int, seq uint64) loadgen.Request {
				return loadgen.Request{
					Method: http.MethodPost, URL: coll,
					Header: http.Header{"Authorization": auth, "Accept": accept, "Content-Type": ctype, "X-Request-Id": rid(seq)},
					Body:   fmt.Appendf(nil, `{"data":{"worker":%d,"seq":%d,"note":"meridian bench"}}`, worker, seq),
				}
			}})
			continue
		}
		id, ok := records[t.tenant.id]
		if !ok {
			var err error
			// Writes go through the setup URL (a router), which sends them to the home region.
			if id, err = createRecord(ctx, client, p.setupBase+"/v1/collections/"+collection+"/records", t.token); err != nil {
				return nil, err
			}
			records[t.tenant.id] = id
			fmt.Fprintf(log, "bench: tenant %s reads record %s/%s\n", t.tenant.id, collection, id)
		}
		url := coll + "/" + id
		if err := waitReadable(ctx, client, url, t.token); err != nil {
			return nil, fmt.Errorf("target %s: %w", t.name, err)
		}
		// The proxy scenario measures a forwarded GET: with Cache-Control: no-cache the router's
		// edge does not answer it and every target's API node reads the store alike.
		noCache := p.scenario == scenarioProxy
		targets = append(targets, loadgen.Target{Name: name, New: func(_ int, seq uint64) loadgen.Request {
			h := http.Header{"Authorization": auth, "Accept": accept, "X-Request-Id": rid(seq)}
			if noCache {
				h["Cache-Control"] = noCacheValue
			}
			return loadgen.Request{Method: http.MethodGet, URL: url, Header: h}
		}})
	}
	return targets, nil
}

var noCacheValue = []string{"no-cache"}

// createTenant creates ten through the admin API at base, homed in ten.home when known. An
// existing tenant (409) is fine; a home elsewhere than ten.home is reported, since it changes
// what is measured.
func createTenant(ctx context.Context, client *http.Client, base, adminToken string, ten tenantSpec, log io.Writer) error {
	body := map[string]string{"id": ten.id}
	if ten.home != "" {
		body["region"] = ten.home
	}
	b, _ := json.Marshal(body)
	var status int
	var resp []byte
	err := poll(ctx, func() (bool, error) {
		var err error
		status, resp, err = send(ctx, client, http.MethodPost, base+"/admin/v1/tenants", adminToken, b)
		if err == nil && retryable(status) && status != http.StatusNotFound {
			err = fmt.Errorf("%d %s", status, bytes.TrimSpace(resp))
		}
		return err == nil, err // a map update or a node starting: try again
	})
	if err != nil {
		return fmt.Errorf("create tenant %s: %w", ten.id, err)
	}
	switch status {
	case http.StatusCreated:
		fmt.Fprintf(log, "bench: created tenant %s: %s\n", ten.id, bytes.TrimSpace(resp))
		return nil
	case http.StatusConflict:
		status, resp, err = send(ctx, client, http.MethodGet, base+"/admin/v1/tenants/"+ten.id, adminToken, nil)
		if err != nil || status != http.StatusOK {
			fmt.Fprintf(log, "bench: tenant %s exists (could not read it: %d %v)\n", ten.id, status, err)
			return nil
		}
		var got struct {
			HomeRegion string `json:"home_region"`
		}
		_ = json.Unmarshal(resp, &got) // best effort: only used for the warning below
		fmt.Fprintf(log, "bench: tenant %s exists, home region %q\n", ten.id, got.HomeRegion)
		if ten.home != "" && got.HomeRegion != "" && got.HomeRegion != ten.home {
			fmt.Fprintf(log, "bench: WARNING: tenant %s is homed in %s, not %s; the figures are for that home\n",
				ten.id, got.HomeRegion, ten.home)
		}
		return nil
	default:
		return fmt.Errorf("create tenant %s: %d %s", ten.id, status, bytes.TrimSpace(resp))
	}
}

// retryable says whether a setup request may succeed later: the tenant or record not yet
// visible, a map update in flight, rate limits or an overloaded or restarting node.
func retryable(status int) bool {
	switch status {
	case http.StatusNotFound, http.StatusMisdirectedRequest, http.StatusTooManyRequests,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// createRecord POSTs a record to url (a collection's records URL) and returns its id, retrying
// while the tenant is not yet visible.
func createRecord(ctx context.Context, client *http.Client, url, token string) (string, error) {
	var id string
	err := poll(ctx, func() (bool, error) {
		status, resp, err := send(ctx, client, http.MethodPost, url, token, []byte(`{"data":{"bench":true,"note":"setup"}}`))
		if err != nil {
			return false, err
		}
		if status != http.StatusCreated {
			err := fmt.Errorf("POST %s: %d %s", url, status, bytes.TrimSpace(resp))
			return !retryable(status), err
		}
		id, err = parseRecordID(resp)
		return true, err
	})
	return id, err
}

// waitReadable GETs url until it answers 200.
func waitReadable(ctx context.Context, client *http.Client, url, token string) error {
	return poll(ctx, func() (bool, error) {
		status, resp, err := send(ctx, client, http.MethodGet, url, token, nil)
		if err != nil {
			return false, err
		}
		if status != http.StatusOK {
			return !retryable(status), fmt.Errorf("GET %s: %d %s", url, status, bytes.TrimSpace(resp))
		}
		return true, nil
	})
}

// parseRecordID reads the id of a created record from the server's answer.
func parseRecordID(body []byte) (string, error) {
	var rec struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &rec); err != nil {
		return "", fmt.Errorf("created record: %w", err)
	}
	if !ids.ValidRecord(rec.ID) {
		return "", fmt.Errorf("created record has no valid id: %.200q", body)
	}
	return rec.ID, nil
}

// poll calls f until it reports done, returning its last error once setupWait has passed or at
// once when f says the error is final.
func poll(ctx context.Context, f func() (done bool, err error)) error {
	deadline := time.Now().Add(setupWait)
	for {
		done, err := f()
		if done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s: %w", setupWait, err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// send does one setup request and returns its status and (capped) body.
func send(ctx context.Context, client *http.Client, method, url, token string, body []byte) (int, []byte, error) {
	var rb io.Reader
	if body != nil {
		rb = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rb)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Request-Id", "bench-setup-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}
