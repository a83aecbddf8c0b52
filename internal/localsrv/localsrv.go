// Package localsrv starts and stops real Postgres, Redis and NATS servers on 127.0.0.1 for tests
// and for the local multi-region launcher (cmd/sim).
//
// It owns process management only: finding the binaries, a cached initdb template copied per
// Postgres cluster, free ports, running Postgres as an unprivileged user when the caller is root,
// readiness polling, and an orderly, idempotent Stop that leaves no process and (unless asked to
// keep it) no directory behind. Servers are plain child processes (no pg_ctl, no daemonizing) in
// their own process group, and they receive a signal if this process dies, so a crashed test or
// launcher does not leak them. NATS runs in-process through the nats-server module.
//
// It must never import testing: tests use internal/testenv, which wraps these functions and
// registers their cleanup with t.Cleanup. A missing binary is reported as ErrMissingBinary with
// the Debian package to install; it is never skipped.
package localsrv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Errors returned by this package. Compare with errors.Is.
var (
	// ErrMissingBinary means a server binary is not installed; the message names the package.
	ErrMissingBinary = errors.New("localsrv: required binary not found")
	// ErrNotStandby is returned by standby-only helpers called on a primary.
	ErrNotStandby = errors.New("localsrv: server is not a standby")
	// ErrExited means the server process exited before it became ready or while waited on.
	ErrExited = errors.New("localsrv: server process exited")
	// ErrInvalidName rejects a database, region or user name that is not a plain identifier.
	ErrInvalidName = errors.New("localsrv: invalid name")
)

// startAttempts bounds retries when a freshly chosen free port was taken by someone else
// between choosing it and the server binding it.
const startAttempts = 5

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Callers that start a
// server on it must retry with another port if the bind fails (see startAttempts).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("localsrv: find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// missing builds the error for a binary that could not be found.
func missing(name, pkg string) error {
	return fmt.Errorf("%w: %s is not installed (install the Debian package with `apt-get install %s`, or run `make deps`)",
		ErrMissingBinary, name, pkg)
}

// findBinary looks name up in PATH and then in extraDirs (in order).
func findBinary(name, pkg string, extraDirs ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range extraDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", missing(name, pkg)
}

// identity is the user a server process runs as.
type identity struct {
	uid, gid uint32
	// cred is nil when the server runs as the current user.
	cred *syscall.Credential
}

// chown gives path to the identity when we switch users; otherwise it is a no-op.
func (id identity) chown(path string) error {
	if id.cred == nil {
		return nil
	}
	return os.Lchown(path, int(id.uid), int(id.gid))
}

// resolveIdentity picks the user a server runs as. As root, name "" means "nobody" (Postgres
// refuses to run as root). As another user, name must be "" or that user.
func resolveIdentity(name string) (identity, error) {
	if os.Geteuid() != 0 {
		cur, err := user.Current()
		if err != nil {
			return identity{}, fmt.Errorf("localsrv: current user: %w", err)
		}
		if name != "" && name != cur.Username {
			return identity{}, fmt.Errorf("localsrv: cannot run as %q: only root can switch users (running as %q)", name, cur.Username)
		}
		return identity{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}, nil
	}
	if name == "" {
		name = "nobody"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return identity{}, fmt.Errorf("localsrv: look up user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return identity{}, fmt.Errorf("localsrv: user %q uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return identity{}, fmt.Errorf("localsrv: user %q gid %q: %w", name, u.Gid, err)
	}
	if uid == 0 {
		return identity{}, fmt.Errorf("localsrv: RunAs %q is root; Postgres refuses to run as root", name)
	}
	return identity{
		uid: uint32(uid), gid: uint32(gid),
		// Groups is empty on purpose: drop root's supplementary groups.
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}, nil
}

// checkTraversable reports a clear error when id cannot reach dir because some parent
// directory lacks the search (x) bit for it — the classic failure with t.TempDir() as root.
func checkTraversable(dir string, id identity) error {
	if id.cred == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if ok {
			mode := st.Mode().Perm()
			okx := mode&0o001 != 0 ||
				(sys.Uid == id.uid && mode&0o100 != 0) ||
				(sys.Gid == id.gid && mode&0o010 != 0)
			if !okx {
				return fmt.Errorf("localsrv: directory %s (mode %v) is not traversable by uid %d, so the server cannot reach %s; use a directory under one with o+x", p, mode, id.uid, abs)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// makeBaseDir returns dir (created 0755 if missing) or, when dir is "", a fresh 0755 directory
// under os.TempDir() named after pattern. owned reports whether we created it.
func makeBaseDir(dir, pattern string) (path string, created bool, err error) {
	if dir == "" {
		d, err := os.MkdirTemp("", pattern)
		if err != nil {
			return "", false, fmt.Errorf("localsrv: create temp dir: %w", err)
		}
		// MkdirTemp makes 0700; the unprivileged server user must be able to enter it.
		if err := os.Chmod(d, 0o755); err != nil {
			os.RemoveAll(d)
			return "", false, fmt.Errorf("localsrv: chmod %s: %w", d, err)
		}
		return d, true, nil
	}
	if _, err := os.Stat(dir); err == nil {
		return dir, false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, fmt.Errorf("localsrv: create %s: %w", dir, err)
	}
	return dir, true, nil
}

// tail returns up to the last n bytes of the file at path, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return ""
	}
	if off > 0 {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	return strings.TrimSpace(string(buf))
}

// serverEnv is the environment for child servers: ours minus PG* client variables, which
// could point pg_basebackup somewhere else.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// proc is a child server process and the channel closed when it has been reaped.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited is closed
}

// startProc starts cmd in its own process group; the child gets deathSig if we die.
func startProc(cmd *exec.Cmd, id identity, deathSig syscall.Signal) (*proc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a terminal Ctrl-C meant for the launcher must not reach the
		// servers directly; the launcher stops them in order.
		Setpgid:    true,
		Pdeathsig:  deathSig,
		Credential: id.cred,
	}
	cmd.Env = serverEnv()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends sig, then escalates to escalate and finally SIGKILL to the whole process group,
// waiting grace between steps. It returns once the process has been reaped.
func (p *proc) stop(sig, escalate syscall.Signal, grace time.Duration) {
	pid := p.cmd.Process.Pid
	for _, step := range []struct {
		sig   syscall.Signal
		group bool
	}{{sig, false}, {escalate, false}, {syscall.SIGKILL, true}} {
		if !p.running() {
			return
		}
		target := pid
		if step.group {
			target = -pid // the group: children left behind by a crashed server die too
		}
		_ = syscall.Kill(target, step.sig)
		select {
		case <-p.exited:
			return
		case <-time.After(grace):
		}
	}
	<-p.exited
}

// sortedSettings renders settings as "-c k=v" arguments in a stable order.
func sortedSettings(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, "-c", k+"="+m[k])
	}
	return args
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
