// Package auth validates Meridian's bearer tokens: JWTs signed with HS256 (a shared secret used as
// raw bytes) or with RS256/EdDSA keys read from a JWKS file, carrying the claims sub, tenant,
// scope (space separated), iat and exp. It also guards internal endpoints with the cluster token.
//
// The router and the API node both use it. Each key type is pinned to exactly one algorithm
// (secret → HS256, RSA → RS256, Ed25519 → EdDSA), so `none` and algorithm confusion (an HS256
// token "signed" with a public key) are rejected. A header with "crit" is rejected (no extension is understood),
// and claims are read by their exact names and types: exp, iat and nbf must be JSON numbers,
// never strings, and no claim may be named twice. It must never call out to an auth service and
// never log tokens. Tests mint tokens with jwt.NewWithClaims and the same secret or keys.
//
// A Verifier remembers the tokens it accepted (Config.CacheSize, default 4096), keyed by the
// whole token string, until they expire: a client sends the same token on every request, and
// parsing plus a signature check costs more than the rest of the router's work on a request.
// This is sound because everything a verdict depends on is fixed for the Verifier's life — the
// keys, the issuer and audience, and the token's own claims — except the clock, and the clock
// only moves towards exp, which the cache checks on every hit. Rejected tokens are not cached.
package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/golang-jwt/jwt/v5"

	"github.com/meridian-dev/meridian/internal/problem"
	"github.com/meridian-dev/meridian/internal/strictjson"
	"github.com/meridian-dev/meridian/shardmap/ids"
)

// Scopes the data API checks.
const (
	ScopeRead  = "data:read"
	ScopeWrite = "data:write"
	ScopeAdmin = "admin"
)

// Errors returned by Verifier.Verify and the JWKS loader; HTTP handlers map all of them to 401.
var (
	ErrNoToken      = errors.New("auth: no bearer token")
	ErrInvalidToken = errors.New("auth: invalid token")
	ErrBadTenant    = errors.New("auth: token has no valid tenant claim")
	ErrNoKeys       = errors.New("auth: no verification keys configured")
	ErrBadJWKS      = errors.New("auth: malformed JWKS")
	// ErrCritical is a token whose header has "crit": it names extensions the recipient must
	// understand (RFC 7515 §4.1.11), and Meridian understands none.
	ErrCritical = errors.New("auth: token header has crit")
	// ErrBadClaims is a token whose claims are not a JSON object of the registered types:
	// exp, iat and nbf must be JSON numbers (RFC 7519 NumericDate, never a string), sub,
	// tenant, scope, iss and jti strings, no claim named twice.
	ErrBadClaims = errors.New("auth: malformed claims")
)

// Config configures a Verifier. At least one of Secret and JWKSFile must be set.
type Config struct {
	// Secret is the HS256 key, used as raw bytes. Nil disables HS256.
	Secret []byte
	// JWKSFile is a path to a JWKS document with RSA (RS256) and Ed25519 (EdDSA) public keys.
	// Empty disables RS256 and EdDSA.
	JWKSFile string
	// Issuer and Audience are checked only when non-empty.
	Issuer, Audience string
	// Leeway is the clock skew allowed on exp/iat. Zero means none.
	Leeway time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CacheSize bounds how many accepted tokens are remembered (see the package doc). Zero
	// means 4096; negative turns the cache off.
	CacheSize int
}

