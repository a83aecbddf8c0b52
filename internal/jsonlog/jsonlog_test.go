package jsonlog

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"
)

// hostile are strings a request can put in a logged path or id.
var hostile = []string{
	"", "plain", `quo"te`, `back\slash`, "new\nline", "cr\rtab\t", "nul\x00bell\x07esc\x1b del\x7f",
	"invalid \xff\xfe utf-8", "cut \xe2\x82", "sep \u2028 \u2029", "<html>&amp;", "ünïcödé 日本 🙂",
	"/v1/collections/c/records/%22%00", strings.Repeat("x\"", 3000),
}

// slogLine is what slog's JSON handler writes for the same record.
func slogLine(t testing.TB, with []slog.Attr, tm time.Time, level slog.Level, msg string, attrs ...slog.Attr) string {
	t.Helper()
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}).WithAttrs(with)
	r := slog.NewRecord(tm, level, msg, 0)
	r.AddAttrs(attrs...)
	if err := h.Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// line writes the same through Handler.Begin.
func line(t testing.TB, with []slog.Attr, tm time.Time, level slog.Level, msg string, attrs ...slog.Attr) string {
	t.Helper()
	var buf bytes.Buffer
	h := NewHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}).WithAttrs(with).(*Handler)
	l := h.Begin(tm, level, msg)
	if l == nil {
		t.Fatalf("Begin returned nil for %v", with)
	}
	for _, a := range attrs {
		switch a.Value.Kind() {
		case slog.KindString:
			l.Str(a.Key, a.Value.String())
		case slog.KindInt64:
			l.Int(a.Key, a.Value.Int64())
		case slog.KindFloat64:
			l.Float(a.Key, a.Value.Float64())
		default:
			t.Fatalf("kind %v", a.Value.Kind())
		}
	}
	if err := l.End(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestLineMatchesSlog(t *testing.T) {
	tm := time.Date(2026, 11, 30, 12, 1, 2, 345678900, time.UTC)
	zones := []time.Time{tm, tm.In(time.FixedZone("x", -5*3600-30*60)), tm.Truncate(time.Second),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(0, 1, 1, 0, 0, 0, 1, time.UTC)}
	with := []slog.Attr{slog.String("component", "router"), slog.String("region", "us-east"),
		slog.Int("n", -3), slog.Uint64("u", math.MaxUint64), slog.Bool("b", true),
		slog.Duration("d", 1500*time.Millisecond), slog.Float64("f", 0.1)}
	floats := []float64{0, 1.234, 0.001, 123456.789, 1e-7, 1e21, 1e20, -2.5e-9, math.MaxFloat64,
		math.SmallestNonzeroFloat64, math.NaN(), math.Inf(1), math.Inf(-1), float64(1234567) / 1000}
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError, slog.LevelInfo + 2} {
		for _, z := range zones {
			for _, s := range hostile {
				attrs := []slog.Attr{slog.String("request_id", s), slog.String(s, "key"), slog.String("path", s),
					slog.Int("status", 200), slog.Float64("duration_ms", 1.5)}
				if got, want := line(t, with, z, level, s, attrs...), slogLine(t, with, z, level, s, attrs...); got != want {
					t.Fatalf("line\n got %q\nwant %q", got, want)
				}
				if !json.Valid([]byte(slogLine(t, with, z, level, s, attrs...))) {
					t.Fatalf("slog wrote invalid JSON for %q", s)
				}
			}
		}
	}
	for _, f := range floats {
		a := slog.Float64("duration_ms", f)
		if got, want := line(t, nil, tm, slog.LevelInfo, "request", a), slogLine(t, nil, tm, slog.LevelInfo, "request", a); got != want {
			t.Errorf("float %v\n got %q\nwant %q", f, got, want)
		}
	}
}

// FuzzLineMatchesSlog: go test -fuzz FuzzLineMatchesSlog ./internal/jsonlog/
func FuzzLineMatchesSlog(f *testing.F) {
	for _, s := range hostile {
		f.Add(s, int64(200), 1.25)
	}
	tm := time.Date(2026, 11, 30, 12, 1, 2, 345678900, time.UTC)
	f.Fuzz(func(t *testing.T, s string, n int64, fl float64) {
		attrs := []slog.Attr{slog.String("path", s), slog.String(s, s), slog.Int64("status", n), slog.Float64("duration_ms", fl)}
		with := []slog.Attr{slog.String("region", s)}
		if got, want := line(t, with, tm, slog.LevelWarn, s, attrs...), slogLine(t, with, tm, slog.LevelWarn, s, attrs...); got != want {
			t.Fatalf("line\n got %q\nwant %q", got, want)
		}
	})
}

