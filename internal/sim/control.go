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
// POST /heal/{region} and GET /status. `sim partition` and `sim heal` call it.
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
				out[ch.name] = ch.cmd.Process.Pid
			}
		}
	}
	return out
}
