package workload

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// Clock is the run's one monotonic clock: times are offsets from its start (time.Since reads
// the monotonic reading, so a wall-clock step never moves them).
type Clock struct{ start time.Time }

// NewClock starts a clock now.
func NewClock() Clock { return Clock{start: time.Now()} }

// Now is the time since the clock started.
func (c Clock) Now() time.Duration { return time.Since(c.start) }

// Recorder hands out operation ids and keeps every completed operation, in completion order;
// with an encoder it also streams each one to the history file as it completes, so a run that
// dies keeps what it did. It is safe for concurrent use.
type Recorder struct {
	next atomic.Int64

	// mu guards the fields below.
	mu  sync.Mutex
	ops []history.Op
	enc *history.Encoder
	err error
}

// NewRecorder returns a recorder that streams to w (with header h) when w is not nil.
func NewRecorder(w io.Writer, h history.Header) (*Recorder, error) {
	r := &Recorder{}
	if w != nil {
		enc, err := history.NewEncoder(w, h)
		if err != nil {
			return nil, err
		}
		r.enc = enc
	}
	return r, nil
}

// ID returns a fresh operation id (from 1).
func (r *Recorder) ID() int64 { return r.next.Add(1) }

// Add records a completed operation.
func (r *Recorder) Add(o history.Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, o)
	if r.enc != nil && r.err == nil {
		r.err = r.enc.Encode(o)
	}
}

// Ops returns a copy of the operations recorded so far.
func (r *Recorder) Ops() []history.Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]history.Op(nil), r.ops...)
}

// Err is the first error writing the history file, if any.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}
