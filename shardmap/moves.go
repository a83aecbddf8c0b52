package shardmap

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// Bounds of a lease (AcquireLease).
const (
	// MaxLeaseTTL is the longest lease AcquireLease grants: a holder that dies keeps a lease at
	// most this long.
	MaxLeaseTTL = time.Hour
	// maxLeaseField bounds a lease's name and holder, so a command cannot grow the map unbounded.
	maxLeaseField = 128
)

// Lease is a named lease as recorded in the map: who holds it and until when (the proposers'
// clock, see AcquireLease). A lease whose expiry has passed is free, but stays recorded until
// it is taken or released.
type Lease struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

func (s *state) acquireLease(c AcquireLease, at time.Time) error {
	if err := checkLeaseNames(c.Name, c.Holder); err != nil {
		return err
	}
	if c.TTL <= 0 || c.TTL > MaxLeaseTTL {
		return fmt.Errorf("%w: lease ttl %v not in (0, %v]", ErrBadCommand, c.TTL, MaxLeaseTTL)
	}
	if cur, ok := s.leases[c.Name]; ok && cur.Holder != c.Holder && !at.After(cur.Expires) {
		return fmt.Errorf("%w: %s held by %s until %s", ErrLeaseHeld, c.Name, cur.Holder, cur.Expires.Format(time.RFC3339Nano))
	}
	s.leases[c.Name] = Lease{Holder: c.Holder, Expires: at.Add(c.TTL).UTC()}
	return nil
}

func (s *state) releaseLease(c ReleaseLease) error {
	if err := checkLeaseNames(c.Name, c.Holder); err != nil {
		return err
	}
	cur, ok := s.leases[c.Name]
	if !ok {
		return nil // released already (a retried release), or never taken
	}
	if cur.Holder != c.Holder {
		return fmt.Errorf("%w: %s is held by %s, not %s", ErrLeaseHeld, c.Name, cur.Holder, c.Holder)
	}
	delete(s.leases, c.Name)
	return nil
}

func checkLeaseNames(name, holder string) error {
	if name == "" || holder == "" || len(name) > maxLeaseField || len(holder) > maxLeaseField {
		return fmt.Errorf("%w: lease name and holder must be 1..%d bytes", ErrBadCommand, maxLeaseField)
	}
	return nil
}

func (s *state) pruneMoves(c PruneMoves) error {
	if c.Before.IsZero() {
		return fmt.Errorf("%w: prune needs a time", ErrBadCommand)
	}
	for id, mv := range s.moves {
		if mv.Phase.Terminal() && mv.UpdatedAt.Before(c.Before) {
			delete(s.moves, id)
		}
	}
	return nil
}

// checkHomesAndLeases validates decoded tenant regions and leases (snapshot or watch answer).
func checkHomesAndLeases(regions []string, homes map[string]string, leases map[string]Lease) error {
	for t, r := range homes {
		if !ids.ValidTenant(t) {
			return fmt.Errorf("region of bad tenant id %q", t)
		}
		if !slices.Contains(regions, r) {
			return fmt.Errorf("tenant %q created in unknown region %q", t, r)
		}
	}
	for name, l := range leases {
		if err := checkLeaseNames(name, l.Holder); err != nil {
			return fmt.Errorf("lease %q: %w", name, err)
		}
	}
	return nil
}

// ActiveMove returns the tenant's move that is not finished (not done, cancelled or failed);
// a tenant has at most one. It is a map lookup on the immutable Map.
func (m *Map) ActiveMove(tenant string) (Move, bool) {
	id, ok := m.active[tenant]
	if !ok {
		return Move{}, false
	}
	return m.st.moves[id], true
}

// Lease returns the recorded holder and expiry of the lease name; ok is false when nobody has
// taken it (or it was released). An expired lease is still returned: compare expires with the
// caller's clock.
func (m *Map) Lease(name string) (holder string, expires time.Time, ok bool) {
	l, ok := m.st.leases[name]
	return l.Holder, l.Expires, ok
}

// TenantRegion returns the region a tenant was created in (CreateTenant with a Region); ok is
// false for a tenant created without one, which may live in any region. The rule that such a
// tenant only moves to shards homed in its region is the callers' (the admin API, the
// planner): the map records the region but RequestMove does not enforce it.
func (m *Map) TenantRegion(tenant string) (region string, ok bool) {
	region, ok = m.st.homes[tenant]
	return region, ok
}

// TenantRegions returns a copy of the tenant → creation region records.
func (m *Map) TenantRegions() map[string]string {
	return maps.Clone(m.st.homes)
}
