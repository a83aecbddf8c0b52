package localsrv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Exclusive waits until no other process on the machine holds the machine-wide lock name
// (a file lock, flock(2), on os.TempDir()/meridian-<name>.lock), takes it, and returns the
// function that releases it. The lock dies with its process, so a crashed holder never blocks
// the next one.
//
// The test packages that run a whole three-region cluster of their own (internal/faults/suite,
// internal/moves/systemtest) take ClusterSuites around their cluster: `go test -p 2` otherwise
// runs the two at once, twenty-odd processes with workloads on two CPUs, and on a slower host
// both failed on timeouts (local Redis reads, Postgres connections through the latency
// proxies, /readyz) that neither shows alone (the moves package: 494 s and three failed
// subtests beside the fault suite, 156 s and none alone).
func Exclusive(ctx context.Context, name string) (release func(), err error) {
	path := filepath.Join(os.TempDir(), "meridian-"+name+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("localsrv: lock %s: %w", name, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("localsrv: lock %s: %w", name, err)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			f.Close()
			return nil, fmt.Errorf("localsrv: waiting for lock %s: %w", name, err)
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// ClusterSuites is the Exclusive lock of the test packages that run a cluster of their own.
const ClusterSuites = "cluster-suites"
