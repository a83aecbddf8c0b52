package localsrv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the bootstrap superuser of every cluster (initdb -U); it authenticates by trust
// from 127.0.0.1 only.
const Superuser = "postgres"

// pgPackage is the Debian package that provides the Postgres server binaries.
const pgPackage = "postgresql"

// pgStopGrace is how long each shutdown step (SIGINT, SIGQUIT, SIGKILL) may take.
const pgStopGrace = 15 * time.Second

// pgStartTimeout caps a start when the caller's context has no deadline.
const pgStartTimeout = 60 * time.Second

// DefaultPostgresSettings are passed as -c flags to every cluster: fast and unsafe on crash
// (fsync off), ready for streaming replication and hot standbys. PostgresOptions.Settings
// overrides any of them.
var DefaultPostgresSettings = map[string]string{
	"listen_addresses":        "127.0.0.1",
	"unix_socket_directories": "", // TCP only: no socket paths, no /tmp lock files
	"fsync":                   "off",
	"synchronous_commit":      "off",
	"full_page_writes":        "off",
	"wal_level":               "replica",
	"max_wal_senders":         "10",
	"max_replication_slots":   "10",
	"wal_keep_size":           "256MB", // long-running launcher standbys without slots keep up
	"hot_standby":             "on",
	"max_connections":         "200",
	"shared_buffers":          "16MB",
	"checkpoint_timeout":      "30min",
	"max_wal_size":            "1GB",
	"log_min_messages":        "warning",
	"log_connections":         "off",
	"log_disconnections":      "off",
}

// PostgresOptions configure StartPostgres and StartStandby. The zero value is a throwaway
// cluster in a fresh temp dir on a free port, removed by Stop.
type PostgresOptions struct {
	// Dir is the instance directory: the cluster lives in Dir/data and its log in
	// Dir/postgres.log. "" = a fresh 0755 directory under os.TempDir(). If Dir/data already
	// holds a cluster it is started as is (a launcher restart). Every parent of Dir must be
	// traversable by the server user.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 = a free port (retried on collision).
	Port int
	// RunAs is the user the server runs as. "" = "nobody" when running as root, else the
	// current user. Only root can name another user.
	RunAs string
	// Settings override DefaultPostgresSettings (passed as -c name=value).
	Settings map[string]string
	// Keep leaves the instance directory in place on Stop (for the launcher).
	Keep bool
	// PrimaryAddr is the host:port a standby clones and streams from (StartStandby only).
	// "" = the primary's own address; the launcher passes a latency proxy in front of it.
	PrimaryAddr string
}

// Postgres is a running cluster: a postgres child process on 127.0.0.1.
type Postgres struct {
	dir, dataDir, logPath string
	port                  int
	standby               bool
	keep                  bool
	proc                  *proc

	stopOnce sync.Once
	stopErr  error
}

// pgBins are the resolved server binaries, all from one installation.
type pgBins struct {
	postgres, initdb, basebackup string
	version                      string
}

var (
	pgBinsOnce sync.Once
	pgBinsVal  pgBins
	pgBinsErr  error
)

// findPGBins locates postgres (PATH, then /usr/lib/postgresql/*/bin, newest first) and takes
// initdb and pg_basebackup from the same directory so versions match.
func findPGBins() (pgBins, error) {
	pgBinsOnce.Do(func() {
		var dirs []string
		matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		sort.Sort(sort.Reverse(sort.StringSlice(matches)))
		dirs = append(dirs, matches...)
		pg, err := findBinary("postgres", pgPackage, dirs...)
		if err != nil {
			pgBinsErr = err
			return
		}
		if real, err := filepath.EvalSymlinks(pg); err == nil {
			pg = real
		}
		// Prefer the postgres binary's own directory: /usr/bin/pg_basebackup is a Debian
		// wrapper script that may pick another version.
		binDir := filepath.Dir(pg)
		b := pgBins{postgres: pg}
		for _, it := range []struct {
			name string
			dst  *string
		}{{"initdb", &b.initdb}, {"pg_basebackup", &b.basebackup}} {
			p := filepath.Join(binDir, it.name)
			if _, err := os.Stat(p); err != nil {
				if p, err = findBinary(it.name, pgPackage); err != nil {
					pgBinsErr = err
					return
				}
			}
			*it.dst = p
		}
		out, err := exec.Command(pg, "--version").Output()
		if err != nil {
			pgBinsErr = fmt.Errorf("localsrv: %s --version: %w", pg, err)
			return
		}
		// "postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg12+1)"
		f := strings.Fields(string(out))
		if len(f) < 3 {
			pgBinsErr = fmt.Errorf("localsrv: unexpected postgres --version output %q", out)
			return
		}
		b.version = f[2]
		pgBinsVal = b
	})
	return pgBinsVal, pgBinsErr
}

