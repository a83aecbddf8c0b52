package topology

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestNATSConfigParses: the compose file's nats-server configuration is what nats-server
// accepts, with JetStream's store, the launcher's fsync interval (docs/events.md) and a gateway
// to every region.
func TestNATSConfigParses(t *testing.T) {
	topo := loadRepo(t)
	for _, r := range topo.Regions() {
		f := filepath.Join(t.TempDir(), "nats.conf")
		if err := os.WriteFile(f, []byte(topo.NATSConfig(r)), 0o644); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Fatalf("%s: %v\n%s", r, err, topo.NATSConfig(r))
		}
		if !o.JetStream || o.StoreDir != "/data" || o.SyncInterval != 10*time.Second || o.SyncAlways {
			t.Errorf("%s: jetstream %v store %q sync %v always %v", r, o.JetStream, o.StoreDir, o.SyncInterval, o.SyncAlways)
		}
		if o.Gateway.Name != r || len(o.Gateway.Gateways) != len(topo.Regions()) {
			t.Errorf("%s: gateway %q with %d remotes", r, o.Gateway.Name, len(o.Gateway.Gateways))
		}
	}
}
