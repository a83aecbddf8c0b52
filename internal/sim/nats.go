package sim

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/meridian-dev/meridian/internal/localsrv"
)

// startNATS starts one in-process NATS server per region, JetStream on, joined by gateways.
// gatewayAddr(from, to) is the address region from dials to reach region to's gateway (a
// latency proxy in latency mode). It returns once the mesh is connected and JetStream has a
// meta leader.
func startNATS(regions []string, clientPort, gatewayPort func(string) int,
	gatewayAddr func(from, to string) string, dir string) (map[string]*server.Server, error) {
	out := map[string]*server.Server{}
	for _, r := range regions {
		remotes := map[string]string{}
		for _, other := range regions {
			if other != r {
				remotes[other] = gatewayAddr(r, other)
			}
		}
		s, err := localsrv.StartNATS(localsrv.NATSOptions{
			Name:    "nats-" + r,
			Dir:     filepath.Join(dir, r, "nats"),
			Port:    clientPort(r),
			Gateway: &localsrv.NATSGateway{Name: r, Port: gatewayPort(r), Remotes: remotes},
		})
		if err != nil {
			localsrv.ShutdownNATS(out)
			return nil, fmt.Errorf("nats %s: %w", r, err)
		}
		out[r] = s
	}
	if err := localsrv.WaitNATSMesh(out, 60*time.Second); err != nil {
		localsrv.ShutdownNATS(out)
		return nil, err
	}
	return out, nil
}