func TestBeginFallsBack(t *testing.T) {
	tm := time.Now()
	rep := func([]string, slog.Attr) slog.Attr { return slog.Attr{} }
	cases := map[string]slog.Handler{
		"ReplaceAttr": NewHandler(io.Discard, &slog.HandlerOptions{ReplaceAttr: rep}),
		"AddSource":   NewHandler(io.Discard, &slog.HandlerOptions{AddSource: true}),
		"group":       NewHandler(io.Discard, nil).WithGroup("g"),
		"any attr":    NewHandler(io.Discard, nil).WithAttrs([]slog.Attr{slog.Any("e", io.EOF)}),
		"time attr":   NewHandler(io.Discard, nil).WithAttrs([]slog.Attr{slog.Time("t", tm)}),
		"group attr":  NewHandler(io.Discard, nil).WithAttrs([]slog.Attr{slog.Group("g", "a", 1)}),
		"empty key":   NewHandler(io.Discard, nil).WithAttrs([]slog.Attr{{}}),
		"NaN attr":    NewHandler(io.Discard, nil).WithAttrs([]slog.Attr{slog.Float64("f", math.NaN())}),
	}
	for name, h := range cases {
		if l := h.(*Handler).Begin(tm, slog.LevelInfo, "m"); l != nil {
			t.Errorf("%s: Begin wrote a line slog would write differently", name)
		}
	}
	if NewHandler(io.Discard, nil).Begin(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), slog.LevelInfo, "m") != nil {
		t.Error("year 10000: Begin wrote a line")
	}
	// A group opened on the slog.Logger is still the handler's business.
	var buf bytes.Buffer
	slog.New(NewHandler(&buf, nil)).WithGroup("g").With("a", 1).Info("m", "b", 2)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["g"].(map[string]any)["b"] != float64(2) {
		t.Errorf("group through slog: %s (%v)", buf.String(), err)
	}
}

func TestHandlerLevelAndHasString(t *testing.T) {
	h := NewHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn})
	if h.Enabled(context.Background(), slog.LevelInfo) || !h.Enabled(context.Background(), slog.LevelWarn) {
		t.Error("Enabled does not follow the configured level")
	}
	if !NewHandler(io.Discard, nil).Enabled(context.Background(), slog.LevelInfo) ||
		NewHandler(io.Discard, nil).Enabled(context.Background(), slog.LevelDebug) {
		t.Error("the default level is not Info")
	}
	h2 := slog.New(h).With("component", "router").With("region", "us-east").Handler().(*Handler)
	if !h2.HasString("region", "us-east") || h2.HasString("region", "eu-west") || h.HasString("region", "us-east") {
		t.Error("HasString")
	}
}

// TestSlogAndLinesShareTheWriter: a line and a slog record are each one write, never interleaved.
func TestSlogAndLinesShareTheWriter(t *testing.T) {
	var buf bytes.Buffer
	h := NewHandler(&buf, nil)
	lg := slog.New(h)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			lg.Info("slog", "k", strings.Repeat("s", 100))
		}
	}()
	for range 200 {
		_ = h.Begin(time.Now(), slog.LevelInfo, "line").Str("k", strings.Repeat("l", 100)).End()
	}
	<-done
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("interleaved: %q", l)
		}
	}
}

// BenchmarkRequestLine: go test -run '^$' -bench RequestLine -benchmem ./internal/jsonlog/
func BenchmarkRequestLine(b *testing.B) {
	b.Run("slog", func(b *testing.B) {
		lg := slog.New(slog.NewJSONHandler(io.Discard, nil)).With("component", "router").With("region", "us-east")
		b.ReportAllocs()
		for b.Loop() {
			lg.LogAttrs(context.Background(), slog.LevelInfo, "request",
				slog.String("request_id", "bench-1"), slog.String("tenant", "acme"),
				slog.String("region", "us-east"), slog.String("method", "GET"),
				slog.String("path", "/v1/collections/c/records/x"), slog.Int("status", 200), slog.String("class", "read"),
				slog.Float64("duration_ms", 1.234))
		}
	})
	b.Run("line", func(b *testing.B) {
		h := slog.New(NewHandler(io.Discard, nil)).With("component", "router").With("region", "us-east").Handler().(*Handler)
		b.ReportAllocs()
		for b.Loop() {
			if h.Enabled(context.Background(), slog.LevelInfo) {
				_ = h.Begin(time.Now(), slog.LevelInfo, "request").Str("request_id", "bench-1").Str("tenant", "acme").
					Str("method", "GET").Str("path", "/v1/collections/c/records/x").Int("status", 200).
					Str("class", "read").Float("duration_ms", 1.234).End()
			}
		}
	})
}

// TestAppendTimeIsRFC3339Nano: Begin's time, kept to the second between calls, is what
// AppendFormat(RFC3339Nano) writes, for fractions with and without trailing zeros, in several
// zones (one with a DST change, crossed second by second), in an order that reuses and
// replaces the kept second.
func TestAppendTimeIsRFC3339Nano(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	locs := []*time.Location{time.UTC, time.FixedZone("x", 5*3600+30*60), time.FixedZone("y", -3600), ny, time.Local}
	var c secondCache
	check := func(tm time.Time) {
		t.Helper()
		got, want := c.appendTime(nil, tm), tm.AppendFormat(nil, time.RFC3339Nano)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: %s, want %s", tm, got, want)
		}
	}
	base := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC) // 01:59:58 in New York, before the change
	fracs := []int{0, 1, 10, 100_000_000, 120_000_000, 999_999_999, 500, 123_456_789, 100}
	for s := range 5 {
		for _, ns := range fracs {
			for _, loc := range locs {
				check(base.Add(time.Duration(s)*time.Second + time.Duration(ns)).In(loc))
				check(base.Add(time.Duration(s)*time.Second + time.Duration(ns)).In(loc)) // kept
			}
		}
	}
	for i := range 10000 { // random times, each in a zone, often the same second twice
		tm := time.Unix(1_700_000_000+int64(i/3), int64(i*7919%1_000_000_000)).In(locs[i%len(locs)])
		check(tm)
	}
}
