package nemesis

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/sim"
)

// fakeLauncher keeps processes in memory and records kills and restarts.
type fakeLauncher struct {
	mu    sync.Mutex
	procs []sim.ProcessInfo
	calls []string
}

func (l *fakeLauncher) Processes(context.Context) ([]sim.ProcessInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]sim.ProcessInfo(nil), l.procs...), nil
}

func (l *fakeLauncher) set(name string, running bool, call string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.procs {
		if l.procs[i].Name == name {
			l.procs[i].Running = running
			l.calls = append(l.calls, call+" "+name)
			return nil
		}
	}
	return fmt.Errorf("%w: %s", sim.ErrNoProcess, name)
}

func (l *fakeLauncher) Kill(_ context.Context, name string) error { return l.set(name, false, "kill") }
func (l *fakeLauncher) Restart(_ context.Context, name string) error {
	return l.set(name, true, "restart")
}
func (l *fakeLauncher) Partition(context.Context, string) error { return nil }
func (l *fakeLauncher) Heal(context.Context, string) error      { return nil }

// TestKillRelayAndNATS: kill-relay kills the API node of its region whose /metrics shows an
// active relay (not the first one), kill-nats the NATS server, both are restarted when healed
// (NATS first, and without waiting for a /readyz a NATS server has not), and the log names
// the node.
func TestKillRelayAndNATS(t *testing.T) {
	metrics := func(active string) http.Handler {
		return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/metrics":
				fmt.Fprintf(rw, "# HELP meridian_relay_active x\n# TYPE meridian_relay_active gauge\n"+
					"meridian_relay_active{shard=\"us-east-1\"} %s\nmeridian_relay_active{shard=\"us-east-2\"} 0\n", active)
			case "/readyz":
				rw.WriteHeader(http.StatusOK)
			}
		})
	}
	idle := httptest.NewServer(metrics("0"))
	defer idle.Close()
	holder := httptest.NewServer(metrics("1"))
	defer holder.Close()
	l := &fakeLauncher{procs: []sim.ProcessInfo{
		{Name: "us-east-api-1", Kind: sim.KindAPI, Region: "us-east", URL: idle.URL, Running: true},
		{Name: "us-east-api-2", Kind: sim.KindAPI, Region: "us-east", URL: holder.URL, Running: true},
		{Name: "nats-us-east", Kind: sim.KindNATS, Region: "us-east", URL: "nats://127.0.0.1:1", Running: true},
		{Name: "eu-west-api-1", Kind: sim.KindAPI, Region: "eu-west", URL: idle.URL, Running: true},
		{Name: "eu-west-api-2", Kind: sim.KindAPI, Region: "eu-west", URL: idle.URL, Running: true},
	}}
	start := time.Now()
	n := New(Config{Launcher: l, Cluster: &sim.ClusterFile{}, Now: func() time.Duration { return time.Since(start) }})
	n.Run(context.Background(), []Step{{At: 0, Hold: 10 * time.Millisecond, Faults: []Fault{
		{Kind: KillRelay, Target: "us-east"}, {Kind: KillNATS, Target: "nats-us-east"}}}})
	want := []string{"kill us-east-api-2", "kill nats-us-east", "restart nats-us-east", "restart us-east-api-2"}
	if strings.Join(l.calls, ",") != strings.Join(want, ",") {
		t.Errorf("calls %v, want %v", l.calls, want)
	}
	log := strings.Join(n.Log(), "\n")
	if !strings.Contains(log, "inject kill-relay us-east-api-2") || n.Injected() != 2 {
		t.Errorf("log:\n%s", log)
	}
	// Two nodes and no active relay in their metrics: the injection fails, and says so.
	l.calls = nil
	n.Run(context.Background(), []Step{{At: n.cfg.Now(), Hold: time.Second, Faults: []Fault{{Kind: KillRelay, Target: "eu-west"}}}})
	if len(l.calls) != 0 || !strings.Contains(strings.Join(n.Log(), "\n"), "inject kill-relay eu-west FAILED") {
		t.Errorf("calls %v, log:\n%s", l.calls, strings.Join(n.Log(), "\n"))
	}
	// One node: that one, whatever its metrics say.
	if name, err := n.relay(context.Background(), "us-west"); err == nil {
		t.Errorf("a region without API nodes gave %s", name)
	}
	l.procs = l.procs[:3]
	l.procs = append(l.procs, sim.ProcessInfo{Name: "eu-west-api-1", Kind: sim.KindAPI, Region: "eu-west", URL: "http://127.0.0.1:1", Running: true})
	if name, err := n.relay(context.Background(), "eu-west"); err != nil || name != "eu-west-api-1" {
		t.Errorf("relay(eu-west) = %q, %v", name, err)
	}
}
