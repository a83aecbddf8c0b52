package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// signRaw signs a compact JWT from a header and a payload written by hand, so a test can send
// what no JWT library would produce (crit, a string exp, a claim named twice).
func signRaw(t *testing.T, m jwt.SigningMethod, key any, header map[string]any, payload string) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding
	s := b64.EncodeToString(h) + "." + b64.EncodeToString([]byte(payload))
	sig, err := m.Sign(s, key)
	if err != nil {
		t.Fatal(err)
	}
	return s + "." + b64.EncodeToString(sig)
}

// TestVerifyHostileTokens: for each kind of key (HS256 secret, RS256 and EdDSA from a JWKS), a
// correctly signed token is still refused when its header has crit or a date claim is not a
// JSON number, or a claim is named twice; the same claims written properly are accepted.
func TestVerifyHostileTokens(t *testing.T) {
	k := writeJWKS(t)
	v, err := NewVerifier(Config{Secret: secret, JWKSFile: k.path, Now: func() time.Time { return now }, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	exp := strconv.FormatInt(now.Add(time.Hour).Unix(), 10)
	iat := strconv.FormatInt(now.Add(-time.Minute).Unix(), 10)
	claimsJSON := func(expJSON, iatJSON, extra string) string {
		return `{"sub":"u1","tenant":"acme","scope":"data:read","iat":` + iatJSON + `,"exp":` + expJSON + extra + `}`
	}
	signers := []struct {
		name   string
		method jwt.SigningMethod
		key    any
		kid    string
	}{
		{"HS256", jwt.SigningMethodHS256, secret, ""},
		{"RS256", jwt.SigningMethodRS256, k.rsa, "r1"},
		{"EdDSA", jwt.SigningMethodEdDSA, k.ed, "e1"},
	}
	tests := []struct {
		name    string
		crit    any // nil: no crit header
		payload string
		want    error // nil: accepted
	}{
		{"well formed", nil, claimsJSON(exp, iat, ""), nil},
		{"fractional dates", nil, claimsJSON(exp+".5", iat+".25", ""), nil},
		{"nbf number", nil, claimsJSON(exp, iat, `,"nbf":`+iat), nil},
		{"crit with a name", []string{"exp"}, claimsJSON(exp, iat, ""), ErrCritical},
		{"crit empty", []string{}, claimsJSON(exp, iat, ""), ErrCritical},
		{"crit null", json.RawMessage("null"), claimsJSON(exp, iat, ""), ErrCritical},
		{"exp a string", nil, claimsJSON(`"`+exp+`"`, iat, ""), ErrBadClaims},
		{"iat a string", nil, claimsJSON(exp, `"`+iat+`"`, ""), ErrBadClaims},
		{"nbf a string", nil, claimsJSON(exp, iat, `,"nbf":"`+iat+`"`), ErrBadClaims},
		{"exp null", nil, claimsJSON(`null`, iat, ""), ErrBadClaims},
		{"exp true", nil, claimsJSON(`true`, iat, ""), ErrBadClaims},
		{"exp an array", nil, claimsJSON(`[`+exp+`]`, iat, ""), ErrBadClaims},
		{"exp named twice", nil, claimsJSON(exp, iat, `,"exp":`+exp), ErrBadClaims},
		{"tenant named twice", nil, claimsJSON(exp, iat, `,"tenant":"victim"`), ErrBadClaims},
		{"tenant a number", nil, `{"sub":"u1","tenant":5,"scope":"data:read","iat":` + iat + `,"exp":` + exp + `}`, ErrBadClaims},
		// Names are exact: "EXP" is not exp, so the token has no expiry and is refused.
		{"upper-case EXP only", nil, `{"sub":"u1","tenant":"acme","scope":"data:read","iat":` + iat + `,"EXP":` + exp + `}`, ErrInvalidToken},
		{"upper-case EXP string beside exp", nil, claimsJSON(exp, iat, `,"EXP":"1"`), nil},
		{"claims not an object", nil, `[1]`, ErrInvalidToken},
	}
	for _, sg := range signers {
		for _, tt := range tests {
			t.Run(sg.name+"/"+tt.name, func(t *testing.T) {
				h := map[string]any{"alg": sg.method.Alg(), "typ": "JWT"}
				if sg.kid != "" {
					h["kid"] = sg.kid
				}
				if tt.crit != nil {
					h["crit"] = tt.crit
				}
				c, err := v.Verify(signRaw(t, sg.method, sg.key, h, tt.payload))
				if tt.want == nil {
					if err != nil || c.Tenant != "acme" || c.ExpiresAt.Unix() != now.Add(time.Hour).Unix() {
						t.Fatalf("refused a good token: %v %+v", err, c)
					}
					return
				}
				if !errors.Is(err, tt.want) || !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("err = %v, want %v (and ErrInvalidToken)", err, tt.want)
				}
				if strings.Contains(err.Error(), "token has invalid") || strings.Contains(err.Error(), "json:") {
					t.Fatalf("error %q carries the library's text", err)
				}
			})
		}
	}
}
