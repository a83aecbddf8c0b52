package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ClusterFile is .meridian/cluster.json, the endpoints of a running local cluster. Its shape
// is fixed by DESIGN.md §4a so scripts can rely on it; fields beyond the spec are additive.
type ClusterFile struct {
	Regions map[string]RegionEndpoints `json:"regions"`
	// DevJWTSecret is the HS256 secret (raw bytes) every router and API node accepts.
	DevJWTSecret string `json:"dev_jwt_secret"`
	// AdminToken is a JWT with scope "admin", valid for the life of the cluster.
	AdminToken string `json:"admin_token"`
	// ClusterToken guards the /internal/v1 endpoints between nodes.
	ClusterToken string `json:"cluster_token"`
	// Control is the launcher's own loopback HTTP endpoint (partition, heal, status).
	Control string `json:"control"`
	// Latency says whether cross-region links go through delaying proxies.
	Latency bool `json:"latency"`
	// Pid is the launcher (supervisor) process.
	Pid int `json:"pid"`
	// Dir is the cluster's state directory.
	Dir string `json:"dir"`
}

// RegionEndpoints are one region's endpoints.
type RegionEndpoints struct {
	// Router is the region's first router (the one a client of this region talks to).
	Router  string   `json:"router"`
	Routers []string `json:"routers"`
	// RouterLoop is the first router's event-loop listener and RouterLoops every router's, in
	// Routers' order; both absent unless the topology has router_loop_listen on.
	RouterLoop  string   `json:"router_loop,omitempty"`
	RouterLoops []string `json:"router_loops,omitempty"`
	API         []string `json:"api"`
	// Postgres has the DSNs of the region's primary (per shard homed here) and standbys.
	Postgres PostgresEndpoints `json:"postgres"`
	Redis    string            `json:"redis"`
	NATS     string            `json:"nats"`
	Metrics  []string          `json:"metrics"`
}

// PostgresEndpoints are a region's Postgres DSNs (superuser, for development only).
type PostgresEndpoints struct {
	// Primary is the region's primary cluster (postgres database).
	Primary string `json:"primary"`
	// Shards maps each shard homed here to its database on the primary.
	Shards map[string]string `json:"shards"`
	// Standbys maps a source region to this region's hot standby of it.
	Standbys map[string]string `json:"standbys"`
}

// ErrNoCluster is returned when no cluster file exists.
var ErrNoCluster = errors.New("sim: no cluster is running (no .meridian/cluster.json); start one with `make up`")

// WriteClusterFile writes f to dir/cluster.json atomically (0600: it holds secrets).
func WriteClusterFile(dir string, f *ClusterFile) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "cluster.json.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "cluster.json"))
}

// ReadClusterFile reads dir/cluster.json.
func ReadClusterFile(dir string) (*ClusterFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoCluster
	}
	if err != nil {
		return nil, err
	}
	var f ClusterFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("sim: %s/cluster.json: %w", dir, err)
	}
	return &f, nil
}
