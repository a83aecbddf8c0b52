// Package history is the fault suite's record of what its clients did (issue 15): one Op per
// request a client made through a router — its kind, tenant, key, what it sent, what it got
// back, when it was invoked and when it completed (both read from one monotonic clock, as
// offsets from the run's start) and its Outcome — plus the JSON-lines file format that stores a
// run for replay.
//
// It owns the model and its encoding only. It must never talk to a cluster, read a clock or
// judge a history: the workload fills it in, internal/faults/check judges it. Tests should build
// histories by hand (or with a sequential simulation) with constructed times, never wall time.
package history

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// The errors of Validate and Decode. Every error they return wraps exactly one of them.
var (
	// ErrInvalid is an operation or history that breaks the model's rules (a missing field,
	// a completion before its invocation, a duplicated id, a token of no write).
	ErrInvalid = errors.New("invalid history")
	// ErrFormat is a history file that is not this package's JSON-lines format.
	ErrFormat = errors.New("malformed history file")
)

// Kind says which request an operation was.
type Kind string

// The kinds of operation.
const (
	// Write is a PUT of Coll/Rec with Value: unconditional when IfMatch is 0, else a
	// compare-and-set that succeeds only if the record's version is IfMatch. An ok write
	// carries the version it created (its ETag).
	Write Kind = "write"
	// StrongRead is a GET with `Prefer: consistency=strong` (served by the primary).
	StrongRead Kind = "strong-read"
	// PlainRead is a GET without a token or preference (a standby within max_staleness).
	PlainRead Kind = "read"
	// TokenRead is a GET carrying the Consistency-Token that write TokenOf answered.
	TokenRead Kind = "token-read"
	// CachedRead is a GET the workload knows may be answered by a cache (X-Read-Source:
	// cache); it is checked against the invalidation due times of writes (Op.Due).
	CachedRead Kind = "cached-read"
	// Create is a POST to Coll with an Idempotency-Key adding the set element Value; a client
	// retry of an unknown outcome is another Create with the same IdemKey and Value. An ok
	// create carries the record id the server made (Rec) and its version.
	Create Kind = "create"
	// SetRead is a read of every record of Coll (the final read of a set, after recovery):
	// Elements lists what it returned.
	SetRead Kind = "set-read"
	// Changes is one `/v1/changes` reader's whole life (reconnects included, resumed with
	// Last-Event-ID): it asked for the events after sequence From and received Events, in
	// the order received. Due is when the reader should have caught up (writes acknowledged
	// before it must be in Events); zero means Complete.
	Changes Kind = "changes"
)

// IsRead reports whether k reads one record.
func (k Kind) IsRead() bool {
	return k == StrongRead || k == PlainRead || k == TokenRead || k == CachedRead
}

// Outcome is what the client knows about an operation's effect.
type Outcome string

// The outcomes.
const (
	// OK is an operation that happened, with the answer recorded.
	OK Outcome = "ok"
	// Fail is an operation that definitely did not happen (Classify says which answers
	// guarantee that).
	Fail Outcome = "fail"
	// Unknown is an operation that may or may not have happened: a timeout, a cut
	// connection, a 5xx the contract does not say was not applied.
	Unknown Outcome = "unknown"
)

// Element is one record a SetRead returned: its id and its set element (the data value the
// create carried).
type Element struct {
	Rec   string `json:"rec"`
	Value string `json:"v"`
}

// Event is one `/v1/changes` event a reader received.
type Event struct {
	Seq     int64  `json:"seq"`
	Coll    string `json:"col"`
	Rec     string `json:"rec"`
	Op      string `json:"op,omitempty"`
	Version int64  `json:"ver"`
}

