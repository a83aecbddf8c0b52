package sim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meridian-dev/meridian/internal/localsrv"
)

// natsSyncInterval is how often the cluster's JetStream fsyncs (docs/events.md: a process
// crash loses nothing, a power loss up to this much, which consumers repair from the outbox).
const natsSyncInterval = 10 * time.Second

// startNATS starts one NATS server per region as a child process (`sim nats`, so the fault
// suite can SIGKILL and restart it like any other process), JetStream on, joined by gateways;
// region from dials region to's gateway at c.addr(from, to, …) (a latency proxy in latency
// mode). It returns once every server's JetStream answers (a meta leader is elected).
func (c *Cluster) startNATS(ctx context.Context) error {
	bin := filepath.Join(c.opts.BinDir, "sim")
	for _, r := range c.regions() {
		dir, err := c.regionDir(r, "nats")
		if err != nil {
			return err
		}
		cport, err := localsrv.FreePort()
		if err != nil {
			return err
		}
		args := []string{"nats", "-name", "nats-" + r, "-store", filepath.Join(dir, "store"),
			"-port", strconv.Itoa(c.ports(r).NATSClient), "-gateway", r,
			"-gateway-port", strconv.Itoa(c.ports(r).NATSGateway), "-cluster-port", strconv.Itoa(cport),
			"-sync-interval", natsSyncInterval.String()}
		for _, other := range c.regions() {
			if other != r {
				args = append(args, "-remote", other+"="+c.addr(r, other, c.ports(other).NATSGateway))
			}
		}
		ch, err := startChild("nats-"+r, bin, args, nil, filepath.Join(dir, "nats.log"))
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.nats[r] = ch
		c.mu.Unlock()
		c.onStop(func() { ch.stop(10 * time.Second) })
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for _, r := range c.regions() {
		if err := waitJetStream(ctx, c.natsURL(r)); err != nil {
			return fmt.Errorf("nats %s: %w\n%s", r, err, c.nats[r].logTail(10))
		}
	}
	return nil
}

func (c *Cluster) natsURL(region string) string {
	return fmt.Sprintf("nats://%s:%d", c.topo.Host(), c.ports(region).NATSClient)
}

// waitJetStream polls url until its JetStream answers an account info request, which needs a
// meta leader, so the gateway mesh is up.
func waitJetStream(ctx context.Context, url string) error {
	var last error
	for {
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err == nil {
			js, _ := jetstream.New(nc)
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = js.AccountInfo(actx)
			cancel()
			nc.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("jetstream not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RunNATS is `sim nats`: one region's NATS server in this process until SIGTERM or SIGINT.
// The launcher runs it as a child; it is not meant to be typed.
func RunNATS(args []string) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	name := fs.String("name", "", "server name")
	store := fs.String("store", "", "JetStream store directory")
	port := fs.Int("port", 0, "client port on 127.0.0.1")
	gw := fs.String("gateway", "", "gateway (region) name")
	gwPort := fs.Int("gateway-port", 0, "gateway port")
	cport := fs.Int("cluster-port", 0, "route port of the one-server cluster")
	sync := fs.Duration("sync-interval", natsSyncInterval, "JetStream fsync interval")
	remotes := map[string]string{}
	fs.Func("remote", "other gateway as name=host:port (repeatable)", func(v string) error {
		n, a, ok := strings.Cut(v, "=")
		if !ok || n == "" || a == "" {
			return fmt.Errorf("%q is not name=host:port", v)
		}
		remotes[n] = a
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || *store == "" || *port == 0 || *gw == "" {
		return errors.New("nats: -name, -store, -port and -gateway are required")
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	s, err := localsrv.StartNATS(localsrv.NATSOptions{Name: *name, Dir: *store, Port: *port, Log: log, SyncInterval: *sync,
		Gateway: &localsrv.NATSGateway{Name: *gw, Port: *gwPort, Remotes: remotes, ClusterPort: *cport}})
	if err != nil {
		return err
	}
	names := make([]string, 0, len(remotes))
	for n := range remotes {
		names = append(names, n)
	}
	sort.Strings(names)
	log.Info("nats ready", "name", *name, "url", s.ClientURL(), "gateways", names)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}
