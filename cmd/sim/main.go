// Command sim runs Meridian's three regions on one machine (DESIGN.md §9).
//
//	sim up [--latency] [--foreground]   start the cluster (detached unless --foreground)
//	sim down                            stop everything it started
//	sim status                          show what runs
//	sim token --tenant T [--scope S]    mint a development JWT
//	sim partition REGION | heal REGION  cut a region's cross-region links off / restore them
//	sim demo                            tenants in every region, requests through every router
//
// Every subcommand takes --dir (default .meridian) and up takes --topology (default
// deploy/multi-region/topology.yaml).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-dev/meridian/internal/sim"
	"github.com/meridian-dev/meridian/internal/topology"
)

const usage = `usage: sim <command> [flags]

commands:
  up         start the local three-region cluster (--latency for cross-region delays)
  down       stop everything the launcher started
  status     show the cluster's processes and partitions
  token      mint a development JWT (--tenant T --scope "data:read data:write", or --admin)
  partition  cut a region's cross-region links (latency mode)
  heal       restore a partitioned region
  demo       create tenants in every region and run requests through every router
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "up":
		err = cmdUp(args)
	case "down":
		err = cmdDown(args)
	case "status":
		err = cmdStatus(args)
	case "token":
		err = cmdToken(args)
	case "partition", "heal":
		err = cmdLink(cmd, args)
	case "demo":
		err = cmdDemo(args)
	case "nats":
		// The launcher's child for one region's NATS server (not for typing).
		err = sim.RunNATS(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "sim: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sim:", err)
		os.Exit(1)
	}
}

func pidPath(dir string) string { return filepath.Join(dir, "sim.pid") }

// runningPid returns the pid of a live launcher for dir, or 0.
func runningPid(dir string) int {
	b, err := os.ReadFile(pidPath(dir))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

func cmdUp(args []string) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	dir := fs.String("dir", ".meridian", "state directory (cluster.json, logs, data)")
	topo := fs.String("topology", "deploy/multi-region/topology.yaml", "topology file")
	lat := fs.Bool("latency", false, "route cross-region links through delaying proxies")
	fg := fs.Bool("foreground", false, "run in the foreground until Ctrl-C (default: detach once ready)")
	timeout := fs.Duration("timeout", 3*time.Minute, "give up if not ready within this time")
	_ = fs.Parse(args)

	if pid := runningPid(*dir); pid != 0 {
		return fmt.Errorf("a cluster is already running from %s (launcher pid %d); `make down` stops it", *dir, pid)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	if !*fg {
		return detach(*dir, args)
	}
	t, err := topology.Load(*topo)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pidPath(*dir), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidPath(*dir))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// Libraries log through the default logger (migrations, for one); keep it JSON so the
	// detached `up` shows only progress lines and the log file keeps the details.
	slog.SetDefault(logger)
	start := time.Now()
	c, err := sim.Up(ctx, sim.Options{
		Topology: t, Dir: *dir, Latency: *lat, Progress: os.Stdout, Logger: logger, ReadyTimeout: *timeout,
	})
	if err != nil {
		return err
	}
	info := c.Info()
	info.Pid = os.Getpid()
	if err := sim.WriteClusterFile(*dir, info); err != nil {
		c.Down()
		return err
	}
	fmt.Printf("READY in %.1fs: cluster file %s/cluster.json\n", time.Since(start).Seconds(), *dir)
	for _, r := range t.Regions() {
		fmt.Printf("  %-8s router %s\n", r, info.Regions[r].Router)
	}
	<-ctx.Done()
	fmt.Println("stopping...")
	c.Down()
	fmt.Println("stopped")
	return nil
}

// detach re-runs `sim up --foreground` as a session leader writing to dir/sim.log, streams
// its progress until it is ready (or fails), and returns, leaving the cluster running.
// Ctrl-C while waiting stops it.
func detach(dir string, args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "sim.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(exe, append([]string{"up", "--foreground"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	var off int64
	show := func() string {
		b, _ := os.ReadFile(logPath)
		if int64(len(b)) > off {
			for _, line := range strings.SplitAfter(string(b[off:]), "\n") {
				// The launcher's own JSON logs stay in the file; progress lines are shown.
				if line != "" && !strings.HasPrefix(line, "{") {
					fmt.Print(line)
				}
			}
			off = int64(len(b))
		}
		return string(b)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			show()
			return fmt.Errorf("the launcher exited before the cluster was ready (%v); full log: %s", err, logPath)
		case <-sigs:
			fmt.Println("\ninterrupted: stopping what was started...")
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-exited
			show()
			return errors.New("interrupted")
		case <-tick.C:
			if strings.Contains(show(), "READY in ") {
				fmt.Printf("launcher pid %d; logs in %s; `make down` stops it\n", cmd.Process.Pid, dir)
				return nil
			}
		}
	}
}

func cmdDown(args []string) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	dir := fs.String("dir", ".meridian", "state directory")
	_ = fs.Parse(args)
	pid := runningPid(*dir)
	if pid == 0 {
		fmt.Println("no cluster running")
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("launcher pid %d still running after 60s", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Println("cluster stopped")
	return nil
}

func cmdStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	dir := fs.String("dir", ".meridian", "state directory")
	_ = fs.Parse(args)
	f, err := sim.ReadClusterFile(*dir)
	if err != nil {
		return err
	}
	resp, err := http.Get(f.Control + "/status")
	if err != nil {
		return fmt.Errorf("launcher not reachable at %s: %w", f.Control, err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

func cmdToken(args []string) error {
	fs := flag.NewFlagSet("token", flag.ExitOnError)
	dir := fs.String("dir", ".meridian", "state directory")
	tenant := fs.String("tenant", "", "tenant claim")
	scope := fs.String("scope", "data:read data:write", "space-separated scopes")
	sub := fs.String("sub", "dev-user", "subject claim")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	admin := fs.Bool("admin", false, "an admin token (scope admin, no tenant)")
	_ = fs.Parse(args)
	f, err := sim.ReadClusterFile(*dir)
	if err != nil {
		return err
	}
	spec := sim.TokenSpec{Subject: *sub, Tenant: *tenant, Scope: *scope, TTL: *ttl}
	if *admin {
		spec.Tenant, spec.Scope = "", "admin"
	}
	tok, err := sim.MintToken(f.DevJWTSecret, spec)
	if err != nil {
		return err
	}
	fmt.Println(tok)
	return nil
}

func cmdLink(verb string, args []string) error {
	fs := flag.NewFlagSet(verb, flag.ExitOnError)
	dir := fs.String("dir", ".meridian", "state directory")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: sim %s REGION", verb)
	}
	f, err := sim.ReadClusterFile(*dir)
	if err != nil {
		return err
	}
	resp, err := http.Post(f.Control+"/"+verb+"/"+fs.Arg(0), "application/json", nil)
	if err != nil {
		return fmt.Errorf("launcher not reachable at %s: %w", f.Control, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", verb, fs.Arg(0), strings.TrimSpace(string(body)))
	}
	fmt.Printf("%s %s: done\n", verb, fs.Arg(0))
	return nil
}

func cmdDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	dir := fs.String("dir", ".meridian", "state directory")
	_ = fs.Parse(args)
	f, err := sim.ReadClusterFile(*dir)
	if err != nil {
		return err
	}
	fmt.Println("Meridian demo: one tenant homed in each region; every router writes and reads each one.")
	fmt.Println()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := sim.Demo(ctx, f, os.Stdout); err != nil {
		return err
	}
	fmt.Printf(`
Writes go to the tenant's home region (SERVED BY); reads are answered by the router's own region,
from its local hot standby (READ SOURCE replica) for tenants homed elsewhere. Each read here
carries its write's Consistency-Token, so a remote standby first replays that write — about half
a round trip in latency mode; reads without a fresh token are served locally in a few ms.
Next:
  bin/sim token --tenant demo-eu-west            # a JWT for your own requests
  curl -H "Authorization: Bearer $(bin/sim token --admin)" %s/admin/v1/shardmap
  bin/sim partition eu-west; bin/sim heal eu-west  # cut a region off (latency mode)
  make down                                       # stop everything
`, f.Regions["us-east"].Router)
	return nil
}
