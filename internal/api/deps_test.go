package api

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoDatabaseDriver: the HTTP layer depends on no database driver and no message bus client,
// directly or through another package (DESIGN.md §12: what a request does to Postgres is the
// records store's; the change stream comes through our own ChangeFeed, adapted by cmd/api).
func TestNoDatabaseDriver(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %q; the check proves nothing", deps)
	}
	for _, d := range deps {
		if strings.Contains(d, "pgx") || strings.Contains(d, "lib/pq") || strings.Contains(d, "nats-io") {
			t.Errorf("internal/api depends on %s", d)
		}
	}
}
