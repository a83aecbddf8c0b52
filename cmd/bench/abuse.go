package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
)

// hostilePhase is the hostile scenario's target name for rounds with the hostile mix running.
const hostilePhase = "with-hostile"

// benignPhase is the hostile scenario's target name (with -control) for rounds with the other
// tenant sending well-formed requests at the same rate.
const benignPhase = "with-benign"

// abuse says whether scenario is one of the two that run something hostile beside the victim.
func abuse(scenario string) bool { return scenario == scenarioHostile || scenario == scenarioSlowBody }

// checkAbuseFlags checks the flags of the hostile and slow-body scenarios (and that no other
// scenario is given them).
func (o *options) checkAbuseFlags() error {
	for name, scen := range map[string]string{"hostile-rate": scenarioHostile, "hostile-slow": scenarioHostile,
		"slow-conns": scenarioSlowBody, "router-pid": scenarioSlowBody, "control": scenarioHostile} {
		if o.set[name] && o.scenario != scen {
			return fmt.Errorf("%w: -%s is for -scenario %s", errUsage, name, scen)
		}
	}
	for _, name := range []string{"hostile-tenant", "body-timeout"} {
		if o.set[name] && !abuse(o.scenario) {
			return fmt.Errorf("%w: -%s is for -scenario hostile or slow-body", errUsage, name)
		}
	}
	if !abuse(o.scenario) {
		return nil
	}
	switch {
	case math.IsNaN(o.hostileRate) || math.IsInf(o.hostileRate, 0) || o.hostileRate < 0:
		return fmt.Errorf("%w: -hostile-rate %v: want requests per second, ≥ 0 and finite", errUsage, o.hostileRate)
	case o.hostileSlow < 0 || o.hostileSlow > 10000:
		return fmt.Errorf("%w: -hostile-slow %d: want 0 to 10000 connections", errUsage, o.hostileSlow)
	case o.scenario == scenarioHostile && o.hostileRate == 0 && o.hostileSlow == 0:
		return fmt.Errorf("%w: -hostile-rate 0 and -hostile-slow 0 leave nothing hostile", errUsage)
	case o.slowConns < 1 || o.slowConns > 10000:
		return fmt.Errorf("%w: -slow-conns %d: want 1 to 10000 connections", errUsage, o.slowConns)
	case o.bodyTimeout <= 0:
		return fmt.Errorf("%w: -body-timeout must be positive", errUsage)
	case o.routerPID < 0:
		return fmt.Errorf("%w: -router-pid must be a process id", errUsage)
	case o.sequential:
		return fmt.Errorf("%w: -scenario %s alternates its phases in rounds; drop -sequential", errUsage, o.scenario)
	case o.token != "":
		return fmt.Errorf("%w: -scenario %s mints both tenants' tokens; give -jwt-secret (or a cluster file), not -token", errUsage, o.scenario)
	case len(o.targets) > 1:
		return fmt.Errorf("%w: -scenario %s measures one router: give one -target", errUsage, o.scenario)
	case len(o.targets) == 1 && !strings.HasPrefix(o.targets[0].base, "http://"):
		return fmt.Errorf("%w: -scenario %s writes raw HTTP/1.1 and needs an http:// target", errUsage, o.scenario)
	}
	if o.scenario == scenarioSlowBody && !o.roundFromFlag {
		// A round long enough for a wave to be closed by the body timeout.
		o.cfg.Round = o.bodyTimeout + time.Second
	}
	return nil
}

