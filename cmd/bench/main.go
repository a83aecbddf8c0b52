// Command bench measures a running Meridian cluster with internal/loadgen and writes the result
// as Markdown (optionally appended to docs/BENCHMARKS.md with the command line and the machine)
// and JSON.
//
// Scenarios:
//
//	get             GET /v1/collections/bench/records/{id} of a record created at setup
//	post            POST /v1/collections/bench/records with a small {"data":{...}} body
//	compare-router  the same GET direct to an API node and through the router, side by side;
//	                -baseline-proxy adds a bare httputil.ReverseProxy (the floor of any Go hop);
//	                -baseline-echo adds a server answering from memory (one round trip to
//	                another process: what any process on the path adds at least)
//	compare-home    GET through one router for a tenant homed in its region and one homed in
//	                another (-home), side by side
//	hostile         a well-behaved tenant's GET through one router, alone and while another
//	                tenant on the same shard sends a hostile mix through the same router (bad
//	                tokens, malformed JSON and queries, where[] values the database rejects,
//	                Expect: 100-continue, oversized headers at -hostile-rate, plus -hostile-slow
//	                connections holding slow or stalled bodies), side by side in rounds; counts
//	                both tenants' answers and the victim's X-Read-Source; -control adds a
//	                phase where the other tenant sends as many well-formed requests instead
//	slow-body       the same GET, alone and while a wave of -slow-conns connections send a
//	                POST's headers and then a body too slowly (without a token, and with the
//	                other tenant's valid token); the router's memory from /proc before, during
//	                and after each wave, and when the router closed every connection
//	cache           GETs of -records records drawn from a Zipf distribution through one router
//	                and straight to its region's API node (-via), with the cache allowed and with
//	                Cache-Control: no-cache, side by side in rounds, beside pgbench running the
//	                same read as SQL on the standby that serves it; hit ratio, answers and CPU
//	                per request of every process and of all of them (cache.go)
//	proxy           the GET direct to an API node, through nginx (one worker, keep-alive
//	                upstream, started by bench) and through the router, side by side in rounds,
//	                at each of -conns connection counts; status codes per round (a round with a
//	                non-2xx answer is void) and each process's CPU per request from /proc (proxy.go);
//	                -baseline-fasthttp adds a bare fasthttp reverse proxy (fastproxy.go),
//	                -baseline-gnet one on gnet's event loops (gnetproxy.go); router-loop, the
//	                same router's event-loop listener, is measured when the cluster file has
//	                one (router_loop_listen in the topology) or -router-loop names it
//	invalidation    for every ordered region pair, a cached read in one region, a write in the
//	                tenant's home region, and the time until the reader region answers the new
//	                version (and never the old one again) (invalidation.go)
//	moves           a tenant of -records records moved back and forth -moves times between two
//	                shards in different regions while writes (-rate) and reads (-read-rate) run
//	                through every router: cutover pauses, backfill and verify rows/s, held
//	                writes, write latency near cutovers and every answer counted (moves.go)
//
// Both tenants of hostile and slow-body are homed in -home (default: the region after -region),
// so the victim's reads are served by the local standby (X-Read-Source: replica) that a
// hostile tenant's failing queries must not disturb.
//
// With a cluster file, bench measures the router (and first API node) of -region, creates the
// tenant homed in -home (default -region; tenants are named bench-<home> unless -tenant is
// given) and, for reads, one record to read.
//
// By default every worker sends its next request when the last one is answered (closed loop),
// which at saturation measures queueing. -rate R runs open loop instead: R requests per second
// per target on a fixed schedule, at most -c in flight, latencies counted from each request's
// scheduled time; use it below saturation, e.g. to compare p50 direct and through the router. A
// target that falls more than a second behind the schedule stops for the rest of the round and
// the report counts its missed requests (see internal/loadgen).
//
// Targets come from the launcher's cluster file (-cluster, default .meridian/cluster.json) or
// from -target name=URL flags (base URLs). Examples:
//
//	go run ./cmd/bench -scenario compare-router -d 20s -out docs/BENCHMARKS.md
//	go run ./cmd/bench -scenario compare-router -rate 500 -c 32 -d 20s -out docs/BENCHMARKS.md
//	go run ./cmd/bench -scenario post -region us-west -home us-east -d 20s
//	go run ./cmd/bench -target api=http://127.0.0.1:8081 -jwt-secret s -tenant acme -scenario post
//	go run ./cmd/bench -scenario hostile -rate 200 -c 32 -d 20s -round 5s
//	go run ./cmd/bench -scenario slow-body -rate 200 -c 32 -d 18s
//	go run ./cmd/bench -scenario cache -c 16 -d 30s -round 5s -out docs/BENCHMARKS.md
//	go run ./cmd/bench -scenario invalidation -pair-rounds 50 -out docs/BENCHMARKS.md
//	go run ./cmd/bench -scenario moves -moves 20 -out docs/BENCHMARKS.md
//	go run ./cmd/bench -scenario proxy -conns 16,32 -d 12s -round 2s -out docs/BENCHMARKS.md
//
// Bench never prints or records tokens or secrets.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == stdlibProxyArg {
		if err := serveStdlibProxy(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "bench: baseline proxy:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 3 && os.Args[1] == fastProxyArg {
		if err := serveFastProxy(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "bench: fasthttp proxy:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 3 && os.Args[1] == gnetProxyArg {
		if err := serveGnetProxy(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "bench: gnet proxy:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) == 2 && os.Args[1] == echoArg {
		if err := serveEcho(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: echo server:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// run is the whole command, testable: parse args, set up, measure, write.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args[1:], stderr)
	if err != nil {
		return err
	}
	switch o.scenario {
	case scenarioCache:
		return runCache(ctx, o, stdout, stderr)
	case scenarioInvalidation:
		return runInvalidation(ctx, o, stdout, stderr)
	case scenarioMoves:
		return runMoves(ctx, o, stdout, stderr)
	case scenarioProxy:
		return runProxy(ctx, o, stdout, stderr)
	}
	plan, err := o.plan()
	if err != nil {
		return err
	}
	if o.baselineProxy {
		// Between direct and router: the same upstream as direct, through a bare proxy.
		base, stopProxy, err := startStdlibProxy(ctx, plan.targets[0].base)
		if err != nil {
			return fmt.Errorf("-baseline-proxy: %w", err)
		}
		defer stopProxy()
		bt := plan.targets[0]
		bt.name, bt.base = baselineName, base
		plan.targets = append(plan.targets[:1], append([]benchTarget{bt}, plan.targets[1:]...)...)
	}
	if o.baselineEcho {
		// Last, and left out of the ratios: it is not an alternative to direct but a floor.
		base, stopEcho, err := startEcho(ctx)
		if err != nil {
			return fmt.Errorf("-baseline-echo: %w", err)
		}
		defer stopEcho()
		et := plan.targets[0]
		et.name, et.base = echoName, base
		plan.targets = append(plan.targets, et)
	}
	fmt.Fprintf(stderr, "bench: %s, %d workers, %s per target", o.scenario, o.cfg.Concurrency, o.cfg.Duration)
	if o.cfg.Rate > 0 {
		fmt.Fprintf(stderr, ", open loop at %s req/s per target", strconv.FormatFloat(o.cfg.Rate, 'f', -1, 64))
	}
	for _, t := range plan.targets {
		fmt.Fprintf(stderr, ", %s=%s (tenant %s)", t.name, t.base, t.tenant.id)
	}
	fmt.Fprintln(stderr)

	targets, err := setup(ctx, plan, stderr)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	// The hostile and slow-body scenarios run something beside the victim's rounds.
	extra := func(*strings.Builder) {}
	if o.scenario == scenarioHostile || o.scenario == scenarioSlowBody {
		var finish func()
		if extra, finish, err = prepareAbuse(ctx, o, plan, &o.cfg, stderr); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		defer finish()
	}
	rep, err := loadgen.Run(ctx, o.cfg, targets)
	if rep != nil {
		rep.Ratios = slices.DeleteFunc(rep.Ratios, func(x loadgen.Ratio) bool { return x.Target == echoName })
	}
	if err != nil {
		if rep != nil {
			// Interrupted: show what was measured, but never record it as a result.
			fmt.Fprintln(stderr, "bench: interrupted; partial figures, not written to -out or -json:")
			_ = rep.WriteMarkdown(stderr)
		}
		return err
	}

	var md strings.Builder
	writeSection(&md, o, plan, rep, machineInfo(ctx))
	extra(&md)
	return emit(o, md.String(), rep, stdout, stderr)
}

// emit writes a finished section to stdout, appends it to -out and writes v as JSON to -json.
func emit(o *options, md string, v any, stdout, stderr io.Writer) error {
	if _, err := io.WriteString(stdout, md); err != nil {
		return err
	}
	if o.out != "" {
		f, err := os.OpenFile(o.out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, werr := io.WriteString(f, "\n"+md)
		if err := errors.Join(werr, f.Close()); err != nil {
			return fmt.Errorf("write %s: %w", o.out, err)
		}
		fmt.Fprintf(stderr, "bench: appended to %s\n", o.out)
	}
	if o.jsonOut != "" {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		if o.jsonOut == "-" {
			_, err = stdout.Write(b)
		} else {
			err = os.WriteFile(o.jsonOut, b, 0o644)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// errUsage marks bad flags (exit status 2).
var errUsage = errors.New("usage")

// options are the parsed flags.
type options struct {
	cluster, region  string
	home             string
	targets          targetFlags
	setupURL         string
	token, jwtSecret string
	adminToken       string
	tenant           string
	scenario         string
	client           string // -client: clientLoop or clientGoroutines
	cfg              loadgen.Config
	sequential       bool
	baselineProxy    bool
	baselineEcho     bool
	out, jsonOut     string
	title            string
	args             []string
	clusterFromFlag  bool
	roundFromFlag    bool
	// set holds the names of the flags given.
	set map[string]bool
	// hostile and slow-body
	hostileTenant string
	hostileRate   float64
	hostileSlow   int
	control       bool
	slowConns     int
	bodyTimeout   time.Duration
	routerPID     int
	// cache and invalidation (cache.go, invalidation.go)
	cacheFlags
	// moves (moves.go)
	movesFlags
	// proxy (proxy.go)
	proxyFlags
}

var _ flag.Value = (*targetFlags)(nil)

// targetFlags collects repeated -target name=URL flags in order.
type targetFlags []namedURL

type namedURL struct{ name, base string }

func (t *targetFlags) String() string {
	var parts []string
	for _, x := range *t {
		parts = append(parts, x.name+"="+x.base)
	}
	return strings.Join(parts, ",")
}

func (t *targetFlags) Set(v string) error {
	name, base, ok := strings.Cut(v, "=")
	if !ok || name == "" || !validBase(base) {
		return fmt.Errorf("want name=http://host:port, got %q", v)
	}
	for _, x := range *t {
		if x.name == name {
			return fmt.Errorf("target %q given twice", name)
		}
	}
	*t = append(*t, namedURL{name, strings.TrimRight(base, "/")})
	return nil
}

func validBase(s string) bool {
	return (strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")) && len(s) > len("https://")
}

const (
	scenarioGet     = "get"
	scenarioPost    = "post"
	scenarioCompare = "compare-router"
	// scenarioCompareHome reads, through one router, a tenant homed in the router's region and
	// one homed in another (DESIGN.md §5: both should be served locally).
	scenarioCompareHome = "compare-home"
	// scenarioHostile reads as a well-behaved tenant alone and while another tenant sends a
	// hostile mix through the same router (issue 12).
	scenarioHostile = "hostile"
	// scenarioSlowBody reads as a well-behaved tenant alone and while waves of connections send
	// bodies too slowly, and measures the router's memory and when it closes them (issue 12).
	scenarioSlowBody = "slow-body"
	// scenarioCache reads Zipf-distributed records with and without the cache (issue 13).
	scenarioCache = "cache"
	// scenarioInvalidation measures how soon a write is visible in every region (issue 13).
	scenarioInvalidation = "invalidation"
	// scenarioMoves moves a tenant back and forth under load (issue 14).
	scenarioMoves = "moves"
	// scenarioProxy compares the GET direct, through nginx and through the router, with each
	// process's CPU per request (issue 16).
	scenarioProxy = "proxy"
)

// scenarioNames lists the scenarios for messages.
const scenarioNames = "get, post, compare-router, compare-home, hostile, slow-body, cache, invalidation, moves or proxy"

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{args: args, set: map[string]bool{}}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.cluster, "cluster", ".meridian/cluster.json", "launcher cluster file (used unless -target is given)")
	fs.StringVar(&o.region, "region", "", "region of the cluster file to measure (default us-east, else the first)")
	fs.Var(&o.targets, "target", "name=URL base URL of a target; repeat for several (compare-router: direct first, router second)")
	fs.StringVar(&o.setupURL, "setup", "", "base URL for setup requests (default: the cluster's router, a target named router, else the first target)")
	fs.StringVar(&o.token, "token", "", "bearer token to send (else minted from -jwt-secret and -tenant)")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "HS256 development secret, raw bytes (default: the cluster file's)")
	fs.StringVar(&o.adminToken, "admin-token", "", "admin token to create the tenant (default: the cluster file's; none: skip)")
	fs.StringVar(&o.tenant, "tenant", "", "tenant to measure (default bench-<home region> with a cluster file, else bench)")
	fs.StringVar(&o.home, "home", "", "region to home the tenant in when creating it (default -region; compare-home: the next region)")
	fs.StringVar(&o.scenario, "scenario", scenarioGet, scenarioNames)
	fs.StringVar(&o.client, "client", clientLoop, "cache, proxy: the load generator's engine: loop (internal/loadgen's event-loop engine: one gnet loop, no goroutine per connection or request; closed loop only, so -rate without -client selects goroutines) or goroutines (a goroutine per worker over upstream.HopTransport)")
	fs.IntVar(&o.cfg.Concurrency, "c", loadgen.DefaultConcurrency, "concurrent workers (with -rate: the most requests in flight)")
	fs.Float64Var(&o.cfg.Rate, "rate", 0, "open loop: requests per second per target on a fixed schedule, latency from the scheduled time (0: closed loop)")
	fs.DurationVar(&o.cfg.Duration, "d", loadgen.DefaultDuration, "measured duration per target")
	fs.IntVar(&o.cfg.Requests, "n", 0, "stop each target after this many requests (0: by -d only; with -d, whichever comes first)")
	fs.DurationVar(&o.cfg.Warmup, "warmup", time.Second, "unmeasured warm-up per target")
	fs.DurationVar(&o.cfg.Round, "round", loadgen.DefaultRound, "side-by-side round length")
	fs.DurationVar(&o.cfg.Timeout, "timeout", loadgen.DefaultTimeout, "per-request timeout")
	fs.BoolVar(&o.sequential, "sequential", false, "run targets one after another instead of side by side")
	fs.BoolVar(&o.baselineProxy, "baseline-proxy", false, "compare-router: also measure a bare net/http/httputil.ReverseProxy (own process) in front of the direct API node, as the floor of any Go HTTP hop")
	fs.BoolVar(&o.baselineEcho, "baseline-echo", false, "compare-router: also measure a bare net/http server (own process) that answers every request from memory, as the least any process on the path adds (one loopback round trip)")
	fs.StringVar(&o.out, "out", "", "append the Markdown section to this file (e.g. docs/BENCHMARKS.md)")
	fs.StringVar(&o.jsonOut, "json", "", "write the JSON report to this file (- for stdout)")
	fs.StringVar(&o.title, "title", "", "section heading (default from the scenario)")
	fs.StringVar(&o.hostileTenant, "hostile-tenant", "", "hostile, slow-body: the other tenant (default bench-hostile-<home>, created on the victim's shard when an admin token is known)")
	fs.Float64Var(&o.hostileRate, "hostile-rate", 500, "hostile: requests per second of the fast hostile kinds, sent in turn (default: the development tenant rate limit)")
	fs.IntVar(&o.hostileSlow, "hostile-slow", 40, "hostile: connections kept holding a slow or stalled body (reopened when the router closes one)")
	fs.BoolVar(&o.control, "control", false, "hostile: add a phase where the other tenant sends well-formed list GETs at -hostile-rate the same way (a new connection each), to tell the load of any traffic from the harm of hostile traffic")
	fs.IntVar(&o.slowConns, "slow-conns", 200, "slow-body: connections per wave")
	fs.DurationVar(&o.bodyTimeout, "body-timeout", 5*time.Second, "hostile, slow-body: the router's -body-timeout, to judge when it closed a slow body (default: the router's default)")
	fs.IntVar(&o.routerPID, "router-pid", 0, "slow-body: the router's process id for its memory (default: the process listening on the router's address, from /proc)")
	o.cacheFlags.register(fs)
	o.movesFlags.register(fs)
	o.proxyFlags.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	fs.Visit(func(f *flag.Flag) {
		o.set[f.Name] = true
		switch f.Name {
		case "cluster":
			o.clusterFromFlag = true
		case "round":
			o.roundFromFlag = true
		}
	})
	switch o.scenario {
	case scenarioGet, scenarioPost, scenarioCompare, scenarioCompareHome, scenarioHostile, scenarioSlowBody,
		scenarioCache, scenarioInvalidation, scenarioMoves, scenarioProxy:
	default:
		return nil, fmt.Errorf("%w: -scenario %q: want %s", errUsage, o.scenario, scenarioNames)
	}
	if err := o.checkAbuseFlags(); err != nil {
		return nil, err
	}
	// -records and -seed-workers are shared by cache and moves: moves checks its own flags.
	if err := o.checkMovesFlags(); err != nil {
		return nil, err
	}
	if o.scenario != scenarioMoves {
		if err := o.checkCacheFlags(); err != nil {
			return nil, err
		}
	}
	if o.cfg.Concurrency < 1 || o.cfg.Duration < 0 || o.cfg.Requests < 0 || (o.cfg.Duration == 0 && o.cfg.Requests == 0) {
		return nil, fmt.Errorf("%w: -c must be ≥ 1 and -d or -n positive", errUsage)
	}
	if o.baselineProxy && o.scenario != scenarioCompare {
		return nil, fmt.Errorf("%w: -baseline-proxy is for -scenario compare-router", errUsage)
	}
	if o.fastProxy && o.scenario != scenarioProxy {
		return nil, fmt.Errorf("%w: -baseline-fasthttp is for -scenario proxy", errUsage)
	}
	if o.gnetProxy && o.scenario != scenarioProxy {
		return nil, fmt.Errorf("%w: -baseline-gnet is for -scenario proxy", errUsage)
	}
	if o.baselineEcho && o.scenario != scenarioCompare {
		return nil, fmt.Errorf("%w: -baseline-echo is for -scenario compare-router", errUsage)
	}
	if math.IsNaN(o.cfg.Rate) || math.IsInf(o.cfg.Rate, 0) || o.cfg.Rate < 0 {
		return nil, fmt.Errorf("%w: -rate %v: want requests per second per target, ≥ 0 and finite (0: closed loop)", errUsage, o.cfg.Rate)
	}
	if o.cfg.Warmup < 0 || o.cfg.Round <= 0 || o.cfg.Timeout <= 0 {
		return nil, fmt.Errorf("%w: -warmup must be ≥ 0, -round and -timeout positive", errUsage)
	}
	if o.setupURL != "" && !validBase(o.setupURL) {
		return nil, fmt.Errorf("%w: -setup %q is not an http(s) URL", errUsage, o.setupURL)
	}
	if o.clusterFromFlag && len(o.targets) > 0 {
		return nil, fmt.Errorf("%w: give -cluster or -target, not both", errUsage)
	}
	if (o.scenario == scenarioCompare || o.scenario == scenarioProxy) && len(o.targets) > 0 && len(o.targets) != 2 {
		return nil, fmt.Errorf("%w: %s takes exactly two -target flags: direct API node first, router second", errUsage, o.scenario)
	}
	if o.scenario != scenarioProxy {
		for _, f := range []string{"conns", "nginx", "nginx-listen", "nginx-access-log", "router-loop"} {
			if o.set[f] {
				return nil, fmt.Errorf("%w: -%s is for -scenario proxy", errUsage, f)
			}
		}
	} else if o.set["c"] {
		return nil, fmt.Errorf("%w: -scenario proxy takes -conns (a list), not -c", errUsage)
	} else if o.routerLoop != "" && !validBase(o.routerLoop) {
		return nil, fmt.Errorf("%w: -router-loop %q is not an http(s) URL", errUsage, o.routerLoop)
	}
	if err := o.checkClient(); err != nil {
		return nil, err
	}
	o.cfg.SideBySide = !o.sequential
	return o, nil
}

// checkClient checks -client: a known engine, only for the scenarios that use it, and not the
// event-loop engine in open loop (-rate without -client picks the goroutine engine).
func (o *options) checkClient() error {
	if o.client != clientLoop && o.client != clientGoroutines {
		return fmt.Errorf("%w: -client %q: want %s or %s", errUsage, o.client, clientLoop, clientGoroutines)
	}
	if o.set["client"] && o.scenario != scenarioCache && o.scenario != scenarioProxy {
		return fmt.Errorf("%w: -client is for -scenario %s and %s", errUsage, scenarioCache, scenarioProxy)
	}
	if o.cfg.Rate > 0 && o.client == clientLoop {
		if o.set["client"] {
			return fmt.Errorf("%w: -client %s runs closed loop only; -rate needs -client %s", errUsage, clientLoop, clientGoroutines)
		}
		o.client = clientGoroutines
	}
	return nil
}
