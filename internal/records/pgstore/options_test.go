package pgstore

import (
	"errors"
	"testing"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/replication"
)

func TestDecodeOptions(t *testing.T) {
	good := replication.Token{Shard: "s1", LSN: 0x16B3748}
	for _, tc := range []struct {
		name, token string
		want        *replication.Token
		bad         bool
	}{
		{"none", "", nil, false},
		{"token", good.Encode(), &good, false},
		{"padded token", " " + good.Encode() + " ", &good, false},
		{"old colon format", "MTpzMTowLzE2QjM3NDg", nil, true},
		{"not base64", "!!", nil, true},
		{"bad shard", replication.Token{Shard: "S_1", LSN: 1}.Encode(), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr, err := decodeOptions(records.ReadOptions{Strong: true, Token: tc.token})
			if tc.bad {
				if !errors.Is(err, records.ErrBadToken) {
					t.Fatalf("err %v, want ErrBadToken", err)
				}
				return
			}
			if err != nil || !rr.strong || (rr.token == nil) != (tc.want == nil) || (rr.token != nil && *rr.token != *tc.want) {
				t.Fatalf("got %+v (token %v) %v, want token %v", rr, rr.token, err, tc.want)
			}
		})
	}
}

// FuzzDecodeOptions feeds arbitrary Consistency-Token values to the store's decoding: it never
// panics, rejects only with ErrBadToken, and an accepted token survives a round trip.
func FuzzDecodeOptions(f *testing.F) {
	f.Add(replication.Token{Shard: "s1", LSN: 42}.Encode())
	f.Add("!!")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		rr, err := decodeOptions(records.ReadOptions{Token: token})
		if err != nil {
			if !errors.Is(err, records.ErrBadToken) {
				t.Fatalf("rejected with %v", err)
			}
			return
		}
		if rr.token != nil {
			again, err := replication.DecodeToken(rr.token.Encode())
			if err != nil || again != *rr.token {
				t.Fatalf("token %q decoded to %+v, which does not round-trip: %+v %v", token, *rr.token, again, err)
			}
		}
	})
}
