package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"
)

// startControl serves the launcher's loopback control API: POST /partition/{region},
// POST /heal/{region}, GET /status, and for the fault suite GET /processes, POST /kill/{name}
// and POST /restart/{name}. `sim partition` and `sim heal` call it; Control is its client.
func (c *Cluster) startControl() error {
	ln, err := net.Listen("tcp", c.topo.Host()+":0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /partition/{region}", func(w http.ResponseWriter, r *http.Request) {
		c.handleLink(w, r.PathValue("region"), true)
	})
	mux.HandleFunc("POST /heal/{region}", func(w http.ResponseWriter, r *http.Request) {
		c.handleLink(w, r.PathValue("region"), false)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.Status())
	})
	mux.HandleFunc("GET /processes", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.Processes())
	})
	mux.HandleFunc("POST /kill/{name}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, c.Kill(r.PathValue("name")))
	})
	mux.HandleFunc("POST /restart/{name}", func(w http.ResponseWriter, r *http.Request) {
		answer(w, c.Restart(r.Context(), r.PathValue("name")))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	c.control = "http://" + ln.Addr().String()
	c.onStop(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return nil
}

// ErrNoLatency is returned by Partition and Heal when the cluster runs without proxies.
var ErrNoLatency = errors.New("sim: partitions need the latency proxies; start the cluster with --latency")

// Partition cuts every cross-region link of region (existing connections included).
func (c *Cluster) Partition(region string) error {
	if err := c.checkRegion(region); err != nil {
		return err
	}
	if c.proxies == nil {
		return ErrNoLatency
	}
	c.proxies.Partition(region)
	return nil
}

// Heal restores the links Partition cut.
func (c *Cluster) Heal(region string) error {
	if err := c.checkRegion(region); err != nil {
		return err
	}
	if c.proxies == nil {
		return ErrNoLatency
	}
	return c.proxies.Heal(region)
}

func (c *Cluster) checkRegion(region string) error {
	if !slices.Contains(c.regions(), region) {
		return fmt.Errorf("sim: unknown region %q (regions: %v)", region, c.regions())
	}
	return nil
}

// answer writes {} for a nil err, else 404 (no such process), 409 (still running) or 500 and
// {"error": ...}.
func answer(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err == nil {
		_, _ = w.Write([]byte("{}\n"))
		return
	}
	switch {
	case errors.Is(err, ErrNoProcess):
		w.WriteHeader(http.StatusNotFound)
	case errors.Is(err, ErrRunning):
		w.WriteHeader(http.StatusConflict)
	default:
		w.WriteHeader(http.StatusInternalServerError)
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

func (c *Cluster) handleLink(w http.ResponseWriter, region string, cut bool) {
	var err error
	if cut {
		err = c.Partition(region)
	} else {
		err = c.Heal(region)
	}
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(c.Status())
}

// Status is what GET /status answers: which processes run and which regions are cut off.
type Status struct {
	Processes   map[string]bool `json:"processes"`
	Partitioned []string        `json:"partitioned"`
}

// Status reports the liveness of every child process and the partitioned regions.
func (c *Cluster) Status() Status {
	st := Status{Processes: map[string]bool{}, Partitioned: []string{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, group := range []map[string][]*child{c.routers, c.apis} {
		for _, cs := range group {
			for _, ch := range cs {
				st.Processes[ch.name] = ch.running()
			}
		}
	}
	if c.proxies != nil {
		for _, r := range c.regions() {
			if c.proxies.Partitioned(r) {
				st.Partitioned = append(st.Partitioned, r)
			}
		}
	}
	return st
}

// pids returns the pid of every process the cluster runs, by name (for leak checks).
func (c *Cluster) pids() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for r, pg := range c.primary {
		out["postgres-"+r] = pg.Pid()
	}
	for r, m := range c.standby {
		for src, sb := range m {
			out["standby-"+r+"-of-"+src] = sb.Pid()
		}
	}
	for r, rd := range c.redis {
		out["redis-"+r] = rd.Pid()
	}
	for _, group := range []map[string][]*child{c.routers, c.apis} {
		for _, cs := range group {
			for _, ch := range cs {
				out[ch.name] = ch.pid()
			}
		}
	}
	return out
}

// Control is a client of a running launcher's control endpoint (ClusterFile.Control), for a
// process other than the launcher (the fault suite's command against `make up`'s cluster). It
// offers what *Cluster offers in-process.
type Control struct {
	// URL is the control endpoint's base URL.
	URL string
	// Client makes the requests; nil means a client with a 2-minute timeout (a Postgres
	// restart waits for crash recovery).
	Client *http.Client
}

func (k Control) do(ctx context.Context, method, path string, out any) error {
	client := k.Client
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Minute}
	}
	req, err := http.NewRequestWithContext(ctx, method, k.URL+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("sim: control %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		err := fmt.Errorf("sim: control %s %s: %s: %s", method, path, resp.Status, e.Error)
		switch resp.StatusCode {
		case http.StatusNotFound:
			err = fmt.Errorf("%w (%v)", ErrNoProcess, err)
		case http.StatusConflict:
			err = fmt.Errorf("%w (%v)", ErrRunning, err)
		}
		return err
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Processes is Cluster.Processes through the control endpoint.
func (k Control) Processes(ctx context.Context) ([]ProcessInfo, error) {
	var ps []ProcessInfo
	err := k.do(ctx, http.MethodGet, "/processes", &ps)
	return ps, err
}

// Kill is Cluster.Kill through the control endpoint.
func (k Control) Kill(ctx context.Context, name string) error {
	return k.do(ctx, http.MethodPost, "/kill/"+name, nil)
}

// Restart is Cluster.Restart through the control endpoint.
func (k Control) Restart(ctx context.Context, name string) error {
	return k.do(ctx, http.MethodPost, "/restart/"+name, nil)
}

// Partition is Cluster.Partition through the control endpoint.
func (k Control) Partition(ctx context.Context, region string) error {
	return k.do(ctx, http.MethodPost, "/partition/"+region, nil)
}

// Heal is Cluster.Heal through the control endpoint.
func (k Control) Heal(ctx context.Context, region string) error {
	return k.do(ctx, http.MethodPost, "/heal/"+region, nil)
}
