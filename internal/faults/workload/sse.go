package workload

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// sseEvent is one dispatched Server-Sent Event: the values of its `id:` and `data:` fields
// (several data lines joined with "\n", as the SSE specification says). HasID says an `id:`
// field came with the event itself; ID is then its value.
type sseEvent struct {
	ID    string
	HasID bool
	Event string
	Data  string
}

// sseReader parses a text/event-stream (the WHATWG HTML "Server-sent events" section): lines
// end in LF, CR or CRLF; a line starting with ':' is a comment (a heartbeat); "name: value"
// sets a field (one space after the colon is dropped; a line without a colon is a field with
// an empty value); `data` lines accumulate; a blank line dispatches the event. An event is
// dispatched only when its blank line arrived, so a stream that ends in the middle of one
// yields nothing of it. Unknown fields (`retry`, others) are ignored.
type sseReader struct {
	sc    *bufio.Scanner
	first bool
	// Comments counts the comment lines read (heartbeats among them).
	Comments int
	// Line is called after every line read (used to reset an idle timer).
	Line func()
}

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	sc.Split(scanSSELines)
	return &sseReader{sc: sc, first: true}
}

// Next returns the next dispatched event, or the error that ended the stream (io.EOF for a
// clean end).
func (p *sseReader) Next() (sseEvent, error) {
	var ev sseEvent
	var data []string
	fields := false
	for p.sc.Scan() {
		line := p.sc.Text()
		if p.Line != nil {
			p.Line()
		}
		if p.first {
			line = strings.TrimPrefix(line, "\ufeff")
			p.first = false
		}
		if line == "" {
			if !fields {
				continue
			}
			if data == nil {
				// No data: per the specification nothing is dispatched. An id without data
				// is handed up anyway (Data empty), so the caller can tell the protocol
				// (every event has id and data) was broken.
				if ev.HasID {
					return ev, nil
				}
				ev, fields = sseEvent{}, false
				continue
			}
			ev.Data = strings.Join(data, "\n")
			return ev, nil
		}
		if line[0] == ':' {
			p.Comments++
			continue
		}
		name, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		switch name {
		case "data":
			data = append(data, value)
			fields = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				ev.ID, ev.HasID = value, true
				fields = true
			}
		case "event":
			ev.Event = value
			fields = true
		}
	}
	if err := p.sc.Err(); err != nil {
		return sseEvent{}, err
	}
	return sseEvent{}, io.EOF
}

// scanSSELines splits at LF, CR or CRLF.
func scanSSELines(data []byte, atEOF bool) (int, []byte, error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		// CR: a following LF belongs to it; at the end of the buffer, wait for more.
		if i+1 < len(data) {
			if data[i+1] == '\n' {
				return i + 2, data[:i], nil
			}
			return i + 1, data[:i], nil
		}
		if atEOF {
			return i + 1, data[:i], nil
		}
		return 0, nil, nil
	}
	if atEOF {
		// A last line without its end: the event it belongs to is never dispatched, since
		// no blank line follows; hand it up as a line all the same.
		return len(data), data, nil
	}
	return 0, nil, nil
}
