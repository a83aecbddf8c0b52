package pgstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/internal/shards"
	"github.com/meridian-dev/meridian/replication"
)

// TestReadLSN: every read reports a WAL position its data is at least as new as. On the standby
// it covers a write the standby has replayed and is no later than the standby's replay
// position after the read (it is the standby's own, not the primary's); on the primary it
// covers the write too.
func TestReadLSN(t *testing.T) {
	// A long interval keeps the cached standby status: reads stay on the standby.
	se := newStandbyEnv(t, shards.Config{}, func(c *Config) { c.StandbyInterval = time.Hour })
	createTenant(t, se.home, "acme")
	w := put(t, se.home, "acme", "n", "n1", `{"v":1}`)
	se.waitReplayed(t, w.Token)
	tok, err := replication.DecodeToken(w.Token)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sconn, err := pgx.Connect(ctx, se.standby.DSN(se.db))
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close(ctx)

	reads := map[string]func(*Store, records.ReadOptions) (records.ReadInfo, error){
		"get": func(s *Store, ro records.ReadOptions) (records.ReadInfo, error) {
			_, info, err := s.Get(ctx, target("acme"), ro, "n", "n1")
			return info, err
		},
		"list": func(s *Store, ro records.ReadOptions) (records.ReadInfo, error) {
			_, info, err := s.List(ctx, target("acme"), ro, "n", records.ListQuery{Limit: 5})
			return info, err
		},
		"batch": func(s *Store, ro records.ReadOptions) (records.ReadInfo, error) {
			_, info, err := s.GetMany(ctx, target("acme"), ro, "n", []string{"n1"}, nil)
			return info, err
		},
	}
	for name, read := range reads {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				name   string
				store  *Store
				ro     records.ReadOptions
				source records.Source
			}{
				{"standby", se.local, records.ReadOptions{}, records.SourceReplica},
				{"standby with token", se.local, records.ReadOptions{Token: w.Token}, records.SourceReplica},
				{"strong", se.local, records.ReadOptions{Strong: true}, records.SourcePrimary},
				{"home primary", se.home, records.ReadOptions{}, records.SourcePrimary},
			} {
				info, err := read(tc.store, tc.ro)
				if err != nil || info.Source != tc.source {
					t.Fatalf("%s: %+v %v, want source %s", tc.name, info, err, tc.source)
				}
				if replication.LSN(info.LSN) < tok.LSN {
					t.Fatalf("%s: read LSN %s is before the write's token LSN %s", tc.name, replication.LSN(info.LSN), tok.LSN)
				}
				if tc.source == records.SourceReplica {
					st, err := replication.ReadStandbyStatus(ctx, sconn)
					if err != nil {
						t.Fatal(err)
					}
					if replication.LSN(info.LSN) > st.Replayed {
						t.Fatalf("%s: read LSN %s is past the standby's replay position %s", tc.name, replication.LSN(info.LSN), st.Replayed)
					}
				}
			}
		})
	}
	// A failed read reports no position.
	if _, info, err := se.local.Get(ctx, target("ghost"), records.ReadOptions{}, "n", "n1"); !errors.Is(err, records.ErrTenantNotFound) || info.LSN != 0 {
		t.Fatalf("ghost read: %+v %v, want ErrTenantNotFound and LSN 0", info, err)
	}
}
