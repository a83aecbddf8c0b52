package localsrv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// redisStopGrace is how long each shutdown step (SIGTERM, SIGKILL) may take.
const redisStopGrace = 10 * time.Second

// RedisOptions configure StartRedis. The zero value is a throwaway, non-persistent server on a
// free port in a fresh temp dir, removed by Stop.
type RedisOptions struct {
	// Dir is the working directory (log in Dir/redis.log). "" = a fresh temp dir.
	Dir string
	// Port on 127.0.0.1; 0 = a free port (retried on collision). Restart reuses the port.
	Port int
	// Args are extra redis-server arguments, e.g. {"--maxmemory", "64mb"}.
	Args []string
	// Keep leaves Dir in place on Stop.
	Keep bool
}

// Redis is a redis-server child process bound to 127.0.0.1, without persistence.
type Redis struct {
	bin  string
	opts RedisOptions

	// mu guards the fields below.
	mu   sync.Mutex
	dir  string
	port int
	proc *proc
}

// StartRedis starts redis-server and returns once it answers PING.
func StartRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	bin, err := findBinary("redis-server", "redis-server", "/usr/bin", "/usr/local/bin")
	if err != nil {
		return nil, err
	}
	r := &Redis{bin: bin, opts: opts}
	r.mu.Lock()
	defer r.mu.Unlock()
	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		err = r.start(ctx, port)
		if err == nil {
			return r, nil
		}
		r.removeDir()
		if opts.Port != 0 || attempt >= startAttempts || !errors.Is(err, errPortInUse) {
			return nil, err
		}
	}
}

// Addr is "127.0.0.1:port".
func (r *Redis) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("127.0.0.1:%d", r.port)
}

// Port is the TCP port; it stays the same across Restart.
func (r *Redis) Port() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.port
}

// Pid is the process id of the current redis-server, 0 when stopped.
func (r *Redis) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || !r.proc.running() {
		return 0
	}
	return r.proc.cmd.Process.Pid
}

// Dir is the working directory of the current (or last) run.
func (r *Redis) Dir() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dir
}

// start runs redis-server on port; r.mu is held.
func (r *Redis) start(ctx context.Context, port int) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	want := r.opts.Dir
	if r.dir != "" {
		if _, err := os.Stat(r.dir); err == nil {
			want = r.dir // a restart of a running server keeps its directory and log
		}
	}
	dir, _, err := makeBaseDir(want, "meridian-redis-*")
	if err != nil {
		return err
	}
	r.dir = dir
	logPath := filepath.Join(dir, "redis.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("localsrv: open redis log: %w", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, 2)
	args := append([]string{
		"--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--dir", dir, "--logfile", "",
	}, r.opts.Args...)
	cmd := exec.Command(r.bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	pr, err := startProc(cmd, identity{}, syscall.SIGKILL)
	if err != nil {
		return fmt.Errorf("localsrv: start redis-server: %w", err)
	}
	r.port = port
	r.proc = pr
	failed := func(cause error) error {
		pr.stop(syscall.SIGKILL, syscall.SIGKILL, time.Second)
		out := ""
		if b, err := os.ReadFile(logPath); err == nil && int64(len(b)) >= logStart {
			out = string(b[logStart:])
		}
		if strings.Contains(out, "Address already in use") {
			cause = fmt.Errorf("%w: %w", errPortInUse, cause)
		}
		return fmt.Errorf("localsrv: redis-server on port %d did not start: %w\n--- redis log tail ---\n%s", port, cause, lastLines(out, 20))
	}
	for {
		select {
		case <-pr.exited:
			return failed(fmt.Errorf("%w: %v", ErrExited, pr.err))
		default:
		}
		if err := redisPing(ctx, fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return nil
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return failed(err)
		}
	}
}

// redisPing sends PING in RESP and expects +PONG.
func redisPing(ctx context.Context, addr string) error {
	var d net.Dialer
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := d.DialContext(cctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("localsrv: redis PING: %q", strings.TrimSpace(line))
	}
	return nil
}

// Ping checks that the server answers PING now.
func (r *Redis) Ping(ctx context.Context) error {
	return redisPing(ctx, r.Addr())
}

// Stop stops redis-server (SIGTERM, then SIGKILL) and removes its directory unless Keep was
// set. It is idempotent; Restart brings the server back on the same port.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		r.proc.stop(syscall.SIGTERM, syscall.SIGKILL, redisStopGrace)
	}
	return r.removeDir()
}

// removeDir deletes the working directory unless Keep; r.mu is held.
func (r *Redis) removeDir() error {
	if r.opts.Keep || r.dir == "" {
		return nil
	}
	if err := os.RemoveAll(r.dir); err != nil {
		return fmt.Errorf("localsrv: remove %s: %w", r.dir, err)
	}
	r.dir = ""
	return nil
}

// Restart stops the server if it runs and starts a fresh, empty one on the same port. The
// port can linger briefly after a stop, so binding is retried until ctx ends.
func (r *Redis) Restart(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		r.proc.stop(syscall.SIGTERM, syscall.SIGKILL, redisStopGrace)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	for {
		err := r.start(ctx, r.port)
		if err == nil || !errors.Is(err, errPortInUse) {
			return err
		}
		_ = r.removeDir() // the next attempt makes a fresh one
		if serr := sleepCtx(ctx, 100*time.Millisecond); serr != nil {
			return err
		}
	}
}