// hbaConf lets anyone on 127.0.0.1 in by trust, replication included. Nothing else listens.
const hbaConf = `# written by meridian internal/localsrv: loopback only, trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
`

// ensureTemplate returns a data directory made by initdb, built once per Postgres version and
// server uid under os.TempDir() and shared by every process: builders serialise on a file
// lock, build into a temp dir and rename it into place, so a reader never sees half a template.
func ensureTemplate(ctx context.Context, b pgBins, id identity) (string, error) {
	name := fmt.Sprintf("meridian-pg-template-%s-u%d", b.version, id.uid)
	final := filepath.Join(os.TempDir(), name)
	data := filepath.Join(final, "data")
	ready := func() bool {
		_, err := os.Stat(filepath.Join(data, "PG_VERSION"))
		return err == nil
	}
	if ready() {
		return data, nil
	}
	lock, err := os.OpenFile(final+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("localsrv: template lock: %w", err)
	}
	defer lock.Close()
	for {
		err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return "", fmt.Errorf("localsrv: template lock: %w", err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return "", fmt.Errorf("localsrv: waiting for template lock: %w", err)
		}
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if ready() {
		return data, nil // another process built it while we waited
	}
	// A directory without PG_VERSION is debris from a crash before the rename; impossible
	// with rename, but cheap to clear.
	if err := os.RemoveAll(final); err != nil {
		return "", fmt.Errorf("localsrv: clear stale template: %w", err)
	}
	build, err := os.MkdirTemp("", name+".build-*")
	if err != nil {
		return "", fmt.Errorf("localsrv: template build dir: %w", err)
	}
	defer os.RemoveAll(build) // no-op after a successful rename
	if err := os.Chmod(build, 0o755); err != nil {
		return "", err
	}
	if err := id.chown(build); err != nil {
		return "", fmt.Errorf("localsrv: chown template build dir: %w", err)
	}
	cmd := exec.CommandContext(ctx, b.initdb,
		"-D", filepath.Join(build, "data"),
		"-U", Superuser, "-A", "trust", "-E", "UTF8", "--locale=C",
		"--no-sync", "--no-instructions")
	cmd.Dir = build
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: id.cred, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("localsrv: initdb: %w\n%s", err, lastLines(string(out), 20))
	}
	if err := os.WriteFile(filepath.Join(build, "data", "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return "", err
	}
	if err := id.chown(filepath.Join(build, "data", "pg_hba.conf")); err != nil {
		return "", err
	}
	if err := os.Rename(build, final); err != nil {
		return "", fmt.Errorf("localsrv: install template: %w", err)
	}
	return data, nil
}

// lastLines keeps the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// copyTree copies the template data directory to dst, owned by id.
func copyTree(src, dst string, id identity) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil && !(rel == "." && errors.Is(err, fs.ErrExist)) {
				return err
			}
			if err := os.Chmod(target, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		default:
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		}
		return id.chown(target)
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil { // copy_file_range on Linux
		out.Close()
		return err
	}
	return out.Close()
}

// StartPostgres creates a cluster from the cached initdb template (or reuses opts.Dir/data if
// it holds one) and starts postgres on 127.0.0.1. It returns once a connection succeeds.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	return startCluster(ctx, opts, func(ctx context.Context, b pgBins, id identity, dataDir string) error {
		tmpl, err := ensureTemplate(ctx, b, id)
		if err != nil {
			return err
		}
		if err := copyTree(tmpl, dataDir, id); err != nil {
			return fmt.Errorf("localsrv: copy template to %s: %w", dataDir, err)
		}
		return nil
	}, false)
}

