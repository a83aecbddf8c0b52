package sim

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/meridian-dev/meridian/internal/topology"
)

// TestMapAddrsFrom: the move controller knows every router, its own region's first, and
// reaches the others through the latency proxies in latency mode (directly without).
func TestMapAddrsFrom(t *testing.T) {
	topo, err := topology.Load(filepath.Join(repoRoot(t), "deploy", "multi-region", "topology.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	regions := topo.Regions()
	from := regions[0]
	for _, latency := range []bool{false, true} {
		c := &Cluster{opts: Options{Latency: latency}, topo: topo}
		got := c.mapAddrsFrom(from)
		var want []string
		for _, n := range topo.Routers(from) {
			want = append(want, fmt.Sprintf("http://%s:%d", topo.Host(), n.HTTP))
		}
		for _, r := range regions[1:] {
			for _, n := range topo.Routers(r) {
				port := n.HTTP
				if latency {
					if port, err = topo.ProxyPort(from, r, n.HTTP); err != nil {
						t.Fatal(err)
					}
				}
				want = append(want, fmt.Sprintf("http://%s:%d", topo.Host(), port))
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("latency %v: mapAddrsFrom(%s) = %v, want %v", latency, from, got, want)
		}
		if n := len(topo.Routers(from)); len(got) <= n {
			t.Errorf("latency %v: %d addresses, want more than the %d of %s", latency, len(got), n, from)
		}
	}
}
