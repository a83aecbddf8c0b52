package topology

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Images used by the compose file.
const (
	ImagePostgres = "postgres:15"
	ImageRedis    = "redis:7"
	ImageNATS     = "nats:2.10"
	ImageMeridian = "meridian:dev"
	// BackboneNetwork joins the regions' networks: every service other regions dial is on it.
	BackboneNetwork = "backbone"
)

// Compose service names, derived from ids.
func composeRouter(n Node) string { return fmt.Sprintf("router-%s-%d", n.Region, n.Index+1) }
func composeAPI(n Node) string    { return fmt.Sprintf("api-%s-%d", n.Region, n.Index+1) }

// ComposePostgres, ComposeRedis and ComposeNATS name a region's infrastructure services.
func ComposePostgres(region string) string { return "postgres-" + region }
func ComposeRedis(region string) string    { return "redis-" + region }
func ComposeNATS(region string) string     { return "nats-" + region }

// ComposeStandby names region's hot standby of source's Postgres cluster.
func ComposeStandby(region, source string) string { return "standby-" + region + "-of-" + source }

// ComposeServiceName is the compose service (and host) name of a router or API node.
func ComposeServiceName(n Node) string {
	if strings.Contains(n.ID, "-router-") {
		return composeRouter(n)
	}
	return composeAPI(n)
}

// Secrets the compose file requires from the user's environment (compose interpolation fails
// with the message when one is unset).
const (
	envJWTSecret     = "${MERIDIAN_JWT_SECRET:?set MERIDIAN_JWT_SECRET}"
	envClusterToken  = "${MERIDIAN_CLUSTER_TOKEN:?set MERIDIAN_CLUSTER_TOKEN}"
	envPGPassword    = "${MERIDIAN_PG_PASSWORD:?set MERIDIAN_PG_PASSWORD}"
	envAppDBPassword = "${MERIDIAN_APP_DB_PASSWORD:?set MERIDIAN_APP_DB_PASSWORD}"
	// envWorkerDBPassword is the meridian_worker role's password: the API nodes' outbox relay
	// logs in with it, init sets it.
	envWorkerDBPassword = "${MERIDIAN_WORKER_DB_PASSWORD:?set MERIDIAN_WORKER_DB_PASSWORD}"
)

// BackboneSubnet is the backbone network's subnet. Routers and API nodes get fixed addresses on
// it (RouterBackboneIP, APIBackboneIP) because the Raft transport advertises the address it binds
// and cannot bind 0.0.0.0, memberlist needs an IP (not a host name) to bind and advertise, and
// with 0.0.0.0 it would advertise whichever of the container's two networks it found first.
const BackboneSubnet = "172.29.0.0/16"

// BackboneDynamicRange is the part of BackboneSubnet Docker hands out to the services without a
// fixed address (Postgres, standbys, NATS, init). It is kept apart from the fixed addresses
// (172.29.<region index>.x, at most MaxInstances regions) so a container started earlier can
// never take the address a router or API node asks for.
const BackboneDynamicRange = "172.29.128.0/17"

// RouterDataDir is the router's shard-map directory inside the container (the image's
// nonroot home, so the distroless nonroot user can write it).
const RouterDataDir = "/home/nonroot/data/router"

// RouterBackboneIP is router n's fixed address on the backbone network: 172.29.<region
// index>.<10+k-1>.
func (t *Topology) RouterBackboneIP(n Node) string {
	return fmt.Sprintf("172.29.%d.%d", t.regionIndex(n.Region), 10+n.Index)
}

// APIBackboneIP is API node n's fixed address on the backbone network: 172.29.<region
// index>.<20+k-1>, after the routers' block (MaxInstances addresses from .10). Its gossip binds
// there: the gossip cluster spans every region (the routers all join the first one), and the
// backbone is the only network every member is on.
func (t *Topology) APIBackboneIP(n Node) string {
	return fmt.Sprintf("172.29.%d.%d", t.regionIndex(n.Region), 10+MaxInstances+n.Index)
}

func (t *Topology) regionIndex(region string) int {
	for i, r := range t.Regions() {
		if r == region {
			return i
		}
	}
	panic(fmt.Sprintf("topology: unknown region %q", region))
}

