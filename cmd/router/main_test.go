package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/daemon"
	"github.com/meridian-dev/meridian/internal/envflag"
	"github.com/meridian-dev/meridian/internal/ratelimit"
	"github.com/meridian-dev/meridian/internal/router"
)

// required sets what parseConfig needs besides the variable under test.
func required(t *testing.T) {
	t.Setenv("MERIDIAN_REGION", "us-east")
	t.Setenv("MERIDIAN_CLUSTER_TOKEN", "token")
	t.Setenv("MERIDIAN_JWT_SECRET", "secret")
}

func TestParseConfigEnvironment(t *testing.T) {
	required(t)
	t.Setenv("MERIDIAN_BOOTSTRAP", "true")
	t.Setenv("MERIDIAN_TENANT_RATE", "12.5")
	t.Setenv("MERIDIAN_TENANT_BURST", "30")
	t.Setenv("MERIDIAN_WRITE_LEASE", "3s")
	t.Setenv("MERIDIAN_RATELIMIT_LEASE", "-1ms")
	c, err := parseConfig([]string{"-tenant-burst", "40"})
	if err != nil {
		t.Fatal(err)
	}
	if c.rateLimitLease != -time.Millisecond {
		t.Errorf("rate-limit lease %v, want -1ms (leases off)", c.rateLimitLease)
	}
	lim := c.limits[ratelimit.Rule{Scope: ratelimit.ScopeTenant}]
	if !c.bootstrap || lim.Rate != 12.5 || lim.Burst != 40 || c.lease != 3*time.Second {
		t.Errorf("bootstrap %v tenant limit %+v lease %v, want true {12.5 40} (flag wins) 3s", c.bootstrap, lim, c.lease)
	}
}

func TestParseConfigMalformedEnvironment(t *testing.T) {
	for name, value := range map[string]string{
		"MERIDIAN_BOOTSTRAP":       "yes",
		"MERIDIAN_TENANT_RATE":     "fast",
		"MERIDIAN_IP_BURST":        "2k",
		"MERIDIAN_WRITE_LEASE":     "2",
		"MERIDIAN_RATELIMIT_LEASE": "soon",
		"MERIDIAN_MAX_INFLIGHT":    "1e3",
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

func TestParseConfigTenantConcurrency(t *testing.T) {
	required(t)
	c, err := parseConfig(nil)
	if err != nil || c.tenantConcurrency != 100 {
		t.Fatalf("default: %d %v, want 100", c.tenantConcurrency, err)
	}
	t.Setenv("MERIDIAN_TENANT_CONCURRENCY", "7")
	if c, err = parseConfig(nil); err != nil || c.tenantConcurrency != 7 {
		t.Fatalf("from the environment: %d %v, want 7", c.tenantConcurrency, err)
	}
	if c, err = parseConfig([]string{"-tenant-concurrency", "9"}); err != nil || c.tenantConcurrency != 9 {
		t.Fatalf("flag over environment: %d %v, want 9", c.tenantConcurrency, err)
	}
	if _, err = parseConfig([]string{"-tenant-concurrency", "0"}); err == nil {
		t.Fatal("-tenant-concurrency 0 accepted")
	}
	t.Setenv("MERIDIAN_TENANT_CONCURRENCY", "lots")
	if _, err = parseConfig(nil); !errors.Is(err, envflag.ErrMalformed) {
		t.Fatalf("malformed variable: %v", err)
	}
}

func TestParseConfigTenantStreams(t *testing.T) {
	required(t)
	c, err := parseConfig(nil)
	if err != nil || c.tenantStreams != 20 {
		t.Fatalf("default: %d %v, want 20", c.tenantStreams, err)
	}
	t.Setenv("MERIDIAN_TENANT_STREAMS", "3")
	if c, err = parseConfig(nil); err != nil || c.tenantStreams != 3 {
		t.Fatalf("from the environment: %d %v, want 3", c.tenantStreams, err)
	}
	if c, err = parseConfig([]string{"-tenant-streams", "4"}); err != nil || c.tenantStreams != 4 {
		t.Fatalf("flag over environment: %d %v, want 4", c.tenantStreams, err)
	}
	if _, err = parseConfig([]string{"-tenant-streams", "0"}); err == nil {
		t.Fatal("-tenant-streams 0 accepted")
	}
	t.Setenv("MERIDIAN_TENANT_STREAMS", "many")
	if _, err = parseConfig(nil); !errors.Is(err, envflag.ErrMalformed) {
		t.Fatalf("malformed variable: %v", err)
	}
}

func TestParseConfigHold(t *testing.T) {
	required(t)
	c, err := parseConfig(nil)
	if err != nil || holdPolicy(c) != (router.HoldPolicy{Max: 1000, Time: 5 * time.Second}) {
		t.Fatalf("default: %+v %v, want 1000 writes, 5 s", holdPolicy(c), err)
	}
	t.Setenv("MERIDIAN_HOLD_MAX", "20")
	t.Setenv("MERIDIAN_HOLD_TIME", "250ms")
	if c, err = parseConfig(nil); err != nil || holdPolicy(c) != (router.HoldPolicy{Max: 20, Time: 250 * time.Millisecond}) {
		t.Fatalf("from the environment: %+v %v", holdPolicy(c), err)
	}
	if c, err = parseConfig([]string{"-hold-max", "0"}); err != nil || holdPolicy(c).Max >= 0 {
		t.Fatalf("-hold-max 0: %+v %v, want a negative Max (hold none)", holdPolicy(c), err)
	}
	for _, args := range [][]string{{"-hold-max", "-1"}, {"-hold-time", "0s"}} {
		if _, err := parseConfig(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestParseConfigLoops: -loops defaults to 0 (the front's DefaultLoops), is read from the
// environment, and refuses a negative count.
func TestParseConfigLoops(t *testing.T) {
	required(t)
	if c, err := parseConfig(nil); err != nil || c.loops != 0 {
		t.Fatalf("default: %d %v, want 0", c.loops, err)
	}
	t.Setenv("MERIDIAN_ROUTER_LOOPS", "3")
	if c, err := parseConfig(nil); err != nil || c.loops != 3 {
		t.Fatalf("from the environment: %d %v, want 3", c.loops, err)
	}
	if _, err := parseConfig([]string{"-loops", "-1"}); err == nil || !strings.Contains(err.Error(), "-loops") {
		t.Errorf("-loops -1: %v, want an error naming -loops", err)
	}
}

// TestParseConfigFront: -front defaults to the event-loop front, is read from the environment,
// and refuses anything but "loop" and "http".
func TestParseConfigFront(t *testing.T) {
	required(t)
	if c, err := parseConfig(nil); err != nil || c.front != frontLoop {
		t.Fatalf("default: %q %v, want %q", c.front, err, frontLoop)
	}
	t.Setenv("MERIDIAN_ROUTER_FRONT", "http")
	if c, err := parseConfig(nil); err != nil || c.front != frontHTTP {
		t.Fatalf("from the environment: %q %v, want %q", c.front, err, frontHTTP)
	}
	for _, v := range []string{"", "gnet", "LOOP"} {
		if _, err := parseConfig([]string{"-front", v}); err == nil || !strings.Contains(err.Error(), "-front") {
			t.Errorf("-front %q: %v, want an error naming -front", v, err)
		}
	}
}
