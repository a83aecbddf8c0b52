// Package jsonlog is the processes' slog handler: slog's JSON handler, plus a way for a hot path
// to write one line of its own — the same JSON, to the same destination, at the same level —
// without building a slog.Record (the router's per-request line, issue 16).
//
// Handler does everything through slog.JSONHandler; Line only appends what it is given. A line
// is written by Line only when the handler can say exactly what slog would have written: no
// ReplaceAttr, no AddSource, no open group, and With attributes of kinds Line formats the way
// slog's JSON handler does (strings, integers, floats, bools, durations). Otherwise Begin
// returns nil and the caller logs through slog as before.
//
// It must never reorder, drop or re-escape what slog writes: a test compares Line's output
// with slog's for the same attributes, hostile strings included.
package jsonlog

import (
	"context"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Handler is slog's JSON handler that also lets Begin write a line of the same shape.
type Handler struct {
	json   slog.Handler
	out    *lockedWriter
	level  slog.Leveler
	prefix []byte       // the With attributes, formatted: `,"k":v` each
	attrs  []slog.Attr  // the same, for HasString
	lines  bool         // Begin may write lines (see the package doc)
	second *secondCache // Begin's time to the second, kept (shared with the With handlers)
}

// secondCache holds the last second Begin formatted: its lines share it up to the fraction.
type secondCache struct {
	p atomic.Pointer[formattedSecond]
}

type formattedSecond struct {
	sec    int64
	loc    *time.Location
	prefix []byte // 2006-01-02T15:04:05
	zone   []byte // Z07:00
}

// appendTime is t.AppendFormat(b, time.RFC3339Nano): the date, clock and zone are formatted
// once per second (and location: within one second a zone's offset cannot change, since a
// change of offset falls on a whole second), the fraction on every call.
func (c *secondCache) appendTime(b []byte, t time.Time) []byte {
	sec, loc := t.Unix(), t.Location()
	f := c.p.Load()
	if f == nil || f.sec != sec || f.loc != loc {
		f = &formattedSecond{sec: sec, loc: loc, prefix: t.AppendFormat(nil, "2006-01-02T15:04:05"),
			zone: t.AppendFormat(nil, "Z07:00")}
		c.p.Store(f)
	}
	b = append(b, f.prefix...)
	if ns := t.Nanosecond(); ns != 0 {
		var d [10]byte
		d[0] = '.'
		for i := 9; i >= 1; i-- {
			d[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for d[n-1] == '0' {
			n--
		}
		b = append(b, d[:n]...)
	}
	return append(b, f.zone...)
}

var _ slog.Handler = (*Handler)(nil)

// lockedWriter serialises the JSON handler's writes and Line's: each is one whole record.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// NewHandler returns a handler writing JSON lines to w, as slog.NewJSONHandler(w, opts) would.
// A nil opts means the default options (level Info).
func NewHandler(w io.Writer, opts *slog.HandlerOptions) *Handler {
	var o slog.HandlerOptions
	if opts != nil {
		o = *opts
	}
	lw := &lockedWriter{w: w}
	h := &Handler{json: slog.NewJSONHandler(lw, &o), out: lw, level: o.Level,
		lines: o.ReplaceAttr == nil && !o.AddSource, second: &secondCache{}}
	if h.level == nil {
		h.level = slog.LevelInfo
	}
	return h
}

// Enabled reports whether the handler writes records at level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.json.Enabled(ctx, level)
}

// Handle writes r through slog's JSON handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error { return h.json.Handle(ctx, r) }

// WithAttrs returns a handler whose records and lines carry attrs after the existing ones.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := *h
	h2.json = h.json.WithAttrs(attrs)
	h2.attrs = append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)
	h2.prefix = h.prefix[:len(h.prefix):len(h.prefix)]
	for _, a := range attrs {
		var ok bool
		h2.prefix, ok = appendAttr(h2.prefix, a)
		h2.lines = h2.lines && ok
	}
	return &h2
}

// WithGroup returns a handler that nests later attributes in group; Begin on it returns nil.
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.json = h.json.WithGroup(name)
	h2.lines = false
	return &h2
}

// HasString reports whether the handler's With attributes include key with the string value
// v, so a line can leave out an attribute the handler already writes.
func (h *Handler) HasString(key, v string) bool {
	for _, a := range h.attrs {
		if a.Key == key && a.Value.Kind() == slog.KindString && a.Value.String() == v {
			return true
		}
	}
	return false
}