// firstRouter is the router that bootstraps the shard-map Raft group: the first router of the
// first region. Every other router joins through it.
func (t *Topology) firstRouter() Node { return t.Routers(t.Regions()[0])[0] }

// RouterEnv is the environment of router n in the compose file: exactly the MERIDIAN_*
// variables cmd/router reads (its flags' env fallbacks), with compose service names as hosts.
func (t *Topology) RouterEnv(n Node) map[string]string {
	svc := composeRouter(n)
	ip := t.RouterBackboneIP(n)
	p := t.mustPorts(n.Region)
	rl := t.RateLimits()
	env := map[string]string{
		"MERIDIAN_REGION":        n.Region,
		"MERIDIAN_ROUTER_ID":     n.ID,
		"MERIDIAN_ROUTER_LISTEN": fmt.Sprintf("0.0.0.0:%d", n.HTTP),
		"MERIDIAN_ROUTER_URL":    fmt.Sprintf("http://%s:%d", svc, n.HTTP),
		"MERIDIAN_RAFT_ADDR":     fmt.Sprintf("%s:%d", ip, n.Raft),
		"MERIDIAN_DATA_DIR":      RouterDataDir,
		"MERIDIAN_GOSSIP_ADDR":   fmt.Sprintf("%s:%d", ip, n.Gossip),
		"MERIDIAN_API_NODES":     t.apiNodeList(),
		"MERIDIAN_CLUSTER_TOKEN": envClusterToken,
		"MERIDIAN_JWT_SECRET":    envJWTSecret,
		"MERIDIAN_REDIS_ADDR":    fmt.Sprintf("%s:%d", ComposeRedis(n.Region), p.Redis),
		"MERIDIAN_TENANT_RATE":   strconv.Itoa(rl.TenantRPS),
		"MERIDIAN_TENANT_BURST":  strconv.Itoa(rl.TenantBurst),
		"MERIDIAN_IP_RATE":       strconv.Itoa(rl.IPRPS),
		"MERIDIAN_IP_BURST":      strconv.Itoa(rl.IPBurst),
	}
	if first := t.firstRouter(); n.ID == first.ID {
		env["MERIDIAN_BOOTSTRAP"] = "true"
	} else {
		env["MERIDIAN_JOIN"] = fmt.Sprintf("http://%s:%d", composeRouter(first), first.HTTP)
		env["MERIDIAN_GOSSIP_JOIN"] = fmt.Sprintf("%s:%d", t.RouterBackboneIP(first), first.Gossip)
	}
	return env
}

// apiNodeList is every region's API nodes in cmd/router's -api-nodes format,
// "region=url|url;region=url".
func (t *Topology) apiNodeList() string {
	var parts []string
	for _, r := range t.Regions() {
		var urls []string
		for _, a := range t.APINodes(r) {
			urls = append(urls, apiURL(a))
		}
		if len(urls) > 0 {
			parts = append(parts, r+"="+strings.Join(urls, "|"))
		}
	}
	return strings.Join(parts, ";")
}

// APIEnv is the environment of API node n in the compose file: exactly the MERIDIAN_*
// variables cmd/api reads. Shard database addresses are not here: the API node takes them from
// the shard map (see ShardEndpoints). The node gossips on its backbone address (APIBackboneIP)
// and joins its region's routers, so they discover it and see it drain on shutdown; it
// advertises the same URL as the routers' static MERIDIAN_API_NODES entry, so the two sources
// name one node. It uses its region's NATS (change events, the outbox relay, cache invalidation,
// /v1/changes) and Redis (the read cache); the outbox relay logs in as meridian_worker.
func (t *Topology) APIEnv(n Node) map[string]string {
	p := t.mustPorts(n.Region)
	var join []string
	for _, o := range t.Routers(n.Region) {
		join = append(join, fmt.Sprintf("%s:%d", t.RouterBackboneIP(o), o.Gossip))
	}
	return map[string]string{
		"MERIDIAN_REGION":        n.Region,
		"MERIDIAN_API_LISTEN":    fmt.Sprintf("0.0.0.0:%d", n.HTTP),
		"MERIDIAN_API_URL":       apiURL(n),
		"MERIDIAN_GOSSIP_ADDR":   fmt.Sprintf("%s:%d", t.APIBackboneIP(n), n.Gossip),
		"MERIDIAN_GOSSIP_JOIN":   strings.Join(join, ","),
		"MERIDIAN_MAP_ADDRS":     t.localRouterURLs(n.Region),
		"MERIDIAN_CLUSTER_TOKEN": envClusterToken,
		"MERIDIAN_JWT_SECRET":    envJWTSecret,
		"MERIDIAN_DB_USER":       "meridian_app",
		"MERIDIAN_DB_PASSWORD":   envAppDBPassword,
		"MERIDIAN_MAX_STALENESS": t.MaxStaleness().String(),
		"MERIDIAN_NATS_URL":      fmt.Sprintf("nats://%s:%d", ComposeNATS(n.Region), p.NATSClient),
		"MERIDIAN_REDIS_ADDR":    fmt.Sprintf("%s:%d", ComposeRedis(n.Region), p.Redis),
		// The outbox relay's role (migrations.WorkerRole).
		"MERIDIAN_WORKER_DB_USER":     "meridian_worker",
		"MERIDIAN_WORKER_DB_PASSWORD": envWorkerDBPassword,
	}
}

