package replication

import (
	"context"
	"fmt"
	"math"
	"time"
)

// StalenessUnknown is StandbyStatus.Staleness when nothing proves the standby fresh as of any
// time: no primary sample yet (the primary was never reached), or the standby has not replayed
// even the oldest sample kept.
const StalenessUnknown = time.Duration(math.MaxInt64)

// maxSamples is how many primary samples a shard keeps. Samples are at least an interval apart
// and an idle primary's repeated position updates one sample in place, so at the 250 ms default
// they span 16 s of writes, well past DefaultMaxStaleness.
const maxSamples = 64

// primarySampleSQL reads the primary's WAL insert position with the WAL block and segment sizes
// (to see whether the position sits just after a page header). The insert position, unlike the
// write position, is at or after the commit record of every commit already acknowledged, even
// asynchronous ones (synchronous_commit off acknowledges before the WAL is written).
const primarySampleSQL = `SELECT pg_current_wal_insert_lsn()::text,
	(SELECT setting::int8 FROM pg_settings WHERE name = 'wal_block_size'),
	(SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size')`

// Sample is one reading of a primary's WAL position: every commit acknowledged before At has its
// commit record before LSN, so a standby that has replayed LSN shows every write acknowledged
// before At.
type Sample struct {
	At  time.Time
	LSN LSN
}

// ReadPrimarySample reads the primary's current WAL position, stamping it with at, which the
// caller must take from its clock just before calling. A position just after a page header is
// returned as the page boundary before it: no record lies between them, and a standby that has
// replayed up to the boundary reports the boundary, not the position after the header, so an
// idle primary's standby could otherwise never be seen to reach it.
func ReadPrimarySample(ctx context.Context, q Querier, at time.Time) (Sample, error) {
	var (
		s              string
		block, segment int64
	)
	if err := q.QueryRow(ctx, primarySampleSQL).Scan(&s, &block, &segment); err != nil {
		return Sample{}, fmt.Errorf("replication: primary sample: %w", err)
	}
	lsn, err := ParseLSN(s)
	if err != nil {
		return Sample{}, err
	}
	return Sample{At: at, LSN: pageStart(lsn, block, segment)}, nil
}

// Sizes of Postgres' WAL page headers (XLogShortPageHeaderData at the start of every page,
// XLogLongPageHeaderData at the start of every segment), MAXALIGNed on 64-bit builds.
const (
	shortPageHeader = 24
	longPageHeader  = 40
)

// pageStart moves an insert position that sits right after a WAL page header back to the page
// boundary (the end position of the record before it).
func pageStart(lsn LSN, block, segment int64) LSN {
	if block <= 0 || segment <= 0 {
		return lsn
	}
	switch {
	case uint64(lsn)%uint64(segment) == longPageHeader:
		return lsn - longPageHeader
	case uint64(lsn)%uint64(segment) >= uint64(block) && uint64(lsn)%uint64(block) == shortPageHeader:
		return lsn - shortPageHeader
	}
	return lsn
}

// freshAsOf returns the time of the newest sample the standby has replayed (replayed >= its
// LSN), and false when it has replayed none. samples are oldest first.
func freshAsOf(samples []Sample, replayed LSN) (time.Time, bool) {
	for i := len(samples) - 1; i >= 0; i-- {
		if samples[i].LSN <= replayed {
			return samples[i].At, true
		}
	}
	return time.Time{}, false
}

// addSample appends s to samples (oldest first), keeping at most maxSamples. A sample at the
// newest one's LSN replaces it: the later time is proven by the same replay.
func addSample(samples []Sample, s Sample) []Sample {
	if n := len(samples); n > 0 && samples[n-1].LSN >= s.LSN {
		if samples[n-1].LSN == s.LSN {
			samples[n-1].At = s.At
		}
		return samples // a position that went back (another server now?) proves nothing new
	}
	if len(samples) == maxSamples {
		samples = append(samples[:0], samples[1:]...)
	}
	return append(samples, s)
}
