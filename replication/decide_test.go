package replication

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	p := Policy{MaxStaleness: time.Second}
	tok := &Token{Shard: "s1", LSN: 100}
	other := &Token{Shard: "s2", LSN: 1000}
	primary := func(r Reason, lsn LSN) Decision { return Decision{Source: SourcePrimary, Reason: r, MinLSN: lsn} }
	replica := func(r Reason, lsn LSN) Decision { return Decision{Source: SourceReplica, Reason: r, MinLSN: lsn} }
	stale := StandbyStatus{Replayed: 500, Staleness: 2 * time.Second}
	cases := []struct {
		name    string
		req     ReadRequest
		st      StandbyStatus
		healthy bool
		want    Decision
	}{
		{"fresh standby", ReadRequest{}, StandbyStatus{Replayed: 50}, true, replica(ReasonFresh, 0)},
		{"at the staleness bound", ReadRequest{}, StandbyStatus{Staleness: time.Second}, true, replica(ReasonFresh, 0)},
		{"strong", ReadRequest{Strong: true}, StandbyStatus{Replayed: 50}, true, primary(ReasonStrong, 0)},
		{"strong beats everything", ReadRequest{Strong: true, Token: tok}, stale, false, primary(ReasonStrong, 0)},
		{"unhealthy", ReadRequest{}, StandbyStatus{Replayed: 50}, false, primary(ReasonUnhealthy, 0)},
		{"unhealthy beats too stale", ReadRequest{}, stale, false, primary(ReasonUnhealthy, 0)},
		{"unhealthy keeps the token", ReadRequest{Token: tok}, StandbyStatus{}, false, primary(ReasonUnhealthy, 100)},
		{"too stale", ReadRequest{}, stale, true, primary(ReasonTooStale, 0)},
		{"too stale beats a replayed token", ReadRequest{Token: tok}, stale, true, primary(ReasonTooStale, 100)},
		{"token not replayed", ReadRequest{Token: tok}, StandbyStatus{Replayed: 99}, true, primary(ReasonTokenNotReplayed, 100)},
		{"token replayed exactly", ReadRequest{Token: tok}, StandbyStatus{Replayed: 100}, true, replica(ReasonTokenReplayed, 100)},
		{"token replayed", ReadRequest{Token: tok}, StandbyStatus{Replayed: 101}, true, replica(ReasonTokenReplayed, 100)},
		{"token of another shard", ReadRequest{Token: other}, StandbyStatus{Replayed: 1}, true, replica(ReasonTokenOtherShard, 0)},
		{"token of another shard, too stale", ReadRequest{Token: other}, stale, true, primary(ReasonTooStale, 0)},
		{"staleness unknown", ReadRequest{}, StandbyStatus{Staleness: StalenessUnknown}, true, primary(ReasonTooStale, 0)},
		{"replay-timestamp lag is not staleness", ReadRequest{}, StandbyStatus{Lag: time.Hour}, true, replica(ReasonFresh, 0)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := p.Decide("s1", c.req, c.st, c.healthy); got != c.want {
				t.Fatalf("Decide = %+v, want %+v", got, c.want)
			}
		})
	}
	t.Run("zero policy", func(t *testing.T) {
		if got := (Policy{}).Decide("s1", ReadRequest{}, StandbyStatus{Staleness: 4 * time.Second}, true); got != replica(ReasonFresh, 0) {
			t.Fatalf("zero Policy should allow 4s lag under the 5s default, got %+v", got)
		}
		if got := (Policy{}).Decide("s1", ReadRequest{}, StandbyStatus{Staleness: 6 * time.Second}, true); got != primary(ReasonTooStale, 0) {
			t.Fatalf("zero Policy should refuse 6s lag over the 5s default, got %+v", got)
		}
	})
}

func TestSourceString(t *testing.T) {
	for src, want := range map[Source]string{SourcePrimary: "primary", SourceReplica: "replica", SourceCache: "cache"} {
		if got := src.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", src, got, want)
		}
	}
}
