package sim

import (
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/auth"
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