// StartStandby clones primary with pg_basebackup (-R: standby.signal and primary_conninfo
// written, -X stream) and starts it as a hot standby on its own port. If opts.Dir/data already
// holds a cluster it is started as is.
func StartStandby(ctx context.Context, primary *Postgres, opts PostgresOptions) (*Postgres, error) {
	if primary == nil {
		return nil, errors.New("localsrv: StartStandby: nil primary")
	}
	return startCluster(ctx, opts, func(ctx context.Context, b pgBins, id identity, dataDir string) error {
		if err := os.Mkdir(dataDir, 0o700); err != nil {
			return err
		}
		if err := id.chown(dataDir); err != nil {
			return err
		}
		host, port := "127.0.0.1", fmt.Sprint(primary.port)
		if opts.PrimaryAddr != "" {
			var err error
			if host, port, err = net.SplitHostPort(opts.PrimaryAddr); err != nil {
				return fmt.Errorf("localsrv: PrimaryAddr %q: %w", opts.PrimaryAddr, err)
			}
		}
		cmd := exec.CommandContext(ctx, b.basebackup,
			"-h", host, "-p", port, "-U", Superuser,
			"-D", dataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync")
		cmd.Dir = filepath.Dir(dataDir)
		cmd.Env = serverEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: id.cred, Pdeathsig: syscall.SIGKILL}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("localsrv: pg_basebackup from %s: %w\n%s", primary.Addr(), err, lastLines(string(out), 20))
		}
		return nil
	}, true)
}

// startCluster prepares dir (via create when it holds no cluster yet) and starts postgres.
func startCluster(ctx context.Context, opts PostgresOptions, create func(context.Context, pgBins, identity, string) error, standby bool) (_ *Postgres, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pgStartTimeout)
		defer cancel()
	}
	b, err := findPGBins()
	if err != nil {
		return nil, err
	}
	id, err := resolveIdentity(opts.RunAs)
	if err != nil {
		return nil, err
	}
	dir, created, err := makeBaseDir(opts.Dir, "meridian-pg-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && created && !opts.Keep {
			os.RemoveAll(dir)
		}
	}()
	if err := checkTraversable(dir, id); err != nil {
		return nil, err
	}
	p := &Postgres{
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "postgres.log"),
		standby: standby,
		keep:    opts.Keep,
	}
	if _, err := os.Stat(filepath.Join(p.dataDir, "PG_VERSION")); err != nil {
		if err := create(ctx, b, id, p.dataDir); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(filepath.Join(p.dataDir, "standby.signal")); err == nil {
		p.standby = true
	}
	settings := make(map[string]string, len(DefaultPostgresSettings)+len(opts.Settings))
	for k, v := range DefaultPostgresSettings {
		settings[k] = v
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		err = p.run(ctx, b, id, port, settings)
		if err == nil {
			return p, nil
		}
		if opts.Port != 0 || attempt >= startAttempts || !errors.Is(err, errPortInUse) {
			return nil, err
		}
	}
}

// errPortInUse marks a start that failed because another process took the port.
var errPortInUse = errors.New("port in use")

// run starts postgres on port and waits until it accepts connections.
func (p *Postgres) run(ctx context.Context, b pgBins, id identity, port int, settings map[string]string) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("localsrv: open postgres log: %w", err)
	}
	defer logf.Close() // the child keeps its own descriptor
	args := append([]string{"-D", p.dataDir, "-p", fmt.Sprint(port)}, sortedSettings(settings)...)
	cmd := exec.Command(b.postgres, args...)
	cmd.Dir = p.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	logStart, _ := logf.Seek(0, io.SeekEnd)
	// SIGQUIT on our death: immediate shutdown, the postmaster takes its backends with it.
	pr, err := startProc(cmd, id, syscall.SIGQUIT)
	if err != nil {
		return fmt.Errorf("localsrv: start postgres: %w", err)
	}
	p.port = port
	p.proc = pr
	failed := func(cause error) error {
		pr.stop(syscall.SIGQUIT, syscall.SIGKILL, 5*time.Second)
		out := p.logSince(logStart)
		if strings.Contains(out, "Address already in use") || strings.Contains(out, "could not create any TCP/IP sockets") {
			cause = fmt.Errorf("%w: %w", errPortInUse, cause)
		}
		return fmt.Errorf("localsrv: postgres on port %d (%s) did not start: %w\n--- postgres log tail ---\n%s", port, p.dataDir, cause, lastLines(out, 30))
	}
	for {
		select {
		case <-pr.exited:
			return failed(fmt.Errorf("%w: %v", ErrExited, pr.err))
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, p.DSN("postgres"))
		if err == nil {
			err = conn.Ping(cctx)
			conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return failed(err)
		}
	}
}