// Lines reports whether Begin writes lines (see the package doc); when false it returns nil.
func (h *Handler) Lines() bool { return h.lines }

// Line is one record being appended. Its methods add attributes in order; End writes it.
// A Line must not be used after End.
type Line struct {
	h   *Handler
	buf []byte
}

var linePool = sync.Pool{New: func() any { return &Line{buf: make([]byte, 0, 512)} }}

// Begin starts a line with the time, level and message keys slog's JSON handler writes, and
// the handler's With attributes. It returns nil when the handler cannot write lines itself or
// t's year is outside 0–9999 (slog writes an error there). The caller checks Enabled first,
// as slog.Logger does.
func (h *Handler) Begin(t time.Time, level slog.Level, msg string) *Line {
	if !h.lines {
		return nil
	}
	if y := t.Year(); y < 0 || y >= 10000 {
		return nil
	}
	l := linePool.Get().(*Line)
	l.h = h
	b := append(l.buf[:0], `{"time":"`...)
	b = h.second.appendTime(b, t)
	b = append(b, `","level":`...)
	b = appendString(b, level.String())
	b = append(b, `,"msg":`...)
	b = appendString(b, msg)
	l.buf = append(b, h.prefix...)
	return l
}

// Str appends a string attribute.
func (l *Line) Str(key, v string) *Line {
	l.buf = appendKey(l.buf, key)
	l.buf = appendString(l.buf, v)
	return l
}

// Int appends an integer attribute.
func (l *Line) Int(key string, v int64) *Line {
	l.buf = appendKey(l.buf, key)
	l.buf = strconv.AppendInt(l.buf, v, 10)
	return l
}

// Float appends a float attribute the way encoding/json (and so slog) formats it. NaN and the
// infinities, which JSON cannot carry, are written as slog writes the error it gets for them.
func (l *Line) Float(key string, v float64) *Line {
	l.buf = appendKey(l.buf, key)
	l.buf = appendFloat(l.buf, v)
	return l
}

// End writes the line to the handler's destination as one write and releases it.
func (l *Line) End() error {
	l.buf = append(l.buf, '}', '\n')
	_, err := l.h.out.Write(l.buf)
	l.h = nil
	if cap(l.buf) <= 16<<10 { // keep the pool from holding a rare huge line
		linePool.Put(l)
	}
	return err
}

// appendAttr appends `,"key":value` for the kinds formatted here; ok is false for any other
// (the line would differ from slog's) and for the empty attribute slog leaves out.
func appendAttr(b []byte, a slog.Attr) ([]byte, bool) {
	v := a.Value.Resolve()
	if a.Key == "" {
		return b, false
	}
	switch v.Kind() {
	case slog.KindString:
		b = appendKey(b, a.Key)
		return appendString(b, v.String()), true
	case slog.KindInt64:
		b = appendKey(b, a.Key)
		return strconv.AppendInt(b, v.Int64(), 10), true
	case slog.KindUint64:
		b = appendKey(b, a.Key)
		return strconv.AppendUint(b, v.Uint64(), 10), true
	case slog.KindBool:
		b = appendKey(b, a.Key)
		return strconv.AppendBool(b, v.Bool()), true
	case slog.KindDuration:
		b = appendKey(b, a.Key)
		return strconv.AppendInt(b, int64(v.Duration()), 10), true
	case slog.KindFloat64:
		if f := v.Float64(); !math.IsNaN(f) && !math.IsInf(f, 0) {
			b = appendKey(b, a.Key)
			return appendFloat(b, f), true
		}
	}
	return b, false
}

func appendKey(b []byte, key string) []byte {
	b = append(b, ',')
	b = appendString(b, key)
	return append(b, ':')
}

// appendFloat is encoding/json's float64 encoder (floatEncoder.encode): 'f' format unless the
// exponent is very small or large, then 'e' with a two-digit negative exponent cleaned up.
func appendFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		// slog's JSON handler writes the json.Marshal error as a string.
		return appendString(b, "!ERROR:json: unsupported value: "+strconv.FormatFloat(f, 'g', -1, 64))
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// appendString appends s as a JSON string exactly as slog's JSON handler does
// (appendEscapedJSONString: encoding/json's escaping without HTML escapes; invalid UTF-8
// becomes U+FFFD; U+2028 and U+2029 are escaped).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hex = "0123456789abcdef"
