package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/envflag"
)

// required sets what parseConfig needs besides the variable under test.
func required(t *testing.T) {
	t.Setenv("MERIDIAN_REGION", "us-east")
	t.Setenv("MERIDIAN_MAP_ADDRS", "http://127.0.0.1:1")
	t.Setenv("MERIDIAN_CLUSTER_TOKEN", "token")
	t.Setenv("MERIDIAN_JWT_SECRET", "secret")
}

func TestParseConfigEnvironment(t *testing.T) {
	required(t)
	t.Setenv("MERIDIAN_POOL_MAX_CONNS", "4")
	t.Setenv("MERIDIAN_MAX_STALENESS", "2s")
	t.Setenv("MERIDIAN_MAX_BODY", "2048")
	t.Setenv("MERIDIAN_GOSSIP_ADDR", "10.0.0.5:20040")
	t.Setenv("MERIDIAN_GOSSIP_JOIN", "10.0.0.2:20020, 10.0.0.3:20020")
	t.Setenv("MERIDIAN_API_URL", "http://api-us-east-1:20030")
	c, err := parseConfig([]string{"-pool-max-conns", "6"})
	if err != nil {
		t.Fatal(err)
	}
	if c.maxConns != 6 || c.maxStaleness != 2*time.Second || c.maxBody != 2048 || c.region != "us-east" {
		t.Errorf("maxConns %d maxStaleness %v maxBody %d region %q, want 6 (flag wins) 2s 2048 us-east",
			c.maxConns, c.maxStaleness, c.maxBody, c.region)
	}
	if c.gossipAddr != "10.0.0.5:20040" || strings.Join(c.gossipJoin, ",") != "10.0.0.2:20020,10.0.0.3:20020" ||
		c.advertiseURL != "http://api-us-east-1:20030" {
		t.Errorf("gossip %q join %v advertise %q", c.gossipAddr, c.gossipJoin, c.advertiseURL)
	}
}

func TestParseConfigMalformedEnvironment(t *testing.T) {
	for name, value := range map[string]string{
		"MERIDIAN_POOL_MAX_CONNS":    "ten",
		"MERIDIAN_STATEMENT_TIMEOUT": "1", // no unit
		"MERIDIAN_MAX_BODY":          "1MB",
	} {
		t.Run(name, func(t *testing.T) {
			required(t)
			t.Setenv(name, value)
			_, err := parseConfig(nil)
			if !errors.Is(err, envflag.ErrMalformed) || !strings.Contains(err.Error(), name) {
				t.Errorf("%s=%q: err = %v, want a malformed-variable error naming it", name, value, err)
			}
		})
	}
}

// TestParseConfigHTTPLimits: the command declares the HTTP server's limit flags
// (daemon.HTTPLimitFlags, tested there).
func TestParseConfigHTTPLimits(t *testing.T) {
	required(t)
	c, err := parseConfig([]string{"-body-timeout", "300ms"})
	if err != nil || c.httpLimits.BodyTimeout != 300*time.Millisecond || c.httpLimits.IdleTimeout != daemon.DefaultIdleTimeout {
		t.Fatalf("limits %+v, %v", c.httpLimits, err)
	}
}
