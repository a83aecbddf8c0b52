package sim

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// child is one of our own binaries (router, API node) run as a child process. It keeps what
// started it, so the fault suite can SIGKILL it and start it again in place (Kill, Restart);
// the pointer stays the same, so the stop Up registered stops whichever run is current.
type child struct {
	name    string
	bin     string
	args    []string
	env     []string
	logPath string

	cur atomic.Pointer[childRun]
}

// childRun is one run of a child: its process and the channel closed once it was reaped.
type childRun struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited is closed
}

// startChild starts bin with args, its output appended to logPath. The child gets SIGTERM if
// the launcher dies, so a crashed launcher leaves nothing behind.
func startChild(name, bin string, args, env []string, logPath string) (*child, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("sim: %s binary %s: %w (run `make build` first)", name, bin, err)
	}
	c := &child{name: name, bin: bin, args: args, env: env, logPath: logPath}
	if err := c.run(); err != nil {
		return nil, err
	}
	return c, nil
}

// run starts a new run of the child.
func (c *child) run() error {
	logf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, c.args...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = filepath.Dir(c.logPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("sim: start %s: %w", c.name, err)
	}
	r := &childRun{cmd: cmd, exited: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		logf.Close()
		close(r.exited)
	}()
	c.cur.Store(r)
	return nil
}

// pid is the current run's process id.
func (c *child) pid() int { return c.cur.Load().cmd.Process.Pid }

// running reports whether the current run has not exited.
func (c *child) running() bool {
	select {
	case <-c.cur.Load().exited:
		return false
	default:
		return true
	}
}

// exitErr is the current run's exit error (nil while it runs).
func (c *child) exitErr() error {
	r := c.cur.Load()
	select {
	case <-r.exited:
		return r.err
	default:
		return nil
	}
}

// stop sends SIGTERM (a graceful shutdown), then SIGKILL after grace, and waits.
func (c *child) stop(grace time.Duration) {
	r := c.cur.Load()
	if !c.running() {
		return
	}
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.exited
	}
}

// kill sends SIGKILL to the current run's process group and waits until it was reaped.
func (c *child) kill() {
	r := c.cur.Load()
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	<-r.exited
}

// logTail returns the last lines of the child's log, for error messages.
func (c *child) logTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitHTTP polls url until it answers 200, the child exits, or ctx ends.
func waitHTTP(ctx context.Context, c *child, url string) error {
	client := &http.Client{Timeout: time.Second}
	var last error
	for {
		if c != nil && !c.running() {
			return fmt.Errorf("sim: %s exited while starting (%v); last log lines:\n%s", c.name, c.exitErr(), c.logTail(15))
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			name := url
			if c != nil {
				name = c.name
			}
			return fmt.Errorf("sim: %s not ready: %w (last: %v)", name, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
