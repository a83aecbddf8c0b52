package auth

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

type clockT struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clockT) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clockT) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func TestVerifierCacheHonoursExpiry(t *testing.T) {
	clk := &clockT{t: now}
	v, err := NewVerifier(Config{Secret: secret, Now: clk.Now, Leeway: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	exp := now.Add(time.Minute)
	tok := sign(t, jwt.SigningMethodHS256, secret, claims("acme", "data:read", exp), "")
	for range 2 { // the second is served from the cache
		c, err := v.Verify(tok)
		if err != nil || c.Tenant != "acme" || !c.HasScope("data:read") {
			t.Fatalf("%+v %v", c, err)
		}
	}
	if _, ok := v.cache.m[tok]; !ok {
		t.Fatal("accepted token not cached")
	}
	// A caller changing its copy does not change what the next caller gets.
	c, _ := v.Verify(tok)
	c.Tenant, c.Scopes[0] = "evil", "admin"
	c.Scopes = append(c.Scopes, "admin")
	if c2, _ := v.Verify(tok); c2.Tenant != "acme" || c2.HasScope("admin") {
		t.Fatalf("cached claims were changed through a returned copy: %+v", c2)
	}
	// Within the leeway after exp: still accepted; at exp+leeway: rejected, as jwt would.
	clk.Set(exp.Add(5*time.Second - time.Nanosecond))
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
	clk.Set(exp.Add(5 * time.Second))
	if _, err := v.Verify(tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("expired cached token: %v, want ErrInvalidToken", err)
	}
}

func TestVerifierCacheDoesNotRememberRejections(t *testing.T) {
	v, err := NewVerifier(Config{Secret: secret, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	forged := sign(t, jwt.SigningMethodHS256, []byte("another-secret"), claims("acme", "data:read", now.Add(time.Hour)), "")
	noTenant := sign(t, jwt.SigningMethodHS256, secret, claims("", "data:read", now.Add(time.Hour)), "")
	for range 2 {
		if _, err := v.Verify(forged); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("forged: %v", err)
		}
		if _, err := v.Verify(noTenant); !errors.Is(err, ErrBadTenant) {
			t.Fatalf("no tenant: %v", err)
		}
	}
	if n := len(v.cache.m); n != 0 {
		t.Fatalf("%d rejected tokens cached", n)
	}
}

func TestVerifierCacheIsBounded(t *testing.T) {
	v, err := NewVerifier(Config{Secret: secret, Now: func() time.Time { return now }, CacheSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		tok := sign(t, jwt.SigningMethodHS256, secret, claims(fmt.Sprintf("t%03d", i), "data:read", now.Add(time.Hour)), "")
		if _, err := v.Verify(tok); err != nil {
			t.Fatal(err)
		}
		if n := len(v.cache.m); n > 8 {
			t.Fatalf("cache holds %d entries, bound 8", n)
		}
	}
	off, err := NewVerifier(Config{Secret: secret, CacheSize: -1})
	if err != nil || off.cache != nil {
		t.Fatalf("CacheSize -1: cache %v, err %v", off.cache, err)
	}
}

// BenchmarkVerify compares, in one run, verifying a token each time with the cache.
func BenchmarkVerify(b *testing.B) {
	tok := sign(b, jwt.SigningMethodHS256, secret, claims("acme", "data:read data:write", time.Now().Add(time.Hour)), "")
	for _, c := range []struct {
		name string
		size int
	}{{"uncached", -1}, {"cached", 0}} {
		b.Run(c.name, func(b *testing.B) {
			v, err := NewVerifier(Config{Secret: secret, CacheSize: c.size})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