// Claims are the validated claims of a token.
type Claims struct {
	Subject   string
	Tenant    string
	Scopes    []string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// HasScope reports whether the token grants scope.
func (c *Claims) HasScope(scope string) bool { return slices.Contains(c.Scopes, scope) }

// tokenClaims is the wire form. Its UnmarshalJSON reads the claims by their exact names and
// types: encoding/json alone would match "EXP" to exp and take "exp":"123" as a date.
type tokenClaims struct {
	jwt.RegisteredClaims
	Tenant string `json:"tenant"`
	Scope  string `json:"scope"`
}

// UnmarshalJSON decodes a claims set strictly: a JSON object with no claim named twice
// (RFC 7519 §4 allows rejecting that), exp, iat and nbf JSON numbers, the string claims
// strings and aud a string or an array of strings. Other claims are ignored. Every error wraps
// ErrBadClaims.
func (tc *tokenClaims) UnmarshalJSON(b []byte) error {
	if err := strictjson.Check(b); err != nil {
		return fmt.Errorf("%w: %w", ErrBadClaims, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("%w: not a JSON object", ErrBadClaims)
	}
	*tc = tokenClaims{}
	dates := []struct {
		name string
		dst  **jwt.NumericDate
	}{{"exp", &tc.ExpiresAt}, {"iat", &tc.IssuedAt}, {"nbf", &tc.NotBefore}}
	for _, d := range dates {
		raw, ok := m[d.name]
		if !ok {
			continue
		}
		if !isJSONNumber(raw) {
			return fmt.Errorf("%w: %s must be a JSON number", ErrBadClaims, d.name)
		}
		*d.dst = new(jwt.NumericDate)
		if err := (*d.dst).UnmarshalJSON(raw); err != nil {
			return fmt.Errorf("%w: %s is not a date", ErrBadClaims, d.name)
		}
	}
	strs := []struct {
		name string
		dst  *string
	}{{"sub", &tc.Subject}, {"iss", &tc.Issuer}, {"jti", &tc.ID}, {"tenant", &tc.Tenant}, {"scope", &tc.Scope}}
	for _, f := range strs {
		raw, ok := m[f.name]
		if !ok {
			continue
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return fmt.Errorf("%w: %s must be a string", ErrBadClaims, f.name)
		}
	}
	if raw, ok := m["aud"]; ok {
		if err := tc.Audience.UnmarshalJSON(raw); err != nil {
			return fmt.Errorf("%w: aud must be a string or an array of strings", ErrBadClaims)
		}
	}
	return nil
}

// isJSONNumber reports whether raw is a JSON number literal (not a string holding one, not
// null).
func isJSONNumber(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'))
}

// Verifier validates tokens. It is safe for concurrent use.
type Verifier struct {
	secret  []byte
	rsaKeys map[string]*rsa.PublicKey // kid -> key
	edKeys  map[string]ed25519.PublicKey
	parser  *jwt.Parser
	now     func() time.Time
	leeway  time.Duration
	cache   *tokenCache // nil: off
}

// tokenCache maps a token string to the claims it was accepted with.
type tokenCache struct {
	size int
	mu   sync.RWMutex
	m    map[string]cachedClaims
}

type cachedClaims struct {
	claims Claims
	until  time.Time // exp + leeway: valid while now is before it (as jwt's own check)
}

func (tc *tokenCache) get(token string, now time.Time) (Claims, bool) {
	tc.mu.RLock()
	e, ok := tc.m[token]
	tc.mu.RUnlock()
	if !ok || !now.Before(e.until) {
		return Claims{}, false
	}
	c := e.claims
	c.Scopes = slices.Clone(c.Scopes) // callers own what they get
	return c, true
}

// put remembers a token; when full it first drops expired entries, then arbitrary ones (map
// order is random), down to three quarters of the size.
func (tc *tokenCache) put(token string, c Claims, until, now time.Time) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if len(tc.m) >= tc.size {
		for k, e := range tc.m {
			if !now.Before(e.until) {
				delete(tc.m, k)
			}
		}
		for k := range tc.m {
			if len(tc.m) < tc.size*3/4 {
				break
			}
			delete(tc.m, k)
		}
	}
	tc.m[token] = cachedClaims{claims: c, until: until}
}

// NewVerifier builds a Verifier, reading the JWKS file once.
func NewVerifier(cfg Config) (*Verifier, error) {
	v := &Verifier{secret: cfg.Secret, rsaKeys: map[string]*rsa.PublicKey{}, edKeys: map[string]ed25519.PublicKey{},
		now: cfg.Now, leeway: cfg.Leeway}
	if v.now == nil {
		v.now = time.Now
	}
	switch {
	case cfg.CacheSize == 0:
		v.cache = &tokenCache{size: 4096, m: map[string]cachedClaims{}}
	case cfg.CacheSize > 0:
		v.cache = &tokenCache{size: cfg.CacheSize, m: map[string]cachedClaims{}}
	}
	var methods []string
	if len(cfg.Secret) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSFile != "" {
		raw, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("auth: read JWKS: %w", err)
		}
		if err := v.loadJWKS(raw); err != nil {
			return nil, err
		}
		if len(v.rsaKeys) > 0 {
			methods = append(methods, jwt.SigningMethodRS256.Alg())
		}
		if len(v.edKeys) > 0 {
			methods = append(methods, jwt.SigningMethodEdDSA.Alg())
		}
	}
	if len(methods) == 0 {
		return nil, ErrNoKeys
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
	}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
}

