// Package replication owns what Meridian knows about Postgres physical replication: log
// sequence numbers (LSNs), the consistency tokens that carry a write's commit LSN back to the
// client, the health, replay position and lag of each shard's hot standby (Tracker), waiting
// for a standby to replay a token, and the bounded-staleness decision that picks the source of
// a read and says why (Policy.Decide, and Policy.Choose which adds the read-your-writes wait).
// DESIGN.md next to this file describes the rules; the system design is DESIGN.md §6.
//
// It talks to Postgres only through the small Querier interface (satisfied by *pgxpool.Pool,
// *pgx.Conn and pgx.Tx), never opens connections itself, and never writes. It must not learn
// about HTTP, tenants or the shard map: callers pass a shard id, a request and a querier.
// Tests should run it against a real primary and standby from internal/testenv, pausing the
// standby's replay to make it lag.
package replication

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// Errors returned by this package.
var (
	// ErrBadLSN is returned for text that is not an LSN of the form "16/B374D848".
	ErrBadLSN = errors.New("replication: malformed LSN")
	// ErrBadToken is returned for a consistency token that does not decode.
	ErrBadToken = errors.New("replication: malformed consistency token")
	// ErrNotStandby is returned by standby-only queries run against a primary.
	ErrNotStandby = errors.New("replication: server is not a standby")
)

// Querier is the part of pgx that this package needs.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// LSN is a Postgres write-ahead-log position.
type LSN uint64

// ParseLSN parses Postgres' textual LSN form, two hexadecimal halves separated by a slash.
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrBadLSN, s)
	}
	return LSN(h<<32 | l), nil
}

// String returns the LSN in Postgres' textual form.
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF)
}

// Token is a read-your-writes consistency token: the shard a write committed on and an LSN at
// or after its commit record. A read carrying it may be served by a standby only once that
// standby has replayed LSN.
type Token struct {
	Shard string
	LSN   LSN
}

// tokenVersion prefixes every encoded token so the format can change without ambiguity.
const tokenVersion = "1"

// Encode returns the token's opaque wire form (unpadded base64url of "1|shard|lsn-hex").
// Tokens are not secrets and need no signature: a forged token can only make a read wait for,
// or go to, a primary, never return another tenant's data.
func (t Token) Encode() string {
	raw := tokenVersion + "|" + t.Shard + "|" + strconv.FormatUint(uint64(t.LSN), 16)
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

// DecodeToken parses a token produced by Token.Encode.
func DecodeToken(s string) (Token, error) {
	if s == "" || len(s) > 256 {
		return Token{}, ErrBadToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Token{}, ErrBadToken
	}
	parts := strings.Split(string(raw), "|")
	if len(parts) != 3 || parts[0] != tokenVersion || !ids.ValidShard(parts[1]) {
		return Token{}, ErrBadToken
	}
	lsn, err := strconv.ParseUint(parts[2], 16, 64)
	if err != nil {
		return Token{}, ErrBadToken
	}
	t := Token{Shard: parts[1], LSN: LSN(lsn)}
	// One spelling per token: the decoder skips newlines and ParseUint takes leading zeros.
	if t.Encode() != s {
		return Token{}, ErrBadToken
	}
	return t, nil
}

// CurrentLSN returns the primary's current WAL insert position. Taken after a write's COMMIT
// returns, it is at or after that commit record, so it is a safe consistency-token LSN.
func CurrentLSN(ctx context.Context, q Querier) (LSN, error) {
	var s string
	if err := q.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("replication: current lsn: %w", err)
	}
	return ParseLSN(s)
}

// StandbyStatus is a standby's replication position at one moment.
type StandbyStatus struct {
	// Replayed is the last WAL position applied (visible to queries).
	Replayed LSN
	// Received is the last WAL position received from the primary.
	Received LSN
	// Lag is the standby's own guess of how far behind the primary its visible state is, from
	// the replay timestamp: zero when every received record has been replayed, so a standby
	// that receives nothing (cut off from the primary) shows 0. It is not what reads are
	// decided on; see Staleness.
	Lag time.Duration
	// Staleness is a proven upper bound on how old the standby's visible state is: the time
	// since the newest primary sample (Sample) the standby has replayed, StalenessUnknown when
	// it has replayed none. Only a Tracker sets it (ReadStandbyStatus cannot: it needs the
	// primary); Policy.Decide sends default reads to the primary when it exceeds MaxStaleness.
	Staleness time.Duration
}

// ReadStandbyStatus queries a standby's replay position and lag. It returns ErrNotStandby when
// the server is a primary.
func ReadStandbyStatus(ctx context.Context, q Querier) (StandbyStatus, error) {
	var (
		inRecovery      bool
		replayed, recvd *string
		lagMicros       *float64
	)
	err := q.QueryRow(ctx, `SELECT pg_is_in_recovery(),
		pg_last_wal_replay_lsn()::text,
		pg_last_wal_receive_lsn()::text,
		EXTRACT(EPOCH FROM (clock_timestamp() - pg_last_xact_replay_timestamp())) * 1e6`).
		Scan(&inRecovery, &replayed, &recvd, &lagMicros)
	if err != nil {
		return StandbyStatus{}, fmt.Errorf("replication: standby status: %w", err)
	}
	if !inRecovery {
		return StandbyStatus{}, ErrNotStandby
	}
	var st StandbyStatus
	if replayed != nil {
		if st.Replayed, err = ParseLSN(*replayed); err != nil {
			return StandbyStatus{}, err
		}
	}
	if recvd != nil {
		if st.Received, err = ParseLSN(*recvd); err != nil {
			return StandbyStatus{}, err
		}
	}
	// Lag from the replay timestamp overstates an idle standby's lag (nothing new to replay), so
	// it counts only while received WAL is still waiting to be replayed.
	if lagMicros != nil && st.Received > st.Replayed && *lagMicros > 0 {
		st.Lag = time.Duration(*lagMicros) * time.Microsecond
	}
	return st, nil
}
