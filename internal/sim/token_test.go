package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

func TestMintTokenVerifies(t *testing.T) {
	secret := randomHex(16)
	v, err := auth.NewVerifier(auth.Config{Secret: []byte(secret)})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := MintToken(secret, TokenSpec{Tenant: "acme", Scope: "data:read", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil || c.Tenant != "acme" || !c.HasScope("data:read") || c.HasScope("data:write") {
		t.Fatalf("Verify = %+v, %v", c, err)
	}
	admin, err := MintToken(secret, TokenSpec{Scope: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := v.Verify(admin); err != nil || c.Tenant != "" || !c.HasScope("admin") {
		t.Fatalf("admin token: %+v, %v", c, err)
	}
	if _, err := v.Verify(tok + "x"); err == nil {
		t.Fatal("a tampered token verified")
	}
	for _, bad := range []TokenSpec{
		{Tenant: "acme", Scope: "root"},
		{Tenant: "AC", Scope: "data:read"},
		{Scope: "data:read"}, // a data token needs a tenant
	} {
		if _, err := MintToken(secret, bad); err == nil {
			t.Errorf("MintToken(%+v) succeeded", bad)
		}
	}
	if _, err := MintToken("", TokenSpec{Tenant: "acme"}); err == nil {
		t.Error("MintToken without a secret succeeded")
	}
}

// TestMintTokenTenantRule checks MintToken's tenant check against the map's rule
// (shardmap/ids) at its edges.
func TestMintTokenTenantRule(t *testing.T) {
	for _, c := range []struct {
		tenant string
		ok     bool
	}{
		{"abc", true}, {"1ab", true}, {"ab-", true}, {"a--b", true}, {strings.Repeat("a", 63), true},
		{"ab", false}, {"-ab", false}, {"Abc", false}, {"a_b", false}, {strings.Repeat("a", 64), false},
	} {
		if ids.ValidTenant(c.tenant) != c.ok {
			t.Fatalf("test table disagrees with ids.ValidTenant on %q", c.tenant)
		}
		if _, err := MintToken("s3cret", TokenSpec{Tenant: c.tenant}); (err == nil) != c.ok {
			t.Errorf("MintToken(tenant %q) error = %v, want accepted = %v", c.tenant, err, c.ok)
		}
	}
}