// apiURL is the base URL routers reach API node n at: its compose service name, which every
// router resolves (over the region network or the backbone).
func apiURL(n Node) string { return fmt.Sprintf("http://%s:%d", composeAPI(n), n.HTTP) }

// InitEnv is the environment of the one-shot init service (`gencompose init`): the cluster
// token for the shard-map bootstrap and the passwords of the postgres superuser (migrations)
// and of the meridian_app and meridian_worker roles it sets.
func (t *Topology) InitEnv() map[string]string {
	return map[string]string{
		"MERIDIAN_CLUSTER_TOKEN":      envClusterToken,
		"MERIDIAN_PG_PASSWORD":        envPGPassword,
		"MERIDIAN_APP_DB_PASSWORD":    envAppDBPassword,
		"MERIDIAN_WORKER_DB_PASSWORD": envWorkerDBPassword,
	}
}

// InitService is the compose service that migrates the shards and bootstraps the shard map.
const InitService = "init"

// RebalancerEnv is the environment of the rebalancer tool service: what `rebalancer status`
// reads. It watches the map through the first region's routers.
func (t *Topology) RebalancerEnv() map[string]string {
	return map[string]string{
		"MERIDIAN_MAP_ADDRS":     t.localRouterURLs(t.Regions()[0]),
		"MERIDIAN_CLUSTER_TOKEN": envClusterToken,
	}
}

func (t *Topology) localRouterURLs(region string) string {
	var urls []string
	for _, o := range t.Routers(region) {
		urls = append(urls, fmt.Sprintf("http://%s:%d", composeRouter(o), o.HTTP))
	}
	return strings.Join(urls, ",")
}

// ShardEndpoints is, for shard s, the Postgres "host:port" each region's API nodes use in
// compose: the primary in the home region, the region's hot standby elsewhere. These are the
// values of shardmap.Shard.Endpoints a Docker cluster's map must be bootstrapped with.
func (t *Topology) ShardEndpoints(s Shard) map[string]string {
	out := map[string]string{}
	home := t.mustPorts(s.HomeRegion)
	for _, r := range t.Regions() {
		if r == s.HomeRegion {
			out[r] = fmt.Sprintf("%s:%d", ComposePostgres(r), home.Postgres)
			continue
		}
		out[r] = fmt.Sprintf("%s:%d", ComposeStandby(r, s.HomeRegion), t.mustPorts(r).Standby[s.HomeRegion])
	}
	return out
}

