package pgstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/replication"
)

// TestRequestFaultsKeepStandbyHealthy: reads that fail because of their own content (values the
// database rejects: SQLSTATE classes 22 and 54) are the client's 400 and never count against
// the standby, on every read path — list, batch, a Consistency-Token read on the standby, a
// token the standby has not replayed (the replay wait, then the primary) and a strong read. The
// store counts a standby unhealthy after one failure here, so a single counted failure would
// send the next read of another tenant to the primary.
func TestRequestFaultsKeepStandbyHealthy(t *testing.T) {
	se := newStandbyEnv(t, shards.Config{}, func(c *Config) {
		c.StandbyFailures = 1
		c.StandbyInterval = time.Hour // the cached status is never refreshed (which would reset failures)
		c.RYWWait = 20 * time.Millisecond
	})
	for _, tn := range []string{"attacker", "victim"} {
		createTenant(t, se.home, tn)
	}
	put(t, se.home, "attacker", "n", "a1", `{"v":1}`)
	w := put(t, se.home, "victim", "n", "v1", `{"v":1}`)
	se.waitReplayed(t, w.Token)
	ctx := context.Background()
	victimRead := func(t *testing.T) {
		t.Helper()
		r, info, err := se.local.Get(ctx, target("victim"), records.ReadOptions{}, "n", "v1")
		if err != nil || info.Source != records.SourceReplica || info.FellBack || r.Version != 1 {
			t.Fatalf("victim's read: %+v %v, want it served by the replica", info, err)
		}
	}
	victimRead(t) // the first read checks the standby's status and caches it

	tok, err := replication.DecodeToken(w.Token)
	if err != nil {
		t.Fatal(err)
	}
	future := replication.Token{Shard: "s1", LSN: tok.LSN + 1<<40}.Encode()
	attacker := target("attacker")
	list := func(ro records.ReadOptions, filter string) func() (records.ReadInfo, error) {
		return func() (records.ReadInfo, error) {
			_, info, err := se.local.List(ctx, attacker, ro, "n", records.ListQuery{Limit: 5, Filter: filter})
			return info, err
		}
	}
	batch := func(ids, fields []string) func() (records.ReadInfo, error) {
		return func() (records.ReadInfo, error) {
			_, info, err := se.local.GetMany(ctx, attacker, records.ReadOptions{}, "n", ids, fields)
			return info, err
		}
	}
	tests := []struct {
		name   string
		read   func() (records.ReadInfo, error)
		source records.Source
	}{
		{"list with a NUL in a filter string", list(records.ReadOptions{}, `{"a":"\u0000"}`), records.SourceReplica},
		{"list with a number out of range", list(records.ReadOptions{}, `{"n":1e999999999}`), records.SourceReplica},
		{"list with a replayed token", list(records.ReadOptions{Token: w.Token}, `{"a":"\u0000"}`), records.SourceReplica},
		{"list after the replay wait", list(records.ReadOptions{Token: future}, `{"a":"\u0000"}`), records.SourcePrimary},
		{"strong list", list(records.ReadOptions{Strong: true}, `{"a":"\u0000"}`), records.SourcePrimary},
		{"batch with a NUL in an id", batch([]string{"a1", "x\x00y"}, nil), records.SourceReplica},
		{"batch with a NUL in a field", batch([]string{"a1"}, []string{"v\x00"}), records.SourceReplica},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 3 {
				info, err := tt.read()
				var ve *records.ValueError
				if !errors.As(err, &ve) || info.Source != tt.source || info.FellBack {
					t.Fatalf("%+v %v, want a ValueError answered by %s without a fallback", info, err, tt.source)
				}
			}
			victimRead(t)
		})
	}
}
