package systemtest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// frontEnv names the front a child run of this package serves its routers with.
const frontEnv = "MERIDIAN_TEST_FRONT"

// httpFront says whether the test routers serve with net/http alone (the child run of
// TestSuiteOnNetHTTP) rather than cmd/router's default, the event-loop front.
func httpFront() bool { return os.Getenv(frontEnv) == "http" }

// TestSuiteOnNetHTTP runs this package's tests again, in a child process, with every test
// router's port served by net/http alone (cmd/router's -front http): the suite judges both
// fronts, the event loop in the parent's run.
func TestSuiteOnNetHTTP(t *testing.T) {
	if httpFront() {
		return // this is the child's run
	}
	if testing.Short() {
		t.Skip("runs the package's suite again; run without -short")
	}
	cmd := exec.Command(os.Args[0], "-test.count=1", "-test.skip=^TestSuiteOnNetHTTP$", "-test.timeout=10m", "-test.v")
	cmd.Env = append(os.Environ(), frontEnv+"=http")
	out, err := cmd.CombinedOutput()
	if err != nil {
		lines := strings.Split(string(out), "\n")
		t.Fatalf("the suite with net/http as the front: %v\n%s", err, strings.Join(lines[max(0, len(lines)-80):], "\n"))
	}
	if !strings.Contains(string(out), "\nPASS") || !strings.Contains(string(out), "--- PASS: TestHostileContract") {
		t.Fatalf("the child run did not pass the suite:\n%s", out)
	}
}
