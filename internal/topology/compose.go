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

// RouterEnv is the environment of a router in the compose file, with hosts resolved by
// host(service name) (the compose service name itself in Docker).
func (t *Topology) RouterEnv(n Node) map[string]string {
	env := t.commonEnv(n.Region)
	svc := composeRouter(n)
	env["MERIDIAN_NODE_ID"] = n.ID
	env["MERIDIAN_HTTP_ADDR"] = fmt.Sprintf("0.0.0.0:%d", n.HTTP)
	env["MERIDIAN_ADVERTISE_URL"] = fmt.Sprintf("http://%s:%d", svc, n.HTTP)
	env["MERIDIAN_RAFT_ADDR"] = fmt.Sprintf("0.0.0.0:%d", n.Raft)
	env["MERIDIAN_RAFT_ADVERTISE"] = fmt.Sprintf("%s:%d", svc, n.Raft)
	env["MERIDIAN_GOSSIP_ADDR"] = fmt.Sprintf("0.0.0.0:%d", n.Gossip)
	var raft, gossip, apis []string
	for _, r := range t.Regions() {
		for _, o := range t.Routers(r) {
			raft = append(raft, fmt.Sprintf("%s=%s:%d", o.ID, composeRouter(o), o.Raft))
			gossip = append(gossip, fmt.Sprintf("%s:%d", composeRouter(o), o.Gossip))
		}
		for _, a := range t.APINodes(r) {
			apis = append(apis, fmt.Sprintf("%s=http://%s:%d", r, composeAPI(a), a.HTTP))
		}
	}
	env["MERIDIAN_RAFT_PEERS"] = strings.Join(raft, ",")
	env["MERIDIAN_GOSSIP_PEERS"] = strings.Join(gossip, ",")
	env["MERIDIAN_API_NODES"] = strings.Join(apis, ",")
	var shards []string
	for _, s := range t.Shards() {
		shards = append(shards, fmt.Sprintf("%s:%s:%s", s.ID, s.HomeRegion, s.Database))
	}
	env["MERIDIAN_SHARDS"] = strings.Join(shards, ",")
	env["MERIDIAN_SLOT_COUNT"] = strconv.Itoa(t.SlotCount())
	rl := t.RateLimits()
	env["MERIDIAN_RATE_TENANT_RPS"] = strconv.Itoa(rl.TenantRPS)
	env["MERIDIAN_RATE_TENANT_BURST"] = strconv.Itoa(rl.TenantBurst)
	env["MERIDIAN_RATE_IP_RPS"] = strconv.Itoa(rl.IPRPS)
	return env
}

// APIEnv is the environment of an API node in the compose file.
func (t *Topology) APIEnv(n Node) map[string]string {
	env := t.commonEnv(n.Region)
	svc := composeAPI(n)
	env["MERIDIAN_NODE_ID"] = n.ID
	env["MERIDIAN_HTTP_ADDR"] = fmt.Sprintf("0.0.0.0:%d", n.HTTP)
	env["MERIDIAN_ADVERTISE_URL"] = fmt.Sprintf("http://%s:%d", svc, n.HTTP)
	env["MERIDIAN_GOSSIP_ADDR"] = fmt.Sprintf("0.0.0.0:%d", n.Gossip)
	var gossip []string
	for _, r := range t.Regions() {
		for _, o := range t.Routers(r) {
			gossip = append(gossip, fmt.Sprintf("%s:%d", composeRouter(o), o.Gossip))
		}
	}
	env["MERIDIAN_GOSSIP_PEERS"] = strings.Join(gossip, ",")
	env["MERIDIAN_SHARDMAP_URLS"] = t.localRouterURLs(n.Region)
	env["MERIDIAN_SHARD_PRIMARIES"] = t.primaryDSNs()
	env["MERIDIAN_SHARD_STANDBYS"] = t.standbyDSNs(n.Region)
	return env
}

// standbyDSNs lists "<shard>=<dsn>" of region's local standby copy of every shard homed
// elsewhere.
func (t *Topology) standbyDSNs(region string) string {
	p := t.mustPorts(region)
	var dsns []string
	for _, s := range t.Shards() {
		if s.HomeRegion == region {
			continue
		}
		dsns = append(dsns, fmt.Sprintf("%s=postgres://postgres@%s:%d/%s?sslmode=disable",
			s.ID, ComposeStandby(region, s.HomeRegion), p.Standby[s.HomeRegion], s.Database))
	}
	return strings.Join(dsns, ",")
}

