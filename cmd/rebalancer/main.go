// Command rebalancer runs tenant moves (DESIGN.md §8) and is the operator's CLI for them.
//
//	rebalancer serve                      the move controller (one active, others standby)
//	rebalancer move TENANT --to SHARD [--wait]
//	rebalancer status [ID]                moves newest first, or one move with a live progress bar
//	rebalancer cancel ID
//	rebalancer verify TENANT              compare a tenant's rows on two shards (no repair)
//	rebalancer plan                       propose moves that even out rows per shard
//
// The operator commands talk to a router's admin API, found from the cluster file
// (--cluster, default .meridian/cluster.json) or MERIDIAN_ROUTER_URL with MERIDIAN_ADMIN_TOKEN
// (or MERIDIAN_ADMIN_TOKEN_FILE). Exit status: 0 success, 1 a failure (an unreachable router,
// a refused request, a move that ended failed or cancelled under --wait), 2 bad input.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

const usage = `usage: rebalancer COMMAND [flags]

commands:
  serve                         run the move controller (flags: rebalancer serve -h)
  move TENANT --to SHARD        request a move; --wait follows it with a progress bar
  status [ID]                   list moves (--tenant, --phase), or follow one move
  cancel ID                     cancel a move before its cutover
  verify TENANT                 compare a tenant's rows on two shards, without repairing
  plan                          propose moves that even out rows per shard (applies nothing)
  --version                     print the version

The operator commands find a router from --cluster FILE (default .meridian/cluster.json) or
MERIDIAN_ROUTER_URL with MERIDIAN_ADMIN_TOKEN or MERIDIAN_ADMIN_TOKEN_FILE.
`

// run is main without the process: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, "rebalancer", version())
		return 0
	case "serve":
		err = serve(ctx, args[1:], stdout, stderr, env)
	case "move":
		err = moveCmd(ctx, args[1:], stdout, stderr, env)
	case "status":
		err = statusCmd(ctx, args[1:], stdout, stderr, env)
	case "cancel":
		err = cancelCmd(ctx, args[1:], stdout, stderr, env)
	case "verify":
		err = verifyCmd(ctx, args[1:], stdout, stderr, env)
	case "plan":
		err = planCmd(ctx, args[1:], stdout, stderr, env)
	default:
		fmt.Fprintf(stderr, "rebalancer: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "rebalancer %s: %v\n", args[0], strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
		return 2
	default:
		fmt.Fprintf(stderr, "rebalancer %s: %v\n", args[0], err)
		return 1
	}
}

// version is the module version and VCS revision the binary was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v + " " + bi.GoVersion
}

// parseArgs parses flags that may come before or after the positional arguments
// ("move acme --to euw-1"), and checks the positional count is between min and max.
func parseArgs(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageErr("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || len(pos) > max {
		want := fmt.Sprintf("%d", min)
		if max != min {
			want = fmt.Sprintf("%d to %d", min, max)
		}
		return nil, usageErr("want %s arguments, got %d (%s -h for help)", want, len(pos), fs.Name())
	}
	return pos, nil
}

// newFlagSet returns a flag set whose errors and help go to stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: rebalancer %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// secret returns the variable name, or the trimmed contents of the file named by name_FILE.
func secret(env func(string) string, name string) (string, error) {
	if v := env(name); v != "" {
		return v, nil
	}
	if f := env(name + "_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", usageErr("%s_FILE: %v", name, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
