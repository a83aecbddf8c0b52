package logbuf

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// sink records each Write it receives.
type sink struct {
	mu     sync.Mutex
	writes []string
	fail   error
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return 0, s.fail
	}
	s.writes = append(s.writes, string(p))
	return len(p), nil
}

func (s *sink) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.writes...)
}

func TestBatchesRecordsAndKeepsThemWhole(t *testing.T) {
	s := &sink{}
	w := New(s, 100, time.Hour) // no timed flush during the test
	for i := range 20 {
		fmt.Fprintf(w, "record %02d ........\n", i) // 20 bytes each: 5 per 100-byte buffer
	}
	got := s.snapshot()
	if len(got) != 3 {
		t.Fatalf("%d writes for 20 records in a 100-byte buffer, want 3 so far: %q", len(got), got)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got = s.snapshot()
	all := strings.Join(got, "")
	for i := range 20 {
		if !strings.Contains(all, fmt.Sprintf("record %02d ........\n", i)) {
			t.Fatalf("record %d lost or split: %q", i, got)
		}
	}
	for _, g := range got {
		if !strings.HasSuffix(g, "\n") {
			t.Fatalf("a flush split a record: %q", g)
		}
	}
}

func TestFlushesOnInterval(t *testing.T) {
	s := &sink{}
	w := New(s, 0, 10*time.Millisecond)
	defer w.Close()
	fmt.Fprintln(w, "hello")
	deadline := time.Now().Add(5 * time.Second)
	for len(s.snapshot()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("buffered record not written within 5s with a 10ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := s.snapshot(); got[0] != "hello\n" {
		t.Fatalf("%q", got)
	}
}

func TestLargeRecordAndErrors(t *testing.T) {
	s := &sink{}
	w := New(s, 16, time.Hour)
	big := bytes.Repeat([]byte("x"), 100)
	if n, err := w.Write(big); n != 100 || err != nil {
		t.Fatalf("%d %v", n, err)
	}
	if got := s.snapshot(); len(got) != 1 || len(got[0]) != 100 {
		t.Fatalf("a record larger than the buffer should go straight through: %q", got)
	}
	s.fail = errors.New("disk full")
	fmt.Fprint(w, "short")
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Close: %v, want the write error", err)
	}
	if _, err := w.Write([]byte("more")); err == nil {
		t.Fatal("a write after a failed flush should report the error")
	}
}
