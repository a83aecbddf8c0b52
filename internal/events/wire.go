// Package events carries change events from each shard's outbox to every region: the relay
// publishes a home shard's outbox rows to its region's JetStream stream, every region sources
// every home region's stream into a fan-in stream of its own, and each API node's consumer reads
// its region's fan-in stream in order, repairing gaps from the outbox (Postgres is the truth,
// JetStream is transport: DESIGN.md §7). See docs/events.md.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/meridian-dev/meridian/shardmap/ids"
)

// The kinds of message on a shard's subject.
const (
	// KindChange is one outbox row: a committed write of one record.
	KindChange = "change"
	// KindHeartbeat says every write acknowledged on the shard before AsOf has been published
	// before this message (the relay sends one after every batch, and at least every
	// RelayConfig.Heartbeat when idle). A region's consumer uses it to prove its invalidations
	// are current (Consumer.Fresh).
	KindHeartbeat = "heartbeat"
	// KindReset tells every region to drop everything cached for Tenant (a move's cutover): the
	// consumers bump the tenant's cache generation.
	KindReset = "reset"
)

// Event is one message of a shard's subject, JSON on the wire.
type Event struct {
	Kind  string `json:"kind"`
	Shard string `json:"shard"`
	// Change and reset: the tenant.
	Tenant string `json:"tenant,omitempty"`
	// Change: the tenant's change sequence (tenants.change_seq, gap-free per tenant, the
	// /v1/changes event id), the outbox row id (the publish's deduplication id) and the record.
	Seq        int64  `json:"seq,omitempty"`
	OutboxID   int64  `json:"outbox_id,omitempty"`
	Collection string `json:"collection,omitempty"`
	ID         string `json:"id,omitempty"`
	Op         string `json:"op,omitempty"` // create, update or delete
	Version    int64  `json:"version,omitempty"`
	// LSN is at or past the commit of every change published so far on the shard, this one
	// included (the primary's WAL position read after the row became visible): a standby that
	// has replayed LSN shows this change.
	LSN uint64 `json:"lsn"`
	// AsOf, primary's clock. Heartbeat: every write acknowledged before AsOf has been
	// published before this message. Change: when the row was written.
	AsOf time.Time `json:"as_of"`
	// Session names the relay session that published a change or heartbeat (one lock
	// holder's run on the shard). A heartbeat also carries Count, how many changes the session
	// has had acknowledged so far, OutboxID, the highest outbox id among them, and Since, when
	// the session began (the relay's clock): a consumer that received fewer of the session's
	// changes up to OutboxID than Count says lost some (JetStream is not trusted to keep what
	// it acknowledged; see docs/events.md).
	Session string    `json:"session,omitempty"`
	Count   int64     `json:"count,omitempty"`
	Since   time.Time `json:"since,omitzero"`
}

// ErrBadEvent is a message that is not an Event this package writes.
var ErrBadEvent = errors.New("events: malformed event")

// Subject is the subject a home region's relay publishes shard's messages on.
func Subject(homeRegion, shard string) string { return subjectPrefix + homeRegion + "." + shard }

const subjectPrefix = "meridian.ev."

// MsgID is a change's JetStream deduplication id: the shard and its outbox row id.
func MsgID(shard string, outboxID int64) string { return shard + ":" + strconv.FormatInt(outboxID, 10) }

// Marshal encodes e.
func (e Event) Marshal() []byte {
	b, err := json.Marshal(e)
	if err != nil {
		panic(err) // plain fields only: cannot fail
	}
	return b
}

// Unmarshal decodes and checks one message.
func Unmarshal(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if !ids.ValidShard(e.Shard) {
		return e, fmt.Errorf("%w: shard %q", ErrBadEvent, e.Shard)
	}
	switch e.Kind {
	case KindChange:
		if !ids.ValidTenant(e.Tenant) || e.Seq < 1 || !ids.ValidCollection(e.Collection) || !ids.ValidRecord(e.ID) || e.Version < 1 {
			return e, fmt.Errorf("%w: change %+v", ErrBadEvent, e)
		}
		switch e.Op {
		case "create", "update", "delete":
		default:
			return e, fmt.Errorf("%w: op %q", ErrBadEvent, e.Op)
		}
	case KindReset:
		if !ids.ValidTenant(e.Tenant) {
			return e, fmt.Errorf("%w: reset of tenant %q", ErrBadEvent, e.Tenant)
		}
	case KindHeartbeat:
	default:
		return e, fmt.Errorf("%w: kind %q", ErrBadEvent, e.Kind)
	}
	return e, nil
}