// RebalancerEnv is the environment of the rebalancer, which runs in the first region.
func (t *Topology) RebalancerEnv() map[string]string {
	r := t.Regions()[0]
	return map[string]string{
		"MERIDIAN_REGION":          r,
		"MERIDIAN_SHARDMAP_URLS":   t.localRouterURLs(r),
		"MERIDIAN_SHARD_PRIMARIES": t.primaryDSNs(),
		"MERIDIAN_CLUSTER_TOKEN":   "${MERIDIAN_CLUSTER_TOKEN:?set MERIDIAN_CLUSTER_TOKEN}",
		"PGUSER":                   "postgres",
		"PGPASSWORD":               "${MERIDIAN_PG_PASSWORD:?set MERIDIAN_PG_PASSWORD}",
	}
}

func (t *Topology) localRouterURLs(region string) string {
	var urls []string
	for _, o := range t.Routers(region) {
		urls = append(urls, fmt.Sprintf("http://%s:%d", composeRouter(o), o.HTTP))
	}
	return strings.Join(urls, ",")
}

// primaryDSNs lists "<shard>=<dsn>" for every shard's primary; the password comes from
// PGPASSWORD so it never appears in a DSN.
func (t *Topology) primaryDSNs() string {
	var dsns []string
	for _, s := range t.Shards() {
		p := t.mustPorts(s.HomeRegion)
		dsns = append(dsns, fmt.Sprintf("%s=postgres://postgres@%s:%d/%s?sslmode=disable",
			s.ID, ComposePostgres(s.HomeRegion), p.Postgres, s.Database))
	}
	return strings.Join(dsns, ",")
}

func (t *Topology) commonEnv(region string) map[string]string {
	p := t.mustPorts(region)
	return map[string]string{
		"MERIDIAN_REGION":        region,
		"MERIDIAN_REDIS_ADDR":    fmt.Sprintf("%s:%d", ComposeRedis(region), p.Redis),
		"MERIDIAN_NATS_URL":      fmt.Sprintf("nats://%s:%d", ComposeNATS(region), p.NATSClient),
		"MERIDIAN_MAX_STALENESS": t.MaxStaleness().String(),
		"MERIDIAN_JWT_SECRET":    "${MERIDIAN_JWT_SECRET:?set MERIDIAN_JWT_SECRET}",
		"MERIDIAN_CLUSTER_TOKEN": "${MERIDIAN_CLUSTER_TOKEN:?set MERIDIAN_CLUSTER_TOKEN}",
		"PGUSER":                 "postgres",
		"PGPASSWORD":             "${MERIDIAN_PG_PASSWORD:?set MERIDIAN_PG_PASSWORD}",
	}
}

// NATSConfig is the nats-server configuration of a region: JetStream, and a gateway
// joined to every other region's gateway.
func (t *Topology) NATSConfig(region string) string {
	p := t.mustPorts(region)
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\njetstream { store_dir: /data }\n", ComposeNATS(region))
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
	networks := map[string]any{BackboneNetwork: map[string]any{}}
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
				"POSTGRES_PASSWORD": "${MERIDIAN_PG_PASSWORD:?set MERIDIAN_PG_PASSWORD}",
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
				"environment": map[string]string{"PGPASSWORD": "${MERIDIAN_PG_PASSWORD:?set MERIDIAN_PG_PASSWORD}"},
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
		deps := map[string]any{
			ComposePostgres(r): map[string]string{"condition": "service_healthy"},
			ComposeRedis(r):    map[string]string{"condition": "service_started"},
			ComposeNATS(r):     map[string]string{"condition": "service_started"},
		}
		for _, n := range t.Routers(r) {
			services[composeRouter(n)] = map[string]any{
				"image": ImageMeridian, "build": build,
				"command":     []string{"router"},
				"networks":    both,
				"environment": t.RouterEnv(n),
				"ports":       []string{fmt.Sprintf("%d:%d", n.HTTP, n.HTTP)},
				"depends_on":  deps,
			}
		}
		for _, n := range t.APINodes(r) {
			services[composeAPI(n)] = map[string]any{
				"image": ImageMeridian, "build": build,
				"command":     []string{"api"},
				"networks":    both,
				"environment": t.APIEnv(n),
				"ports":       []string{fmt.Sprintf("%d:%d", n.HTTP, n.HTTP)},
				"depends_on":  deps,
			}
		}
	}
	first := t.Regions()[0]
	services["rebalancer"] = map[string]any{
		"image": ImageMeridian, "build": build,
		"command":     []string{"rebalancer"},
		"networks":    []string{first, BackboneNetwork},
		"environment": t.RebalancerEnv(),
		"depends_on":  map[string]any{composeRouter(t.Routers(first)[0]): map[string]string{"condition": "service_started"}},
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
		"# Needs MERIDIAN_JWT_SECRET, MERIDIAN_CLUSTER_TOKEN and MERIDIAN_PG_PASSWORD in the environment;\n" +
		"# see docs/local-topology.md. Latency proxies are a launcher feature and are not used here.\n"
	return append([]byte(header), out.Bytes()...), nil
}
