package localsrv

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// natsReadyTimeout bounds how long a server may take to accept connections, and a gateway
// mesh to connect fully.
const natsReadyTimeout = 10 * time.Second

// natsMeshTimeout bounds how long a gateway mesh may take to connect and elect a JetStream
// meta leader (nats-server's Raft election takes several seconds by design).
const natsMeshTimeout = 30 * time.Second

// NATSOptions configure StartNATS. The zero value is a JetStream-enabled server on a random
// port of 127.0.0.1 with its store in a temp dir removed at shutdown.
type NATSOptions struct {
	// Name is the server name; "" = generated. With a Gateway it must be unique in the mesh.
	Name string
	// Dir is the JetStream store directory; "" = a temp dir removed when the server shuts down.
	Dir string
	// Port is the client port on 127.0.0.1; 0 = random.
	Port int
	// Gateway joins the server to others by gateways; nil = standalone.
	Gateway *NATSGateway
	// Log receives the server's notices, warnings and errors; nil = silent. (Not the
	// server's own logger: that one exits the process on a fatal error.)
	Log *slog.Logger
	// SyncInterval is how often JetStream fsyncs its files; 0 = nats-server's default (2 m).
	// A process crash loses nothing either way (written data is in the page cache); a machine
	// losing power loses up to this much. Meridian's consumers repair such a loss from the
	// outbox (docs/events.md), so the launcher uses 10 s.
	SyncInterval time.Duration
}

// natsLogger adapts slog to server.Logger. Fatalf logs an error and never exits.
type natsLogger struct{ l *slog.Logger }

var _ server.Logger = natsLogger{}

