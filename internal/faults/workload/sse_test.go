package workload

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func readAll(t *testing.T, r io.Reader) ([]sseEvent, int, error) {
	t.Helper()
	p := newSSEReader(r)
	var out []sseEvent
	for {
		ev, err := p.Next()
		if err != nil {
			return out, p.Comments, err
		}
		out = append(out, ev)
	}
}

func TestSSEParser(t *testing.T) {
	stream := "\ufeff: hello\n" +
		"retry: 1000\n" +
		"id: 1\ndata: {\"a\":1}\n\n" +
		// CRLF, a data field split over lines, a field without a space after the colon.
		"id:2\r\ndata: {\"collection\":\"regs\",\r\ndata:  \"id\":\"x\"}\r\n\r\n" +
		// CR alone, a comment inside an event, an unknown field.
		": heartbeat\r\rid: 3\rfoo: bar\r: heartbeat\rdata\rdata: z\r\r" +
		// Blank lines alone dispatch nothing; an event field without data resets.
		"\n\n\nevent: x\n\n" +
		"id: 4\nevent: change\ndata: last\n\n" +
		// Cut in the middle of an event: nothing of it is dispatched.
		"id: 5\ndata: half"
	want := []sseEvent{
		{ID: "1", HasID: true, Data: `{"a":1}`},
		{ID: "2", HasID: true, Data: "{\"collection\":\"regs\",\n \"id\":\"x\"}"},
		{ID: "3", HasID: true, Data: "\nz"},
		{ID: "4", HasID: true, Event: "change", Data: "last"},
	}
	for name, r := range map[string]io.Reader{
		"whole":    strings.NewReader(stream),
		"one byte": iotest.OneByteReader(strings.NewReader(stream)),
		"half":     iotest.HalfReader(strings.NewReader(stream)),
	} {
		got, comments, err := readAll(t, r)
		if !errors.Is(err, io.EOF) {
			t.Errorf("%s: ended with %v, want EOF", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: events\n%+v\nwant\n%+v", name, got, want)
		}
		if comments != 3 {
			t.Errorf("%s: %d comments, want 3", name, comments)
		}
	}

	// An id without data is handed up (so a broken event is seen), and an error is passed on.
	got, _, err := readAll(t, io.MultiReader(strings.NewReader("id: 9\n\n"), iotest.ErrReader(io.ErrUnexpectedEOF)))
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 1 || got[0].ID != "9" || got[0].Data != "" {
		t.Errorf("got %+v, %v", got, err)
	}
}

func TestParseChange(t *testing.T) {
	ok := sseEvent{ID: "7", HasID: true, Data: `{"collection":"regs","id":"r1-0","op":"upsert","version":3}`}
	e, good := parseChange(ok)
	if !good || e.Seq != 7 || e.Coll != "regs" || e.Rec != "r1-0" || e.Op != "upsert" || e.Version != 3 {
		t.Fatalf("parseChange(%+v) = %+v, %v", ok, e, good)
	}
	for _, bad := range []sseEvent{
		{Data: ok.Data},
		{ID: "x", HasID: true, Data: ok.Data},
		{ID: "0", HasID: true, Data: ok.Data},
		{ID: "7", HasID: true},
		{ID: "7", HasID: true, Data: `{"collection":"regs","id":"r1-0"}`},
		{ID: "7", HasID: true, Data: `{"id":"r1-0","version":1}`},
		{ID: "7", HasID: true, Data: `not json`},
	} {
		if e, good := parseChange(bad); good {
			t.Errorf("parseChange(%+v) accepted: %+v", bad, e)
		}
	}
}