// NATSConfig is the nats-server configuration of a region: JetStream, and a gateway
// joined to every other region's gateway.
func (t *Topology) NATSConfig(region string) string {
	p := t.mustPorts(region)
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\njetstream { store_dir: /data, sync_interval: 10s }\n", ComposeNATS(region))
	fmt.Fprintf(&b, "gateway {\n  name: %s\n  port: %d\n  gateways: [\n", region, p.NATSGateway)
	for _, r := range t.Regions() {
		rp := t.mustPorts(r)
		fmt.Fprintf(&b, "    { name: %s, url: \"nats://%s:%d\" }\n", r, ComposeNATS(r), rp.NATSGateway)
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

// ComposeYAML renders docker-compose.multiregion.yml. The output is deterministic (map
// keys sorted), so a test can compare it with the checked-in file.
func (t *Topology) ComposeYAML() ([]byte, error) {
	services := map[string]any{}
	networks := map[string]any{BackboneNetwork: map[string]any{
		"ipam": map[string]any{"config": []map[string]string{{"subnet": BackboneSubnet, "ip_range": BackboneDynamicRange}}},
	}}
	configs := map[string]any{}
	volumes := map[string]any{}
	build := map[string]any{"context": ".", "dockerfile": "Dockerfile"}
	for _, r := range t.Regions() {
		p := t.mustPorts(r)
		networks[r] = map[string]any{}
		both := []string{r, BackboneNetwork}

		var dbs []string
		for _, s := range t.ShardsOf(r) {
			dbs = append(dbs, fmt.Sprintf("CREATE DATABASE %s;", s.Database))
		}
		configs["postgres-init-"+r] = map[string]any{"content": strings.Join(dbs, "\n") + "\n"}
		// Standbys in other regions connect over the backbone as a replication client.
		configs["postgres-hba-"+r] = map[string]any{"content": "echo 'host replication all all scram-sha-256' >> \"$$PGDATA/pg_hba.conf\"\n"}
		volumes["pgdata-"+r] = map[string]any{}
		services[ComposePostgres(r)] = map[string]any{
			"image":    ImagePostgres,
			"command":  []string{"postgres", "-p", strconv.Itoa(p.Postgres), "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "hot_standby=on"},
			"networks": both,
			"environment": map[string]string{
				"POSTGRES_PASSWORD": envPGPassword,
				"PGPORT":            strconv.Itoa(p.Postgres),
			},
			"configs": []map[string]string{
				{"source": "postgres-init-" + r, "target": "/docker-entrypoint-initdb.d/10-shards.sql"},
				{"source": "postgres-hba-" + r, "target": "/docker-entrypoint-initdb.d/20-replication.sh"},
			},
			"volumes": []string{"pgdata-" + r + ":/var/lib/postgresql/data"},
			"healthcheck": map[string]any{
				"test":     []string{"CMD", "pg_isready", "-p", strconv.Itoa(p.Postgres), "-U", "postgres"},
				"interval": "2s", "retries": 30,
			},
		}
		for _, src := range t.Regions() {
			if src == r {
				continue
			}
			sp := t.mustPorts(src)
			name := ComposeStandby(r, src)
			volumes["pgdata-"+name] = map[string]any{}
			// First start: clone the source primary with pg_basebackup -R (standby.signal and
			// primary_conninfo), then run it as a hot standby on this region's standby port.
			script := fmt.Sprintf(`if [ ! -s "$$PGDATA/PG_VERSION" ]; then until pg_basebackup -h %s -p %d -U postgres -D "$$PGDATA" -R -X stream; do sleep 1; done; chmod 700 "$$PGDATA"; fi; exec postgres -p %d -c hot_standby=on`,
				ComposePostgres(src), sp.Postgres, p.Standby[src])
			services[name] = map[string]any{
				"image":       ImagePostgres,
				"user":        "postgres",
				"entrypoint":  []string{"bash", "-c", script},
				"networks":    both,
				"environment": map[string]string{"PGPASSWORD": envPGPassword},
				"volumes":     []string{"pgdata-" + name + ":/var/lib/postgresql/data"},
				"depends_on":  map[string]any{ComposePostgres(src): map[string]string{"condition": "service_healthy"}},
			}
		}
		services[ComposeRedis(r)] = map[string]any{
			"image":    ImageRedis,
			"command":  []string{"redis-server", "--port", strconv.Itoa(p.Redis), "--save", ""},
			"networks": []string{r},
		}
		configs["nats-"+r] = map[string]any{"content": t.NATSConfig(r)}
		services[ComposeNATS(r)] = map[string]any{
			"image": ImageNATS,
			"command": []string{"--config", "/etc/nats/gateway.conf", "--port", strconv.Itoa(p.NATSClient),
				"--http_port", strconv.Itoa(p.NATSMonitor)},
			"networks": both,
			"configs":  []map[string]string{{"source": "nats-" + r, "target": "/etc/nats/gateway.conf"}},
		}
		for _, n := range t.Routers(r) {
			deps := map[string]any{ComposeRedis(r): map[string]string{"condition": "service_started"}}
			if first := t.firstRouter(); n.ID != first.ID {
				// Joins through the first router.
				deps[composeRouter(first)] = map[string]string{"condition": "service_started"}
			}
			services[composeRouter(n)] = map[string]any{
				"image": ImageMeridian, "build": build,
				"command": []string{"router"},
				"networks": map[string]any{
					r:               map[string]any{},
					BackboneNetwork: map[string]any{"ipv4_address": t.RouterBackboneIP(n)},
				},
				"environment": t.RouterEnv(n),
				"ports":       []string{fmt.Sprintf("%d:%d", n.HTTP, n.HTTP)},
				"depends_on":  deps,
			}
		}
		for _, n := range t.APINodes(r) {
			deps := map[string]any{
				ComposePostgres(r): map[string]string{"condition": "service_healthy"},
				// The schema, the meridian_app and meridian_worker passwords and the map exist
				// only after init.
				InitService: map[string]string{"condition": "service_completed_successfully"},
				// Change events and the read cache (the node also retries NATS and Redis itself).
				ComposeNATS(r):  map[string]string{"condition": "service_started"},
				ComposeRedis(r): map[string]string{"condition": "service_started"},
			}
			for _, o := range t.Routers(r) {
				deps[composeRouter(o)] = map[string]string{"condition": "service_started"}
			}
			// Reads of shards homed elsewhere go to this region's standbys.
			for _, src := range t.Regions() {
				if src != r {
					deps[ComposeStandby(r, src)] = map[string]string{"condition": "service_started"}
				}
			}
			services[composeAPI(n)] = map[string]any{
				"image": ImageMeridian, "build": build,
				"command": []string{"api"},
				"networks": map[string]any{
					r:               map[string]any{},
					BackboneNetwork: map[string]any{"ipv4_address": t.APIBackboneIP(n)},
				},
				"environment": t.APIEnv(n),
				"ports":       []string{fmt.Sprintf("%d:%d", n.HTTP, n.HTTP)},
				"depends_on":  deps,
			}
		}
	}
	initDeps := map[string]any{}
	for _, r := range t.Regions() {
		initDeps[ComposePostgres(r)] = map[string]string{"condition": "service_healthy"}
		for _, n := range t.Routers(r) {
			initDeps[composeRouter(n)] = map[string]string{"condition": "service_started"}
		}
	}
	// One-shot: migrate every shard on its primary, set meridian_app's and meridian_worker's
	// passwords, bootstrap the shard map. Idempotent, retries while the others come up (cmd/gencompose).
	services[InitService] = map[string]any{
		"image": ImageMeridian, "build": build,
		"command":     []string{"gencompose", "init", "-topology", "/etc/meridian/topology.yaml"},
		"networks":    []string{BackboneNetwork},
		"environment": t.InitEnv(),
		"depends_on":  initDeps,
	}
	first := t.Regions()[0]
	// A one-shot tool, not a daemon: `rebalancer status` prints the map and exits. The "tools"
	// profile keeps `up` from starting it; run it with `docker compose run --rm rebalancer`.
	services["rebalancer"] = map[string]any{
		"image": ImageMeridian, "build": build,
		"profiles":    []string{"tools"},
		"command":     []string{"rebalancer", "status"},
		"networks":    []string{first, BackboneNetwork},
		"environment": t.RebalancerEnv(),
	}
	doc := map[string]any{
		"name":     "meridian",
		"services": services,
		"networks": networks,
		"configs":  configs,
		"volumes":  volumes,
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("topology: render compose: %w", err)
	}
	header := "# Code generated by `go run ./cmd/gencompose` from deploy/multi-region/topology.yaml. DO NOT EDIT.\n" +
		"# Needs MERIDIAN_JWT_SECRET, MERIDIAN_CLUSTER_TOKEN, MERIDIAN_PG_PASSWORD, MERIDIAN_APP_DB_PASSWORD and\n" +
		"# MERIDIAN_WORKER_DB_PASSWORD in the environment; see docs/local-topology.md. The one-shot `init`\n" +
		"# service migrates the shards, sets the database roles' passwords and bootstraps the shard map.\n" +
		"# Latency proxies are a launcher feature and are not used here.\n"
	return append([]byte(header), out.Bytes()...), nil
}