// prepareAbuse creates the hostile tenant (on the victim's shard when it can), and sets cfg up
// to run the hostile mix or the slow-body waves beside the victim's rounds and to count the
// victim's answers. extra writes the scenario's own tables; finish stops what still runs.
func prepareAbuse(ctx context.Context, o *options, p *plan, cfg *loadgen.Config, log io.Writer) (extra func(*strings.Builder), finish func(), err error) {
	u, err := url.Parse(p.targets[0].base)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, nil, fmt.Errorf("%w: %s needs an http:// router URL, got %q", errUsage, o.scenario, p.targets[0].base)
	}
	addr := u.Host
	if u.Port() == "" {
		addr += ":80"
	}
	if err := prepareHostileTenant(ctx, p, log); err != nil {
		return nil, nil, err
	}

	pc := newPhaseCounter(loadgen.NewTransport(cfg.Concurrency))
	cfg.Client = &http.Client{Transport: pc, Timeout: cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	var phases []string
	for _, t := range p.targets {
		phases = append(phases, t.name)
	}
	setPhase := func(target string, warmup bool) {
		if warmup {
			target = ""
		}
		pc.setPhase(target)
	}

	if o.scenario == scenarioHostile {
		load := newHostileLoad(addr, hostileKinds(u.Host, p.hostileTokens), o.hostileRate, o.hostileSlow, o.bodyTimeout+10*time.Second)
		benign := newHostileLoad(addr, benignKinds(u.Host, p.hostileTokens.valid), o.hostileRate, 0, o.bodyTimeout+10*time.Second)
		loads := map[string]*hostileLoad{hostilePhase: load, benignPhase: benign}
		stopAll := func() {
			load.stop()
			benign.stop()
		}
		cfg.BeforeRound = func(ctx context.Context, target string, warmup bool) error {
			for phase, l := range loads {
				if phase != target {
					l.stop()
				}
			}
			if l := loads[target]; l != nil {
				l.start(ctx)
			}
			setPhase(target, warmup)
			return nil
		}
		extra = func(w *strings.Builder) {
			stopAll()
			writeVictimTable(w, pc, phases)
			if o.control {
				fmt.Fprintf(w, "\nThe other tenant in `%s` rounds (the control):\n", benignPhase)
				benign.writeTable(w)
				fmt.Fprintf(w, "\nThe other tenant in `%s` rounds:\n", hostilePhase)
			}
			load.writeTable(w)
		}
		return extra, stopAll, nil
	}

	pid := o.routerPID
	if pid == 0 {
		if pid = findListener(addr); pid == 0 {
			fmt.Fprintf(log, "bench: WARNING: no single process listens on %s per /proc; router memory unknown (give -router-pid)\n", addr)
		}
	}
	waves := &slowWaves{addr: addr, host: u.Host, token: p.hostileTokens.valid, conns: o.slowConns,
		bodyTimeout: o.bodyTimeout, pid: pid, settle: time.Second}
	cfg.BeforeRound = func(ctx context.Context, target string, warmup bool) error {
		if target == slowPhaseNone || warmup {
			waves.finish()
		} else {
			waves.begin(ctx, target)
		}
		setPhase(target, warmup)
		return nil
	}
	extra = func(w *strings.Builder) {
		waves.finish()
		writeVictimTable(w, pc, phases)
		waves.writeTable(w)
	}
	return extra, waves.finish, nil
}

// maxHostileCandidates bounds how many tenants prepareHostileTenant creates looking for one on
// the victim's shard (the map places a new tenant on its region's least-used shard, so with two
// shards a region the second or third try lands there).
const maxHostileCandidates = 4

// prepareHostileTenant makes sure the hostile tenant exists, on the victim's shard when the
// admin API can say: a tenant on another shard could not disturb the victim's standby. It tries
// the names id, id-2, … and reports what it got.
func prepareHostileTenant(ctx context.Context, p *plan, log io.Writer) error {
	client := &http.Client{Timeout: 10 * time.Second}
	victim := p.targets[0].tenant
	if p.adminToken == "" {
		fmt.Fprintf(log, "bench: no admin token; assuming tenant %s exists\n", p.hostile.id)
		return nil
	}
	want := tenantShard(ctx, client, p.setupBase, p.adminToken, victim.id)
	base := p.hostile.id
	for i := 1; i <= maxHostileCandidates; i++ {
		id := base
		if i > 1 {
			id = fmt.Sprintf("%s-%d", base, i)
		}
		if err := createTenant(ctx, client, p.setupBase, p.adminToken, tenantSpec{id: id, home: p.hostile.home}, log); err != nil {
			return err
		}
		got := tenantShard(ctx, client, p.setupBase, p.adminToken, id)
		if want == "" || got == want || i == maxHostileCandidates {
			if got != want || want == "" {
				fmt.Fprintf(log, "bench: WARNING: hostile tenant %s is on shard %q, the measured tenant %s on %q\n", id, got, victim.id, want)
			} else {
				fmt.Fprintf(log, "bench: hostile tenant %s and measured tenant %s share shard %s\n", id, victim.id, got)
			}
			if id != p.hostile.id {
				tok, err := reMint(p, id)
				if err != nil {
					return err
				}
				p.hostile.id, p.hostileTokens = id, tok
			}
			break
		}
	}
	// Its first write through the router, so its tenant is visible before the load starts.
	_, err := createRecord(ctx, client, p.setupBase+"/v1/collections/"+collection+"/records", p.hostileTokens.valid)
	if err != nil {
		return fmt.Errorf("hostile tenant %s: %w", p.hostile.id, err)
	}
	return nil
}

// reMint mints the hostile tokens for tenant id (a candidate name other than the planned one).
func reMint(p *plan, id string) (hostileTokens, error) {
	if p.mintHostile == nil {
		return hostileTokens{}, fmt.Errorf("cannot mint tokens for %s", id)
	}
	return p.mintHostile(id)
}

// tenantShard returns the shard the admin API places tenant id on, or "" when it cannot say.
func tenantShard(ctx context.Context, client *http.Client, base, adminToken, id string) string {
	status, body, err := send(ctx, client, http.MethodGet, base+"/admin/v1/tenants/"+id, adminToken, nil)
	if err != nil || status != http.StatusOK {
		return ""
	}
	var got struct {
		Shard string `json:"shard"`
	}
	_ = json.Unmarshal(body, &got) // "" when it does not say
	return got.Shard
}
