package sim

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress prints one line per finished step with its elapsed time, so a user watching
// `make up` sees what the launcher is doing and where it is slow.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	done  int
	total int
}

func newProgress(w io.Writer, total int) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, start: time.Now(), total: total}
}

// step runs f and reports it as one numbered line.
func (p *progress) step(what string, f func() error) error {
	t0 := time.Now()
	err := f()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	status := "ok"
	if err != nil {
		status = "FAILED: " + err.Error()
	}
	fmt.Fprintf(p.w, "[%2d/%d %5.1fs] %-52s %s (%s)\n", p.done, p.total,
		time.Since(p.start).Seconds(), what, status, time.Since(t0).Round(time.Millisecond))
	return err
}

// logf prints a free-form line.
func (p *progress) logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}
