// Package strictjson decodes JSON request bodies by the rules every Meridian client can rely on
// (DESIGN.md §4, "Exact shapes and rules"): exactly one JSON value; member names matched
// case-sensitively (RFC 8259: `"DATA"` is not `"data"`), so a name that is not exactly one of
// the target's is unknown; no member name twice in any object, at any depth; nothing but
// whitespace after the value.
//
// encoding/json alone breaks three of those rules: it matches names case-insensitively, keeps
// the last of duplicated names and (through Unmarshal's callers such as gin) may ignore
// trailing data. Decode checks the whole document first, then lets encoding/json fill the value.
//
// Errors wrap one of the package's sentinels and are written in the package's own words,
// naming the offending member or byte offset but never repeating encoding/json's messages, so
// callers may put Error() in a problem detail. It is a leaf package (stdlib only): the API node
// and the router's admin API both use it. It must never log or do I/O.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// The errors of Decode and Check. Every error they return wraps exactly one of them.
var (
	// ErrEmpty is a body without a JSON value (nothing or only whitespace).
	ErrEmpty = errors.New("empty body")
	// ErrSyntax is a body that is not JSON.
	ErrSyntax = errors.New("malformed JSON")
	// ErrTrailing is data after the JSON value.
	ErrTrailing = errors.New("trailing data after the JSON value")
	// ErrDuplicate is a member name given twice in one object.
	ErrDuplicate = errors.New("duplicated member name")
	// ErrUnknown is a member name that is not exactly one of the target's.
	ErrUnknown = errors.New("unknown member")
	// ErrType is a value of the wrong JSON type for its member.
	ErrType = errors.New("wrong type")
)

// Decode decodes body, which must hold exactly one JSON value, into v (a non-nil pointer).
// Member names of objects decoded into structs must be exactly the fields' JSON names; maps,
// json.RawMessage and interface values take any names. No object anywhere in body may repeat a
// member name.
func Decode(body []byte, v any) error {
	if err := check(body, reflect.TypeOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields() // already checked; kept as a second guard
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field == "" {
				return fmt.Errorf("%w: the body must be a JSON %s", ErrType, kindWord(te.Type))
			}
			return fmt.Errorf("%w: member %q must be a JSON %s", ErrType, te.Field, kindWord(te.Type))
		}
		// check accepted the document (and its depth), so this is a value encoding/json cannot
		// hold (a number out of range of its field): the request's fault, not a syntax error.
		return fmt.Errorf("%w: a value does not fit its member", ErrType)
	}
	return nil
}

// Check reports whether body is exactly one JSON value with no member name repeated in any
// object; it applies no names.
func Check(body []byte) error { return check(body, nil) }

// kindWord names the JSON type a Go type decodes from.
func kindWord(t reflect.Type) string {
	if t == nil {
		return "value of another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return "value of another type"
}

// frame is an open object or array while check walks the token stream.
type frame struct {
	object bool
	// names holds the member names seen so far in an object (allocated on the first).
	names map[string]struct{}
	// fields is the exact member names allowed in an object decoded into a struct (nil: any)
	// and the Go type of each; elem is the type of a map's or array's values (nil: unchecked).
	fields map[string]reflect.Type
	elem   reflect.Type
	// next is the type of the value after the member name just read.
	next reflect.Type
	// wantName is set in an object when the next token is a member name (or its end).
	wantName bool
}

var rawMessage = reflect.TypeFor[json.RawMessage]()

// MaxDepth is how deeply objects and arrays may nest, encoding/json's own limit.
const MaxDepth = 10000

// check walks body's tokens once, iteratively (a deeply nested body costs heap, not stack),
// checking syntax, repeated names, trailing data and, along the Go type t (nil: none), that
// objects decoded into structs use exactly their fields' names.
func check(body []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // numbers are not converted, so none is out of range here
	var stack []frame
	done := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			switch {
			case done:
				return nil
			case len(stack) == 0:
				return ErrEmpty
			}
			return fmt.Errorf("%w: the body ends inside a value", ErrSyntax)
		}
		if done {
			return fmt.Errorf("%w (at byte %d)", ErrTrailing, dec.InputOffset())
		}
		if err != nil {
			return fmt.Errorf("%w at byte %d", ErrSyntax, syntaxOffset(err, dec))
		}
		want := t
		if n := len(stack); n > 0 {
			top := &stack[n-1]
			if top.object && top.wantName {
				if tok == json.Delim('}') {
					stack = stack[:n-1]
					done = len(stack) == 0
					continue
				}
				name := tok.(string) // the decoder allows only a string or '}' here
				if _, dup := top.names[name]; dup {
					return fmt.Errorf("%w %q", ErrDuplicate, name)
				}
				if top.names == nil {
					top.names = map[string]struct{}{}
				}
				top.names[name] = struct{}{}
				top.next = top.elem
				if top.fields != nil {
					ft, ok := top.fields[name]
					if !ok {
						return fmt.Errorf("%w %q", ErrUnknown, name)
					}
					top.next = ft
				}
				top.wantName = false
				continue
			}
			if !top.object && tok == json.Delim(']') {
				stack = stack[:n-1]
				done = len(stack) == 0
				continue
			}
			if top.object {
				want = top.next
				top.wantName = true
			} else {
				want = top.elem
			}
		}
		if len(stack) == 0 && tok != json.Delim('{') {
			if it := indirect(want); it != nil && (it.Kind() == reflect.Struct || it.Kind() == reflect.Map) {
				// encoding/json would take null as "nothing to decode"; a body is never that.
				return fmt.Errorf("%w: the body must be a JSON object", ErrType)
			}
		}
		switch tok {
		case json.Delim('{'):
			f := frame{object: true, wantName: true}
			switch want = indirect(want); {
			case want == nil:
			case want.Kind() == reflect.Struct:
				f.fields = structFields(want)
			case want.Kind() == reflect.Map:
				f.elem = want.Elem()
			}
			stack = append(stack, f)
			if len(stack) > MaxDepth {
				return fmt.Errorf("%w: nested deeper than %d levels", ErrSyntax, MaxDepth)
			}
		case json.Delim('['):
			f := frame{}
			if want = indirect(want); want != nil && (want.Kind() == reflect.Slice || want.Kind() == reflect.Array) {
				f.elem = want.Elem()
			}
			stack = append(stack, f)
			if len(stack) > MaxDepth {
				return fmt.Errorf("%w: nested deeper than %d levels", ErrSyntax, MaxDepth)
			}
		default:
			done = len(stack) == 0
		}
	}
}

// indirect returns the type whose names apply to an object decoded into t: pointers are
// followed; json.RawMessage, interfaces and types with their own UnmarshalJSON take any names
// (nil).
func indirect(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t == rawMessage || t.Kind() == reflect.Interface ||
		reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return nil
	}
	return t
}

// structFields returns the JSON names of t's fields as encoding/json sees them (tag name, else
// the field name; "-" and unexported fields left out; embedded structs without a tag flattened)
// with their types.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			if et := indirect(ft); et != nil && et.Kind() == reflect.Struct {
				for n, typ := range structFields(et) {
					if _, ok := out[n]; !ok {
						out[n] = typ
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = ft
	}
	return out
}

// syntaxOffset is where a syntax error was found: encoding/json's offset when it gives one,
// else how far the decoder read.
func syntaxOffset(err error, dec *json.Decoder) int64 {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return se.Offset
	}
	return dec.InputOffset()
}