// Op is one operation of a history. Times are offsets from the run's start on one monotonic
// clock; an Unknown operation's Complete is when the client gave up.
type Op struct {
	// ID is unique within a history and at least 1.
	ID int64 `json:"id"`
	// Process is the client (a sequential thread of the workload) that made the request.
	Process int `json:"p"`
	// Region is the region of the router the request went through ("" if not recorded).
	Region string `json:"r,omitempty"`
	Tenant string `json:"t"`
	Kind   Kind   `json:"k"`
	// Coll and Rec name the record (Key is "Coll/Rec"). A Create names the collection only
	// until it succeeds; a SetRead names the collection; Changes names neither.
	Coll string `json:"col,omitempty"`
	Rec  string `json:"rec,omitempty"`
	// Value is the record's data value written or read, or a Create's set element.
	Value string `json:"v,omitempty"`
	// Version is the version written (an ok Write or Create) or read (0: no such record).
	Version int64 `json:"ver,omitempty"`
	// IfMatch is a Write's expected version (0: unconditional).
	IfMatch int64 `json:"if,omitempty"`
	// IdemKey is a Create's Idempotency-Key.
	IdemKey string `json:"ik,omitempty"`
	// TokenOf is the ID of the write whose Consistency-Token a TokenRead carried.
	TokenOf int64 `json:"tok,omitempty"`
	// From is the sequence a Changes reader resumed after (0: from the start).
	From int64 `json:"from,omitempty"`

	Invoke   time.Duration `json:"i"`
	Complete time.Duration `json:"c"`
	// Due is, for a write, when its cache invalidation was due (zero: not recorded); for
	// Changes, when the reader should have caught up (zero: Complete).
	Due time.Duration `json:"due,omitempty"`

	Outcome Outcome `json:"o"`
	// Status is the HTTP status (0: no answer) and Problem the problem+json type slug, if any.
	Status  int    `json:"s,omitempty"`
	Problem string `json:"pt,omitempty"`
	// Error is the client's error text for an operation without an answer.
	Error string `json:"err,omitempty"`

	Elements []Element `json:"els,omitempty"`
	Events   []Event   `json:"ev,omitempty"`
}

// Key is the register the operation touches, "Coll/Rec".
func (o Op) Key() string { return o.Coll + "/" + o.Rec }

// String describes the operation in one line for a verdict, e.g.
// "#12 p3 acme write users/a=x if v2 → ok v3 [1.2s,1.3s]".
func (o Op) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d p%d %s %s", o.ID, o.Process, o.Tenant, o.Kind)
	switch o.Kind {
	case Write:
		fmt.Fprintf(&b, " %s=%q", o.Key(), o.Value)
		if o.IfMatch > 0 {
			fmt.Fprintf(&b, " if v%d", o.IfMatch)
		}
	case Create:
		fmt.Fprintf(&b, " %s element %q key %q", o.Coll, o.Value, o.IdemKey)
	case SetRead:
		fmt.Fprintf(&b, " %s", o.Coll)
	case Changes:
		fmt.Fprintf(&b, " after %d", o.From)
	default:
		fmt.Fprintf(&b, " %s", o.Key())
		if o.Kind == TokenRead {
			fmt.Fprintf(&b, " token of #%d", o.TokenOf)
		}
	}
	fmt.Fprintf(&b, " → %s", o.Outcome)
	if o.Status != 0 {
		fmt.Fprintf(&b, " %d", o.Status)
	}
	if o.Outcome == OK {
		switch {
		case o.Kind == Create:
			fmt.Fprintf(&b, " %s v%d", o.Rec, o.Version)
		case o.Kind.IsRead() && o.Version == 0:
			b.WriteString(" not found")
		case o.Kind.IsRead():
			fmt.Fprintf(&b, " %q v%d", o.Value, o.Version)
		case o.Kind == Write:
			fmt.Fprintf(&b, " v%d", o.Version)
		case o.Kind == SetRead:
			fmt.Fprintf(&b, " %d records", len(o.Elements))
		case o.Kind == Changes:
			fmt.Fprintf(&b, " %d events", len(o.Events))
		}
	}
	fmt.Fprintf(&b, " [%v,%v]", o.Invoke, o.Complete)
	return b.String()
}

