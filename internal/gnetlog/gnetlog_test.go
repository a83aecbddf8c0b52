package gnetlog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestLevelsAndPrefix: warnings and errors (Fatalf as an error) reach the logger with the
// prefix; debug and info lines do not.
func TestLevelsAndPrefix(t *testing.T) {
	var buf bytes.Buffer
	g := Logger{L: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), Prefix: "loop: "}
	g.Debugf("debug %d", 1)
	g.Infof("info %d", 2)
	g.Warnf("warn %d", 3)
	g.Errorf("error %d", 4)
	g.Fatalf("fatal %d", 5)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{`level=WARN msg="loop: warn 3"`, `level=ERROR msg="loop: error 4"`, `level=ERROR msg="loop: fatal 5"`}
	if len(lines) != len(want) {
		t.Fatalf("logged %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d %q, want it to hold %q", i, lines[i], w)
		}
	}
}
