package history

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/meridian-dev/meridian/internal/strictjson"
)

// Encoder writes a history file: the header line at once, then one line per operation, so a
// workload can append operations as they complete and a crash keeps what was written.
type Encoder struct {
	w   io.Writer
	err error
}

// NewEncoder writes h (with Format set to FormatV1) as the first line of w.
func NewEncoder(w io.Writer, h Header) (*Encoder, error) {
	h.Format = FormatV1
	e := &Encoder{w: w}
	e.line(h)
	return e, e.err
}

// Encode appends o as one line. After a write error every later call returns that error.
func (e *Encoder) Encode(o Op) error {
	e.line(o)
	return e.err
}

func (e *Encoder) line(v any) {
	if e.err != nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		e.err = err
		return
	}
	_, e.err = e.w.Write(append(b, '\n'))
}

// Encode writes h as a history file.
func Encode(w io.Writer, h History) error {
	bw := bufio.NewWriter(w)
	e, err := NewEncoder(bw, h.Header)
	if err != nil {
		return err
	}
	for _, o := range h.Ops {
		if err := e.Encode(o); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Decode reads a history file written by Encode or an Encoder and validates it. Lines are decoded
// strictly (no unknown or repeated member, one value per line); an empty line is an error,
// except that the file may end with a newline. Errors wrap ErrFormat (naming the line) or
// ErrInvalid.
func Decode(r io.Reader) (History, error) {
	br := bufio.NewReader(r)
	var h History
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return History{}, err
		}
		atEOF := err != nil
		if atEOF && len(line) == 0 {
			if n == 1 {
				return History{}, fmt.Errorf("%w: empty file", ErrFormat)
			}
			break
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		if n == 1 {
			if err := strictjson.Decode(line, &h.Header); err != nil {
				return History{}, fmt.Errorf("%w: line 1 (header): %v", ErrFormat, err)
			}
			if h.Header.Format != FormatV1 {
				return History{}, fmt.Errorf("%w: line 1: format %q, want %q", ErrFormat, h.Header.Format, FormatV1)
			}
		} else {
			var o Op
			if err := strictjson.Decode(line, &o); err != nil {
				return History{}, fmt.Errorf("%w: line %d: %v", ErrFormat, n, err)
			}
			h.Ops = append(h.Ops, o)
		}
		if atEOF {
			break
		}
	}
	if err := h.Validate(); err != nil {
		return History{}, err
	}
	return h, nil
}
