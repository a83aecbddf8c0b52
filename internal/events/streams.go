package events

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamLimits bound the streams EnsureStreams makes. JetStream is transport: what a limit
// drops, a consumer repairs from the outbox (a gap), so limits trade memory for repair work.
type StreamLimits struct {
	// MaxAge drops messages older than this (default 1h).
	MaxAge time.Duration
	// MaxBytes bounds each stream's size (default 256 MiB); the oldest messages go first.
	MaxBytes int64
	// Duplicates is the publish deduplication window of origin streams (default 2m): a
	// relay's re-publish of a row within it is dropped by the server.
	Duplicates time.Duration
}

func (l StreamLimits) withDefaults() StreamLimits {
	if l.MaxAge <= 0 {
		l.MaxAge = time.Hour
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = 256 << 20
	}
	if l.Duplicates <= 0 {
		l.Duplicates = 2 * time.Minute
	}
	return l
}

// OriginStream is the stream a home region's relays publish to (subjects Subject(region, *)).
func OriginStream(region string) string { return "EV-" + region }

// FanInStream is the stream of region that sources every region's origin stream, its own
// included: what the region's consumers read.
func FanInStream(region string) string { return "IN-" + region }

// EnsureStreams creates or updates region's origin stream and its fan-in stream sourcing the
// origin streams of all regions (region included), both placed in region's JetStream cluster
// (the gateway name). It is idempotent; every API node of the region calls it at start.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, region string, all []string, lim StreamLimits) error {
	lim = lim.withDefaults()
	place := &jetstream.Placement{Cluster: region}
	origin := jetstream.StreamConfig{
		Name:        OriginStream(region),
		Description: "change events of the shards homed in " + region,
		Subjects:    []string{subjectPrefix + region + ".>"},
		Storage:     jetstream.FileStorage,
		Replicas:    1,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      lim.MaxAge,
		MaxBytes:    lim.MaxBytes,
		Duplicates:  lim.Duplicates,
		Placement:   place,
	}
	if _, err := js.CreateOrUpdateStream(ctx, origin); err != nil {
		return fmt.Errorf("events: stream %s: %w", origin.Name, err)
	}
	fanIn := jetstream.StreamConfig{
		Name:        FanInStream(region),
		Description: "change events of every region, read by " + region + "'s consumers",
		Storage:     jetstream.FileStorage,
		Replicas:    1,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      lim.MaxAge,
		MaxBytes:    lim.MaxBytes,
		Placement:   place,
	}
	for _, r := range all {
		fanIn.Sources = append(fanIn.Sources, &jetstream.StreamSource{Name: OriginStream(r)})
	}
	if _, err := js.CreateOrUpdateStream(ctx, fanIn); err != nil {
		return fmt.Errorf("events: stream %s: %w", fanIn.Name, err)
	}
	return nil
}
