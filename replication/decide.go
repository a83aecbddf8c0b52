package replication

import (
	"context"
	"time"
)

// Source is where a read is served from.
type Source int

// The read sources, in the words of the X-Read-Source header.
const (
	SourcePrimary Source = iota
	SourceReplica
	SourceCache
)

// String returns the X-Read-Source header value.
func (s Source) String() string {
	switch s {
	case SourceReplica:
		return "replica"
	case SourceCache:
		return "cache"
	default:
		return "primary"
	}
}

// ReadRequest is what a read asks for.
type ReadRequest struct {
	// Strong is set by Prefer: consistency=strong.
	Strong bool
	// Token is the read's Consistency-Token, if any.
	Token *Token
}

// Reason says why a read goes to its source. The values are stable words fit for a metric
// label or a log attribute.
type Reason string

// The reasons a Decision gives, in the order the rules are applied (DESIGN.md).
const (
	// ReasonStrong: the read asked for Prefer: consistency=strong, so it goes to the primary.
	ReasonStrong Reason = "strong"
	// ReasonPrimaryLocal: there is no standby to ask (the local copy of the shard is its
	// primary), so the read goes to the primary. Only Policy.Choose gives it.
	ReasonPrimaryLocal Reason = "primary-local"
	// ReasonUnhealthy: the standby is not healthy (see Tracker), so the read goes to the primary.
	ReasonUnhealthy Reason = "unhealthy"
	// ReasonTooStale: the standby's proven staleness (StandbyStatus.Staleness) is over
	// Policy.MaxStaleness, or unknown, so the read goes to the primary.
	ReasonTooStale Reason = "too-stale"
	// ReasonTokenNotReplayed: the read's token is for this shard and the standby has not
	// replayed it, so the read goes to the primary (after Policy.Choose's bounded wait).
	ReasonTokenNotReplayed Reason = "token-not-replayed"
	// ReasonTokenOtherShard: the read's token is for another shard, so it says nothing about
	// this shard's WAL and is ignored; the standby serves the read.
	ReasonTokenOtherShard Reason = "token-other-shard"
	// ReasonTokenReplayed: the standby has replayed the read's token; it serves the read.
	ReasonTokenReplayed Reason = "token-replayed"
	// ReasonFresh: a read without a token, and the standby is healthy and within
	// Policy.MaxStaleness; it serves the read.
	ReasonFresh Reason = "fresh"
)

// Decision is where a read goes and why.
type Decision struct {
	Source Source
	Reason Reason
	// MinLSN, when not zero, is the read's token LSN for this shard: a replica read must check
	// in its own transaction, before its statements, that the standby has replayed it (the
	// tracked status can be an interval old, and another server may now answer at the
	// standby's address). It is zero when the read carries no token for this shard.
	MinLSN LSN
}

// Policy holds the staleness bounds. The zero value means the DESIGN.md defaults.
type Policy struct {
	// MaxStaleness is the most a standby's proven staleness (StandbyStatus.Staleness) may be
	// for it to serve a default read (default 5 s).
	MaxStaleness time.Duration
	// ReplayWait is how long Choose waits for a standby to replay a read's token before the
	// read goes to the primary: 0 means DefaultReplayWait, a negative value means no wait.
	ReplayWait time.Duration
}

// Defaults of Policy's zero fields.
const (
	DefaultMaxStaleness = 5 * time.Second
	DefaultReplayWait   = 100 * time.Millisecond
)

// Decide picks the source of a read on shard from what the standby reported, without waiting.
// The rules, in order: a strong read, an unhealthy standby, a standby whose proven staleness
// (st.Staleness, not the replay-timestamp st.Lag) is over MaxStaleness, and a token for this shard the standby has not replayed send the read to the
// primary; otherwise the standby serves it. Callers that can wait use Choose instead.
func (p Policy) Decide(shard string, req ReadRequest, st StandbyStatus, standbyHealthy bool) Decision {
	maxStale := p.MaxStaleness
	if maxStale <= 0 {
		maxStale = DefaultMaxStaleness
	}
	var minLSN LSN
	if req.Token != nil && req.Token.Shard == shard {
		minLSN = req.Token.LSN
	}
	switch {
	case req.Strong:
		return Decision{Source: SourcePrimary, Reason: ReasonStrong}
	case !standbyHealthy:
		return Decision{Source: SourcePrimary, Reason: ReasonUnhealthy, MinLSN: minLSN}
	case st.Staleness > maxStale:
		return Decision{Source: SourcePrimary, Reason: ReasonTooStale, MinLSN: minLSN}
	case req.Token == nil:
		return Decision{Source: SourceReplica, Reason: ReasonFresh}
	case req.Token.Shard != shard:
		return Decision{Source: SourceReplica, Reason: ReasonTokenOtherShard}
	case st.Replayed < req.Token.LSN:
		return Decision{Source: SourcePrimary, Reason: ReasonTokenNotReplayed, MinLSN: minLSN}
	default:
		return Decision{Source: SourceReplica, Reason: ReasonTokenReplayed, MinLSN: minLSN}
	}
}

// Choose decides where a read of shard goes, asking t for the status of standby, the shard's
// local standby (nil when the local copy is the primary: the read then goes there with
// ReasonPrimaryLocal), whose staleness t proves against primary, the shard's primary (sampled
// in the background, never on the read's path). A strong read is decided without asking t. When only the read's token
// holds it back from a healthy standby, Choose first waits up to ReplayWait for the standby to
// replay it and decides again. This is the whole read-source decision of DESIGN.md §6; the
// caller then reads the source it names, checking Decision.MinLSN on a replica, and reports a
// failed standby read to t.Record.
func (p Policy) Choose(ctx context.Context, t *Tracker, shard string, req ReadRequest, standby, primary Querier) Decision {
	if req.Strong {
		return p.Decide(shard, req, StandbyStatus{}, false)
	}
	if standby == nil {
		return Decision{Source: SourcePrimary, Reason: ReasonPrimaryLocal}
	}
	st, healthy := t.Status(ctx, shard, standby, primary)
	d := p.Decide(shard, req, st, healthy)
	wait := p.ReplayWait
	if wait == 0 {
		wait = DefaultReplayWait
	}
	if d.Reason != ReasonTokenNotReplayed || wait < 0 {
		return d
	}
	if t.WaitReplayed(ctx, shard, standby, d.MinLSN, wait) {
		st, healthy = t.Status(ctx, shard, standby, primary)
		d = p.Decide(shard, req, st, healthy)
	}
	return d
}