func (n natsLogger) Noticef(format string, v ...any) { n.l.Info(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Errorf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }

// NATSGateway is one server's gateway configuration: its gateway (region) name, the port it
// accepts gateway connections on, and where to reach every other gateway. The launcher points
// Remotes at its latency proxies; StartNATSGateways fills it in directly.
type NATSGateway struct {
	// Name is the gateway (cluster) name, one per region.
	Name string
	// Port is the gateway listen port on 127.0.0.1; 0 = random (then peers can't be told it
	// up front, so only use 0 for a server that only dials out).
	Port int
	// Remotes maps other gateway names to "host:port".
	Remotes map[string]string
	// ClusterPort is the route port of this region's cluster; 0 = a free port. A region is a
	// one-server cluster, but clustered JetStream (which a gateway mesh implies: one meta
	// group across regions) refuses to start without a configured route, so the server is
	// given a route to its own cluster port, which nats-server recognises and ignores.
	ClusterPort int
}

// StartNATS starts an in-process nats-server with JetStream on and returns it once it accepts
// connections. Stop it with StopNATS (or Shutdown, which removes a temp store dir
// asynchronously).
func StartNATS(opts NATSOptions) (*server.Server, error) {
	dir, ownDir := opts.Dir, false
	if dir == "" {
		d, err := os.MkdirTemp("", "meridian-nats-*")
		if err != nil {
			return nil, fmt.Errorf("localsrv: nats store dir: %w", err)
		}
		dir, ownDir = d, true
	}
	o := &server.Options{
		ServerName:         opts.Name,
		Host:               "127.0.0.1",
		Port:               opts.Port,
		NoLog:              opts.Log == nil,
		NoSigs:             true,
		JetStream:          true,
		StoreDir:           dir,
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  1 << 30,
		SyncInterval:       opts.SyncInterval,
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	if g := opts.Gateway; g != nil {
		o.Cluster.Name = g.Name // JetStream's clustered mode needs it fixed, not dynamic
		cport := g.ClusterPort
		if cport == 0 {
			p, err := FreePort()
			if err != nil {
				return nil, err
			}
			cport = p
		}
		o.Cluster.Host = "127.0.0.1"
		o.Cluster.Port = cport
		o.Routes = []*url.URL{{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", cport)}}
		o.Gateway = server.GatewayOpts{Name: g.Name, Host: "127.0.0.1", Port: g.Port}
		if o.Gateway.Port == 0 {
			o.Gateway.Port = server.RANDOM_PORT
		}
		names := make([]string, 0, len(g.Remotes))
		for n := range g.Remotes {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			u, err := url.Parse("nats://" + g.Remotes[n])
			if err != nil {
				return nil, fmt.Errorf("localsrv: gateway %s address %q: %w", n, g.Remotes[n], err)
			}
			o.Gateway.Gateways = append(o.Gateway.Gateways, &server.RemoteGatewayOpts{Name: n, URLs: []*url.URL{u}})
		}
	}
	s, err := server.NewServer(o)
	if err != nil {
		if ownDir {
			os.RemoveAll(dir)
		}
		return nil, fmt.Errorf("localsrv: nats server: %w", err)
	}
	if opts.Log != nil {
		s.SetLoggerV2(natsLogger{opts.Log.With("nats_server", opts.Name)}, false, false, false)
	}
	if ownDir {
		ownedDirs.Store(s, dir)
		go func() {
			// Fallback for callers that only call Shutdown; StopNATS removes it synchronously.
			s.WaitForShutdown()
			if d, ok := ownedDirs.LoadAndDelete(s); ok {
				os.RemoveAll(d.(string))
			}
		}()
	}
	go s.Start()
	if !s.ReadyForConnections(natsReadyTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("localsrv: nats server %q not ready after %v (ports taken?)", opts.Name, natsReadyTimeout)
	}
	return s, nil
}

// StartNATSGateways starts one in-process server per region, each named after its region and
// joined to all others by gateways on 127.0.0.1, with JetStream stores under dir/<region>
// ("" = temp dirs). It returns once every server has outbound and inbound gateway connections
// to every other and JetStream has a meta leader. On error nothing is left running.
func StartNATSGateways(regions []string, dir string) (map[string]*server.Server, error) {
	if len(regions) == 0 {
		return nil, fmt.Errorf("%w: no regions", ErrInvalidName)
	}
	seen := map[string]bool{}
	for _, r := range regions {
		// The region names the server, its gateway (cluster) and its store directory; the map's
		// region rule is narrower than what nats-server and a path accept, so no stricter
		// rule is needed here.
		if !ids.ValidRegion(r) || seen[r] {
			return nil, fmt.Errorf("%w: region %q (duplicate, or not %s)", ErrInvalidName, r, ids.NamePattern)
		}
		seen[r] = true
	}
	var lastErr error
	// Few attempts: a retry only helps when a chosen port was taken meanwhile.
	for attempt := 0; attempt < 3; attempt++ {
		servers, err := startMesh(regions, dir)
		if err == nil {
			return servers, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// startMesh is one attempt at StartNATSGateways with freshly chosen gateway ports.
func startMesh(regions []string, dir string) (_ map[string]*server.Server, err error) {
	ports := map[string]int{}
	for _, r := range regions {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ports[r] = p
	}
	servers := map[string]*server.Server{}
	defer func() {
		if err != nil {
			_ = ShutdownNATS(servers) // the start error matters more
		}
	}()
	for _, r := range regions {
		remotes := map[string]string{}
		for _, o := range regions {
			if o != r {
				remotes[o] = fmt.Sprintf("127.0.0.1:%d", ports[o])
			}
		}
		opts := NATSOptions{Name: r, Gateway: &NATSGateway{Name: r, Port: ports[r], Remotes: remotes}}
		if dir != "" {
			opts.Dir = dir + string(os.PathSeparator) + r
		}
		s, err := StartNATS(opts)
		if err != nil {
			return nil, err
		}
		servers[r] = s
	}
	if err := WaitNATSMesh(servers, natsMeshTimeout); err != nil {
		return nil, err
	}
	return servers, nil
}

// WaitNATSMesh waits until every server has an outbound and an inbound gateway connection to
// each of the others and (when JetStream is clustered) the servers agree on a meta leader.
func WaitNATSMesh(servers map[string]*server.Server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	want := len(servers) - 1
	for {
		err := meshState(servers, want)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("localsrv: nats gateway mesh not ready after %v: %w", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func meshState(servers map[string]*server.Server, want int) error {
	var problems []string
	leaders := 0
	for name, s := range servers {
		if n := s.NumOutboundGateways(); n < want {
			problems = append(problems, fmt.Sprintf("%s: %d/%d outbound", name, n, want))
		}
		gz, err := s.Gatewayz(&server.GatewayzOptions{})
		if err != nil {
			return err
		}
		if n := len(gz.InboundGateways); n < want {
			problems = append(problems, fmt.Sprintf("%s: %d/%d inbound", name, n, want))
		}
		if !s.JetStreamEnabled() {
			problems = append(problems, name+": jetstream off")
		} else if s.JetStreamIsClustered() {
			if s.JetStreamIsLeader() {
				leaders++
			}
			if !s.JetStreamIsCurrent() {
				problems = append(problems, name+": jetstream meta not current")
			}
		}
	}
	if want > 0 && leaders != 1 {
		problems = append(problems, fmt.Sprintf("%d jetstream meta leaders", leaders))
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// ownedDirs maps a server started by StartNATS to the temp store dir it created.
var ownedDirs sync.Map

// StopNATS shuts s down, waits for it, and removes the store directory StartNATS created for
// it (a caller-given NATSOptions.Dir is left alone). Safe to call more than once.
func StopNATS(s *server.Server) error {
	s.Shutdown()
	s.WaitForShutdown()
	if d, ok := ownedDirs.LoadAndDelete(s); ok {
		if err := os.RemoveAll(d.(string)); err != nil {
			return fmt.Errorf("localsrv: remove nats store: %w", err)
		}
	}
	return nil
}

// ShutdownNATS stops every server (see StopNATS), all at once, and returns the first error.
func ShutdownNATS(servers map[string]*server.Server) error {
	for _, s := range servers {
		s.Shutdown()
	}
	var first error
	for _, s := range servers {
		if err := StopNATS(s); err != nil && first == nil {
			first = err
		}
	}
	return first
}