// Validate reports the first rule of the model o breaks, wrapping ErrInvalid.
func (o Op) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: op #%d: %s", ErrInvalid, o.ID, fmt.Sprintf(format, a...))
	}
	switch {
	case o.ID < 1:
		return bad("id must be at least 1")
	case o.Process < 0:
		return bad("process must not be negative")
	case o.Tenant == "":
		return bad("no tenant")
	case o.Invoke < 0 || o.Complete < o.Invoke:
		return bad("completion %v before invocation %v", o.Complete, o.Invoke)
	case o.Due < 0:
		return bad("negative due time")
	case o.Version < 0 || o.IfMatch < 0 || o.From < 0:
		return bad("negative version")
	}
	switch o.Outcome {
	case OK, Fail, Unknown:
	default:
		return bad("unknown outcome %q", o.Outcome)
	}
	needRecord := func() error {
		if o.Coll == "" || o.Rec == "" {
			return bad("%s names no record", o.Kind)
		}
		return nil
	}
	switch o.Kind {
	case Write:
		if err := needRecord(); err != nil {
			return err
		}
		if o.Outcome == OK && o.Version < 1 {
			return bad("an ok write carries the version it made")
		}
		if o.Outcome == OK && o.IfMatch > 0 && o.Version != o.IfMatch+1 {
			return bad("an ok compare-and-set from v%d made v%d", o.IfMatch, o.Version)
		}
	case StrongRead, PlainRead, CachedRead, TokenRead:
		if err := needRecord(); err != nil {
			return err
		}
		if o.Kind == TokenRead && o.TokenOf < 1 {
			return bad("a token read names the write whose token it carries")
		}
	case Create:
		switch {
		case o.Coll == "":
			return bad("a create names its collection")
		case o.IdemKey == "":
			return bad("a create carries an Idempotency-Key")
		case o.Value == "":
			return bad("a create carries its set element")
		case o.Outcome == OK && (o.Rec == "" || o.Version < 1):
			return bad("an ok create carries its record id and version")
		}
	case SetRead:
		if o.Coll == "" {
			return bad("a set read names its collection")
		}
		for _, e := range o.Elements {
			if e.Rec == "" {
				return bad("a set read's element has no record id")
			}
		}
	case Changes:
		for _, e := range o.Events {
			if e.Seq < 1 || e.Coll == "" || e.Rec == "" || e.Version < 0 {
				return bad("event %+v lacks a sequence, collection or record", e)
			}
		}
	default:
		return bad("unknown kind %q", o.Kind)
	}
	return nil
}

// Header is the first line of a history file.
type Header struct {
	// Format is always FormatV1.
	Format string `json:"format"`
	// Seed is the workload's and nemesis's seed, so a failing run can be repeated.
	Seed int64 `json:"seed,omitempty"`
	// Faults lists the faults injected, in the nemesis's own words.
	Faults []string `json:"faults,omitempty"`
}

// FormatV1 names the format of this package's history files.
const FormatV1 = "meridian-history/1"

// History is a run: its header and its operations in the order they were recorded.
type History struct {
	Header Header
	Ops    []Op
}

// Validate checks every operation and the rules between them: ids unique, and every token
// read naming a write of the same tenant in the history.
func (h History) Validate() error {
	byID := make(map[int64]Op, len(h.Ops))
	for _, o := range h.Ops {
		if err := o.Validate(); err != nil {
			return err
		}
		if _, dup := byID[o.ID]; dup {
			return fmt.Errorf("%w: op id %d used twice", ErrInvalid, o.ID)
		}
		byID[o.ID] = o
	}
	for _, o := range h.Ops {
		if o.Kind != TokenRead {
			continue
		}
		w, ok := byID[o.TokenOf]
		if !ok || (w.Kind != Write && w.Kind != Create) || w.Tenant != o.Tenant {
			return fmt.Errorf("%w: op #%d carries the token of #%d, which is no write of tenant %s", ErrInvalid, o.ID, o.TokenOf, o.Tenant)
		}
	}
	return nil
}

// ByID returns the operations indexed by id.
func (h History) ByID() map[int64]Op {
	m := make(map[int64]Op, len(h.Ops))
	for _, o := range h.Ops {
		m[o.ID] = o
	}
	return m
}
