package shardmap

import (
	"fmt"
	"slices"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// Bounds of a tenant's limit overrides (TenantLimits.Validate). They keep an override inside
// what the router's rate limiter can represent (a GCRA bucket in integer microseconds) and out
// of the range where a typo would switch a tenant's limits off.
const (
	// MinTenantRPS is the smallest rate override: one request per 1000 s.
	MinTenantRPS = 0.001
	// MaxTenantRPS is the largest rate override (the rate limiter's own ceiling, 10⁶/s).
	MaxTenantRPS = 1e6
	// MaxTenantBurst is the largest burst override.
	MaxTenantBurst = 1_000_000
	// MaxTenantConcurrency is the largest override of requests in flight per router.
	MaxTenantConcurrency = 100_000
)

// Limit field names, as SetTenantLimits.Reset and the admin API spell them.
const (
	LimitRPS         = "rps"
	LimitBurst       = "burst"
	LimitConcurrency = "concurrency"
)

// TenantLimits are a tenant's overrides of the routers' default limits. A zero field is not
// overridden: the router's default applies.
type TenantLimits struct {
	// RPS is the sustained rate of the tenant's rate-limit bucket, requests per second.
	RPS float64 `json:"rps,omitempty"`
	// Burst is the bucket's size: requests admitted at once.
	Burst int `json:"burst,omitempty"`
	// Concurrency bounds the tenant's requests in flight through one router.
	Concurrency int `json:"concurrency,omitempty"`
}

// IsZero reports whether no field is overridden.
func (l TenantLimits) IsZero() bool { return l == TenantLimits{} }

// Validate checks every overridden (non-zero) field against its bounds: RPS in
// [MinTenantRPS, MaxTenantRPS], Burst in [1, MaxTenantBurst], Concurrency in
// [1, MaxTenantConcurrency]. A negative value is out of bounds, not "unset".
func (l TenantLimits) Validate() error {
	if l.RPS != 0 && !(l.RPS >= MinTenantRPS && l.RPS <= MaxTenantRPS) {
		return fmt.Errorf("%w: rps %v not in [%v, %v]", ErrBadLimits, l.RPS, MinTenantRPS, float64(MaxTenantRPS))
	}
	if l.Burst < 0 || l.Burst > MaxTenantBurst {
		return fmt.Errorf("%w: burst %d not in [1, %d]", ErrBadLimits, l.Burst, MaxTenantBurst)
	}
	if l.Concurrency < 0 || l.Concurrency > MaxTenantConcurrency {
		return fmt.Errorf("%w: concurrency %d not in [1, %d]", ErrBadLimits, l.Concurrency, MaxTenantConcurrency)
	}
	return nil
}

// setTenantLimits applies a SetTenantLimits to s. The map has no list of tenants (a
// slot-placed tenant stores nothing), so it cannot tell a tenant that was never created from
// one that was: that check is the admin API's, which asks the tenant's shard before proposing
// the command. The map's own rule is that the id is valid, and an entry exists only while at
// least one field is overridden, so the state stays O(overridden tenants).
func (s *state) setTenantLimits(c SetTenantLimits) error {
	if !ids.ValidTenant(c.Tenant) {
		return fmt.Errorf("%w: %q", ErrBadTenantID, c.Tenant)
	}
	if err := c.Set.Validate(); err != nil {
		return err
	}
	cur := s.limits[c.Tenant]
	for _, f := range c.Reset {
		switch f {
		case LimitRPS:
			if c.Set.RPS != 0 {
				return fmt.Errorf("%w: rps both set and reset", ErrBadLimits)
			}
			cur.RPS = 0
		case LimitBurst:
			if c.Set.Burst != 0 {
				return fmt.Errorf("%w: burst both set and reset", ErrBadLimits)
			}
			cur.Burst = 0
		case LimitConcurrency:
			if c.Set.Concurrency != 0 {
				return fmt.Errorf("%w: concurrency both set and reset", ErrBadLimits)
			}
			cur.Concurrency = 0
		default:
			return fmt.Errorf("%w: unknown limit %q", ErrBadLimits, f)
		}
	}
	if c.Set.RPS != 0 {
		cur.RPS = c.Set.RPS
	}
	if c.Set.Burst != 0 {
		cur.Burst = c.Set.Burst
	}
	if c.Set.Concurrency != 0 {
		cur.Concurrency = c.Set.Concurrency
	}
	if cur.IsZero() {
		delete(s.limits, c.Tenant)
		return nil
	}
	s.limits[c.Tenant] = cur
	return nil
}

// checkLimits validates decoded limit overrides (snapshot or watch answer).
func checkLimits(limits map[string]TenantLimits) error {
	for t, l := range limits {
		if !ids.ValidTenant(t) {
			return fmt.Errorf("limits of bad tenant id %q", t)
		}
		if l.IsZero() {
			return fmt.Errorf("empty limits for tenant %q", t)
		}
		if err := l.Validate(); err != nil {
			return fmt.Errorf("limits of tenant %q: %w", t, err)
		}
	}
	return nil
}

// TenantLimits returns the tenant's limit overrides; ok is false when none is set (the
// routers' defaults apply). It is a map lookup on the immutable Map and does not allocate.
func (m *Map) TenantLimits(tenant string) (l TenantLimits, ok bool) {
	l, ok = m.st.limits[tenant]
	return l, ok
}

// LimitedTenants returns the ids of the tenants with limit overrides, sorted.
func (m *Map) LimitedTenants() []string {
	out := make([]string, 0, len(m.st.limits))
	for t := range m.st.limits {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}
