// Package logbuf batches a process's log output: log records go into a buffer that is written
// out when it fills, at least every Interval, and on Close, instead of one write system call per
// record. A router or API node logs a line per request, and at a few thousand requests a second
// those writes cost more CPU than formatting the lines.
//
// The price is that a process killed with SIGKILL (or power loss) loses at most Interval of log
// lines; a Go panic is unaffected (the runtime writes it straight to the file descriptor), and
// main must call Close before exiting, which flushes.
package logbuf

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// Defaults for New's zero arguments.
const (
	DefaultSize     = 64 << 10
	DefaultInterval = 100 * time.Millisecond
)

// Writer is a buffered, periodically flushed io.Writer, safe for concurrent use. Each Write
// is kept whole: a record is never split between two flushes unless it is larger than the
// buffer, in which case it is written straight through.
type Writer struct {
	mu     sync.Mutex
	bw     *bufio.Writer
	err    error // the first write error; later writes report it
	stop   chan struct{}
	done   chan struct{}
	closed bool
}

// New wraps w. size ≤ 0 means DefaultSize; interval ≤ 0 means DefaultInterval.
func New(w io.Writer, size int, interval time.Duration) *Writer {
	if size <= 0 {
		size = DefaultSize
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	b := &Writer{bw: bufio.NewWriterSize(w, size), stop: make(chan struct{}), done: make(chan struct{})}
	go b.loop(interval)
	return b
}

func (b *Writer) loop(interval time.Duration) {
	defer close(b.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			_ = b.Flush()
		case <-b.stop:
			return
		}
	}
}

// Write buffers p, flushing first if p does not fit in what is left of the buffer.
func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if len(p) > b.bw.Available() && b.bw.Buffered() > 0 {
		if b.err = b.bw.Flush(); b.err != nil {
			return 0, b.err
		}
	}
	n, err := b.bw.Write(p) // larger than the buffer: bufio writes it through
	if err != nil {
		b.err = err
	}
	return n, err
}

// Flush writes out what is buffered.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return b.err
	}
	b.err = b.bw.Flush()
	return b.err
}

// Close stops the flusher and flushes. Writes after Close still work but are flushed only by
// Flush or when the buffer fills.
func (b *Writer) Close() error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.stop)
	}
	b.mu.Unlock()
	<-b.done
	return b.Flush()
}
