package daemon

import (
	"context"
	"errors"
	"log/slog"
	"testing"
)

func TestMainExitStatus(t *testing.T) {
	ran := 0
	ok := func(ctx context.Context, log *slog.Logger) error {
		ran++
		if ctx.Err() != nil || log == nil {
			t.Errorf("run got an ended context or no logger")
		}
		return nil
	}
	if code := Main("test", "", ok); code != 0 || ran != 1 {
		t.Fatalf("successful run: exit %d, ran %d times", code, ran)
	}
	failing := func(context.Context, *slog.Logger) error { ran++; return errors.New("boom") }
	if code := Main("test", "127.0.0.1:0", failing); code != 1 || ran != 2 {
		t.Fatalf("failing run: exit %d, ran %d times, want 1 and 2", code, ran)
	}
	// A debug address that can't be bound stops before run.
	if code := Main("test", "256.0.0.1:bad", ok); code != 1 || ran != 2 {
		t.Fatalf("bad -debug-addr: exit %d, ran %d times, want 1 and run not called", code, ran)
	}
}