func (v *Verifier) loadJWKS(raw []byte) error {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return fmt.Errorf("%w: %v", ErrBadJWKS, err)
	}
	b64 := base64.RawURLEncoding
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch k.Kty {
		case "RSA":
			if k.Alg != "" && k.Alg != "RS256" {
				continue
			}
			n, err1 := b64.DecodeString(k.N)
			e, err2 := b64.DecodeString(k.E)
			if err1 != nil || err2 != nil || len(n) < 256 || len(e) == 0 || len(e) > 4 {
				return fmt.Errorf("%w: key %d: bad RSA modulus or exponent (need ≥2048 bits)", ErrBadJWKS, i)
			}
			exp := int(new(big.Int).SetBytes(e).Int64())
			v.rsaKeys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
		case "OKP":
			if k.Crv != "Ed25519" || (k.Alg != "" && k.Alg != "EdDSA" && k.Alg != "Ed25519") {
				continue
			}
			x, err := b64.DecodeString(k.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return fmt.Errorf("%w: key %d: bad Ed25519 x", ErrBadJWKS, i)
			}
			v.edKeys[k.Kid] = ed25519.PublicKey(x)
		}
	}
	if len(v.rsaKeys)+len(v.edKeys) == 0 {
		return fmt.Errorf("%w: no usable RS256 or EdDSA keys", ErrBadJWKS)
	}
	return nil
}

// keyFor pins algorithms to key types: the key handed to the signature check is always of the
// type the algorithm expects, so a token cannot choose how its own key is interpreted.
//
// It also rejects a header with "crit" (ErrCritical), for every algorithm: keyFor runs before
// the signature check, and nothing is accepted without a key.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		return nil, ErrCritical
	}
	kid, _ := t.Header["kid"].(string)
	switch t.Method.Alg() {
	case jwt.SigningMethodHS256.Alg():
		if len(v.secret) == 0 {
			return nil, ErrNoKeys
		}
		return v.secret, nil
	case jwt.SigningMethodRS256.Alg():
		if k, ok := pick(v.rsaKeys, kid); ok {
			return k, nil
		}
	case jwt.SigningMethodEdDSA.Alg():
		if k, ok := pick(v.edKeys, kid); ok {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: no key for alg %q kid %q", jwt.ErrTokenUnverifiable, t.Method.Alg(), kid)
}

// pick returns the key named kid, or the only key when the token names none.
func pick[K any](keys map[string]K, kid string) (K, bool) {
	if k, ok := keys[kid]; ok {
		return k, true
	}
	var zero K
	if kid == "" && len(keys) == 1 {
		for _, k := range keys {
			return k, true
		}
	}
	return zero, false
}

// Verify parses and validates a compact JWT and returns its claims.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	if v.cache != nil {
		if c, ok := v.cache.get(token, v.now()); ok {
			return &c, nil
		}
	}
	var tc tokenClaims
	if _, err := v.parser.ParseWithClaims(token, &tc, v.keyFor); err != nil {
		return nil, invalidToken(err)
	}
	c := &Claims{Subject: tc.Subject, Tenant: tc.Tenant, Scopes: strings.Fields(tc.Scope)}
	// An operator's admin token names no tenant; every other token must name a valid one.
	if !ids.ValidTenant(tc.Tenant) && !(tc.Tenant == "" && c.HasScope("admin")) {
		return nil, ErrBadTenant
	}
	if tc.IssuedAt != nil {
		c.IssuedAt = tc.IssuedAt.Time
	}
	if tc.ExpiresAt != nil {
		c.ExpiresAt = tc.ExpiresAt.Time
		if v.cache != nil {
			cc := *c
			cc.Scopes = slices.Clone(c.Scopes)
			v.cache.put(token, cc, c.ExpiresAt.Add(v.leeway), v.now())
		}
	}
	return c, nil
}

