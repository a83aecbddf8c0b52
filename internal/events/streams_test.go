package events

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meridian-dev/meridian/internal/localsrv"
)

// TestFanInAcrossGateways: a change published in one region's origin stream reaches every
// region's fan-in stream, in order, through the gateway mesh.
func TestFanInAcrossGateways(t *testing.T) {
	regions := []string{"us-east", "us-west", "eu-west"}
	servers, err := localsrv.StartNATSGateways(regions, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = localsrv.ShutdownNATS(servers) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := map[string]jetstream.JetStream{}
	for _, r := range regions {
		nc, err := nats.Connect(servers[r].ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		j, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		js[r] = j
		if err := EnsureStreams(ctx, j, r, regions, StreamLimits{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		e := Event{Kind: KindChange, Shard: "us-east-1", Tenant: "acme", Seq: int64(i), OutboxID: int64(i), Collection: "notes", ID: "n1", Op: "update", Version: int64(i), AsOf: time.Now()}
		if _, err := js["us-east"].Publish(ctx, Subject("us-east", "us-east-1"), e.Marshal(), jetstream.WithMsgID(MsgID(e.Shard, e.OutboxID))); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range regions {
		cons, err := js[r].OrderedConsumer(ctx, FanInStream(r), jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 5; i++ {
			m, err := cons.Next(jetstream.FetchMaxWait(20 * time.Second))
			if err != nil {
				t.Fatalf("%s: message %d: %v", r, i, err)
			}
			e, err := Unmarshal(m.Data())
			if err != nil || e.Seq != int64(i) {
				t.Fatalf("%s: message %d = %+v, %v", r, i, e, err)
			}
		}
	}
}
