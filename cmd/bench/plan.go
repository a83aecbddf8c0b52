package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// clusterFile is the part of .meridian/cluster.json (DESIGN.md §4a) that bench reads.
type clusterFile struct {
	Regions map[string]struct {
		Router string `json:"router"`
		// RouterLoop is the router's event-loop listener; "" when the cluster has none.
		RouterLoop string   `json:"router_loop"`
		API        []string `json:"api"`
	} `json:"regions"`
	DevJWTSecret string `json:"dev_jwt_secret"`
	AdminToken   string `json:"admin_token"`
}

func readClusterFile(path string) (*clusterFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no cluster file %s: start a cluster (make up) or give -target name=URL", path)
	}
	if err != nil {
		return nil, err
	}
	var f clusterFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("cluster file %s: %w", path, err)
	}
	if len(f.Regions) == 0 {
		return nil, fmt.Errorf("cluster file %s lists no regions", path)
	}
	return &f, nil
}

func (f *clusterFile) regionNames() []string {
	names := make([]string, 0, len(f.Regions))
	for n := range f.Regions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// tenantSpec is a tenant setup creates: its id and, when known, the region to home it in.
type tenantSpec struct{ id, home string }

// benchTarget is one load target: a base URL and the tenant (and token) its requests use.
type benchTarget struct {
	name, base string
	tenant     tenantSpec
	token      string
}

// plan is what to measure and with which credentials, resolved from the flags and the cluster.
type plan struct {
	scenario   string
	targets    []benchTarget
	setupBase  string
	adminToken string
	// region is the region whose router (and API node) is measured; empty with -target flags.
	region string
	// routerLoop is that router's event-loop listener from the cluster file ("": none).
	routerLoop string
	// hostile is the other tenant of the hostile and slow-body scenarios, and hostileTokens its
	// tokens (a valid one and three the router must refuse).
	hostile       tenantSpec
	hostileTokens hostileTokens
	// mintHostile mints the hostile tokens for another tenant id (setup may pick another name).
	mintHostile func(id string) (hostileTokens, error)
}

// abuseTargets are the victim's targets of the hostile and slow-body scenarios: the same GET
// through one router, one target per phase.
func abuseTargets(scenario, base string, victim tenantSpec, control bool) []benchTarget {
	names := []string{slowPhaseNone, hostilePhase}
	if control {
		names = []string{slowPhaseNone, benignPhase, hostilePhase}
	}
	if scenario == scenarioSlowBody {
		names = []string{slowPhaseNone, slowPhaseNoToken, slowPhaseToken}
	}
	var out []benchTarget
	for _, n := range names {
		out = append(out, benchTarget{name: n, base: base, tenant: victim})
	}
	return out
}

// tenants lists the distinct tenants of the targets, in order.
func (p *plan) tenants() []tenantSpec {
	var out []tenantSpec
	for _, t := range p.targets {
		if !slices.Contains(out, t.tenant) {
			out = append(out, t.tenant)
		}
	}
	return out
}

func (o *options) plan() (*plan, error) {
	p := &plan{scenario: o.scenario, adminToken: o.adminToken, setupBase: o.setupURL}
	secret := o.jwtSecret
	if len(o.targets) > 0 {
		if o.scenario == scenarioCompareHome {
			return nil, fmt.Errorf("%w: compare-home needs a cluster file (it picks routers and homes from it)", errUsage)
		}
		tenant := tenantSpec{id: o.tenant, home: o.home}
		if tenant.id == "" {
			tenant.id = "bench"
		}
		for _, t := range o.targets {
			p.targets = append(p.targets, benchTarget{name: t.name, base: t.base, tenant: tenant})
		}
		if abuse(o.scenario) {
			p.targets = abuseTargets(o.scenario, o.targets[0].base, tenant, o.control)
			p.hostile = tenantSpec{id: o.hostileTenant, home: o.home}
			if p.hostile.id == "" {
				p.hostile.id = "bench-hostile"
			}
		}
		if p.setupBase == "" {
			p.setupBase = o.targets[0].base
			if i := slices.IndexFunc(o.targets, func(t namedURL) bool { return t.name == "router" }); i >= 0 {
				p.setupBase = o.targets[i].base
			}
		}
	} else {
		cf, err := readClusterFile(o.cluster)
		if err != nil {
			return nil, err
		}
		names := cf.regionNames()
		region := o.region
		if region == "" {
			region = names[0]
			if _, ok := cf.Regions["us-east"]; ok {
				region = "us-east"
			}
		}
		reg, ok := cf.Regions[region]
		if !ok {
			return nil, fmt.Errorf("region %q is not in %s (it has %s)", region, o.cluster, strings.Join(names, ", "))
		}
		if !validBase(reg.Router) {
			return nil, fmt.Errorf("region %s has no router URL in %s", region, o.cluster)
		}
		home := o.home
		if home == "" {
			home = region
			if o.scenario == scenarioCompareHome || abuse(o.scenario) {
				home = names[(slices.Index(names, region)+1)%len(names)]
			}
		}
		if _, ok := cf.Regions[home]; !ok {
			return nil, fmt.Errorf("home region %q is not in %s (it has %s)", home, o.cluster, strings.Join(names, ", "))
		}
		p.region = region
		if validBase(reg.RouterLoop) {
			p.routerLoop = strings.TrimRight(reg.RouterLoop, "/")
		}
		router := strings.TrimRight(reg.Router, "/")
		if p.setupBase == "" {
			p.setupBase = router
		}
		// Tenant names say where they are homed, so reruns find them homed as expected.
		named := func(home string) tenantSpec {
			if o.tenant != "" {
				return tenantSpec{id: o.tenant, home: home}
			}
			return tenantSpec{id: "bench-" + home, home: home}
		}
		switch o.scenario {
		case scenarioCompare, scenarioProxy:
			if len(reg.API) == 0 || !validBase(reg.API[0]) {
				return nil, fmt.Errorf("region %s has no API node URL in %s", region, o.cluster)
			}
			p.targets = []benchTarget{
				{name: "direct", base: strings.TrimRight(reg.API[0], "/"), tenant: named(home)},
				{name: "router", base: router, tenant: named(home)},
			}
		case scenarioCompareHome:
			if home == region {
				return nil, fmt.Errorf("%w: compare-home needs -home different from -region %s", errUsage, region)
			}
			if o.tenant != "" || o.token != "" {
				return nil, fmt.Errorf("%w: compare-home uses two tenants of its own; drop -tenant and -token", errUsage)
			}
			p.targets = []benchTarget{
				{name: "home-" + region, base: router, tenant: named(region)},
				{name: "home-" + home, base: router, tenant: named(home)},
			}
		case scenarioHostile, scenarioSlowBody:
			p.targets = abuseTargets(o.scenario, router, named(home), o.control)
			p.hostile = tenantSpec{id: o.hostileTenant, home: home}
			if p.hostile.id == "" {
				p.hostile.id = "bench-hostile-" + home
			}
		default:
			p.targets = []benchTarget{{name: "router-" + region, base: router, tenant: named(home)}}
		}
		if secret == "" {
			secret = cf.DevJWTSecret
		}
		if p.adminToken == "" {
			p.adminToken = cf.AdminToken
		}
	}

	// Valid for the whole run however long, plus slack.
	n := time.Duration(len(p.targets))
	ttl := time.Hour + n*(o.cfg.Warmup+o.cfg.Duration)
	tokens := map[string]string{}
	for i, t := range p.targets {
		if o.token != "" {
			p.targets[i].token = o.token
			continue
		}
		if secret == "" {
			return nil, fmt.Errorf("%w: no token: give -token, or -jwt-secret with -tenant, or a cluster file", errUsage)
		}
		tok, ok := tokens[t.tenant.id]
		if !ok {
			var err error
			if tok, err = mintToken([]byte(secret), t.tenant.id, ttl, time.Now()); err != nil {
				return nil, err
			}
			tokens[t.tenant.id] = tok
		}
		p.targets[i].token = tok
	}
	if abuse(o.scenario) {
		if p.hostile.id == p.targets[0].tenant.id {
			return nil, fmt.Errorf("%w: the hostile tenant must not be the measured tenant %s", errUsage, p.hostile.id)
		}
		p.mintHostile = func(id string) (hostileTokens, error) {
			now := time.Now()
			valid, err := mintToken([]byte(secret), id, ttl, now)
			if err != nil {
				return hostileTokens{}, err
			}
			wrong, _ := mintToken([]byte(secret+"-not-the-secret"), id, ttl, now)
			expired, _ := mintToken([]byte(secret), id, time.Hour, now.Add(-3*time.Hour))
			return hostileTokens{valid: valid, wrongSecret: wrong, expired: expired}, nil
		}
		var err error
		if p.hostileTokens, err = p.mintHostile(p.hostile.id); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// mintToken signs an HS256 development token for tenant with read and write scopes.
func mintToken(secret []byte, tenant string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("empty JWT secret")
	}
	if tenant == "" {
		return "", errors.New("a data token needs -tenant")
	}
	claims := jwt.MapClaims{
		"sub":    "bench",
		"tenant": tenant,
		"scope":  "data:read data:write",
		"iat":    now.Unix(),
		"exp":    now.Add(ttl).Unix(),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}