// invalidToken turns a parse failure into ErrInvalidToken with a reason in our own words (the
// router puts Error() in its problem detail, which must not carry a library's text); our own
// sentinels stay reachable with errors.Is.
func invalidToken(err error) error {
	reason := "malformed or unverifiable"
	for _, r := range []struct {
		err    error
		reason string
	}{
		{ErrCritical, "its header has crit"},
		{ErrBadClaims, "malformed claims (exp, iat and nbf must be numbers)"},
		{ErrNoKeys, "no key for its algorithm"},
		{jwt.ErrTokenExpired, "expired"},
		{jwt.ErrTokenNotValidYet, "not valid yet"},
		{jwt.ErrTokenUsedBeforeIssued, "issued in the future"},
		{jwt.ErrTokenRequiredClaimMissing, "a required claim is missing"},
		{jwt.ErrTokenInvalidIssuer, "wrong issuer"},
		{jwt.ErrTokenInvalidAudience, "wrong audience"},
		{jwt.ErrTokenSignatureInvalid, "bad signature"},
		{jwt.ErrTokenUnverifiable, "no key for its algorithm and kid"},
		{jwt.ErrTokenMalformed, "malformed"},
	} {
		if errors.Is(err, r.err) {
			reason = r.reason
			if r.err == ErrCritical || r.err == ErrBadClaims {
				return fmt.Errorf("%w: %s (%w)", ErrInvalidToken, reason, r.err)
			}
			break
		}
	}
	return fmt.Errorf("%w: %s", ErrInvalidToken, reason)
}

// BearerToken extracts the token from an Authorization header value ("Bearer <token>", the
// scheme case-insensitive).
func BearerToken(header string) (string, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ErrNoToken
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", ErrNoToken
	}
	return tok, nil
}

// contextKey is the gin context key holding *Claims.
const contextKey = "auth.claims"

// FromContext returns the claims Middleware stored, if any.
func FromContext(c *gin.Context) (*Claims, bool) {
	v, ok := c.Get(contextKey)
	if !ok {
		return nil, false
	}
	cl, ok := v.(*Claims)
	return cl, ok
}

// Middleware rejects requests without a valid bearer token (401 problem+json) and stores the
// claims for FromContext.
func Middleware(v *Verifier) gin.HandlerFunc {
	return func(c *gin.Context) {
		tok, err := BearerToken(c.GetHeader("Authorization"))
		if err != nil {
			c.Header("WWW-Authenticate", `Bearer`)
			problem.Unauthorized.Write(c, "missing bearer token")
			return
		}
		claims, err := v.Verify(tok)
		if err != nil {
			c.Header("WWW-Authenticate", `Bearer error="invalid_token"`)
			detail := "invalid or expired token"
			if errors.Is(err, ErrBadTenant) {
				detail = "token has no valid tenant claim"
			}
			problem.Unauthorized.Write(c, detail)
			return
		}
		if claims.Tenant == "" {
			// An admin token without a tenant is valid, but it can't address tenant data.
			problem.Forbidden.Write(c, "token names no tenant; data routes need a tenant token")
			return
		}
		c.Set(contextKey, claims)
		c.Next()
	}
}

// RequireScope answers 403 unless the authenticated token grants scope. It must run after
// Middleware.
func RequireScope(scope string) gin.HandlerFunc {
	return func(c *gin.Context) {
		cl, ok := FromContext(c)
		if !ok {
			problem.Unauthorized.Write(c, "missing bearer token")
			return
		}
		if !cl.HasScope(scope) {
			problem.Forbidden.Write(c, fmt.Sprintf("token lacks scope %q", scope))
			return
		}
		c.Next()
	}
}

// ClusterToken guards internal endpoints: the request must carry `Authorization: Bearer
// <token>` equal to token (compared in constant time). An empty token denies everything.
func ClusterToken(token string) gin.HandlerFunc {
	return func(c *gin.Context) {
		got, err := BearerToken(c.GetHeader("Authorization"))
		if err != nil || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			c.Header("WWW-Authenticate", `Bearer`)
			problem.Unauthorized.Write(c, "cluster token required")
			return
		}
		c.Next()
	}
}
