package sim

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// TokenSpec describes a development JWT.
type TokenSpec struct {
	// Subject is the sub claim. "" = "dev-user".
	Subject string
	// Tenant is the tenant claim; empty only for admin tokens.
	Tenant string
	// Scope is the space-separated scope claim. "" = "data:read data:write".
	Scope string
	// TTL is the lifetime. 0 = 1 hour.
	TTL time.Duration
}

// scopeRE is the scope claims MintToken signs: space-separated known scopes.
var scopeRE = regexp.MustCompile(`^(data:read|data:write|admin)( (data:read|data:write|admin))*$`)

// MintToken signs an HS256 development token with secret used as raw bytes (DESIGN.md §4).
func MintToken(secret string, s TokenSpec) (string, error) {
	if secret == "" {
		return "", errors.New("sim: no JWT secret")
	}
	if s.Subject == "" {
		s.Subject = "dev-user"
	}
	if s.Scope == "" {
		s.Scope = "data:read data:write"
	}
	if s.TTL == 0 {
		s.TTL = time.Hour
	}
	if !scopeRE.MatchString(s.Scope) {
		return "", fmt.Errorf("sim: scope %q: use space-separated data:read, data:write, admin", s.Scope)
	}
	if s.Tenant != "" && !ids.ValidTenant(s.Tenant) {
		return "", fmt.Errorf("sim: tenant %q does not match %s", s.Tenant, ids.TenantPattern)
	}
	if s.Tenant == "" && s.Scope != "admin" {
		return "", errors.New("sim: a data token needs a tenant (--tenant)")
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"sub":   s.Subject,
		"scope": s.Scope,
		"iat":   now.Unix(),
		"exp":   now.Add(s.TTL).Unix(),
	}
	if s.Tenant != "" {
		claims["tenant"] = s.Tenant
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
}