// logSince returns the log written after offset off (this start's output).
func (p *Postgres) logSince(off int64) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil || int64(len(b)) < off {
		return tail(p.logPath, 8<<10)
	}
	b = b[off:]
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// Addr is "127.0.0.1:port".
func (p *Postgres) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// Port is the TCP port the server listens on.
func (p *Postgres) Port() int { return p.port }

// Pid is the postmaster's process id.
func (p *Postgres) Pid() int { return p.proc.cmd.Process.Pid }

// Dir is the instance directory (data dir and log inside).
func (p *Postgres) Dir() string { return p.dir }

// DataDir is the cluster's data directory.
func (p *Postgres) DataDir() string { return p.dataDir }

// LogPath is the file postgres writes its stderr to.
func (p *Postgres) LogPath() string { return p.logPath }

// Standby reports whether this cluster was started as a standby.
func (p *Postgres) Standby() bool { return p.standby }

// Done is closed when the postmaster has exited (after Stop, or a crash).
func (p *Postgres) Done() <-chan struct{} { return p.proc.exited }

// DSN is a superuser connection string for database db, sslmode=disable.
func (p *Postgres) DSN(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, p.port, db)
}

// Connect opens a superuser connection to database db.
func (p *Postgres) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, p.DSN(db))
}

// identRE is what CreateDatabase accepts: a plain, unquoted-style identifier.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// CreateDatabase creates database name, owned by the superuser.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	if !identRE.MatchString(name) {
		return fmt.Errorf("%w: database %q", ErrInvalidName, name)
	}
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("localsrv: create database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("localsrv: create database %s: %w", name, err)
	}
	return nil
}

// Exec runs one statement against database "postgres" on a fresh connection.
func (p *Postgres) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// IsStandby asks the server whether it is in recovery.
func (p *Postgres) IsStandby(ctx context.Context) (bool, error) {
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var in bool
	err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&in)
	return in, err
}

// CurrentLSN returns pg_current_wal_insert_lsn() of a primary (the write position can trail
// an asynchronous commit record), the position to pass to a standby's
// WaitReplayed after a write.
func (p *Postgres) CurrentLSN(ctx context.Context) (string, error) {
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var lsn string
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn)
	return lsn, err
}

// WaitReplayed polls a standby until pg_last_wal_replay_lsn() >= lsn or ctx ends. On a
// primary it returns ErrNotStandby.
func (p *Postgres) WaitReplayed(ctx context.Context, lsn string) error {
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("localsrv: wait replayed: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var done *bool
		if err := conn.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&done); err != nil {
			return fmt.Errorf("localsrv: wait replayed %s: %w", lsn, err)
		}
		if done == nil {
			return fmt.Errorf("localsrv: wait replayed %s on %s: %w", lsn, p.Addr(), ErrNotStandby)
		}
		if *done {
			return nil
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("localsrv: wait replayed %s on %s: %w", lsn, p.Addr(), err)
		}
	}
}

// Stop shuts the server down (SIGINT: fast shutdown; SIGQUIT then SIGKILL of the process
// group if it hangs), waits for it, and removes the instance directory unless Keep was set.
// It is idempotent and safe to call concurrently; later calls return the first result.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() {
		if p.proc != nil {
			p.proc.stop(syscall.SIGINT, syscall.SIGQUIT, pgStopGrace)
		}
		if !p.keep {
			if err := os.RemoveAll(p.dir); err != nil {
				p.stopErr = fmt.Errorf("localsrv: remove %s: %w", p.dir, err)
			}
		}
	})
	return p.stopErr
}
