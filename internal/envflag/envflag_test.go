package envflag

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func mapLookup(m map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

func TestLookups(t *testing.T) {
	vars := map[string]string{
		"S": "text", "S_EMPTY": "",
		"D": "250ms", "I": "-42", "I64": "8589934592", "F": "2.5", "B": "true", "B0": "0",
		"D_BAD": "5", "I_BAD": "ten", "I_RANGE": "99999999999999999999", "I64_BAD": "1.5",
		"F_BAD": "fast", "B_BAD": "yes", "D_EMPTY": "",
	}
	for _, tc := range []struct {
		name    string
		get     func(*Env) any
		want    any
		badVar  string // when set, Err must name this variable
		wantMsg string // and contain this
	}{
		{"string set", func(e *Env) any { return e.String("S", "def") }, "text", "", ""},
		{"string set empty", func(e *Env) any { return e.String("S_EMPTY", "def") }, "", "", ""},
		{"string missing", func(e *Env) any { return e.String("NOPE", "def") }, "def", "", ""},
		{"duration", func(e *Env) any { return e.Duration("D", time.Second) }, 250 * time.Millisecond, "", ""},
		{"duration missing", func(e *Env) any { return e.Duration("NOPE", time.Second) }, time.Second, "", ""},
		{"duration without unit", func(e *Env) any { return e.Duration("D_BAD", time.Second) }, time.Second, "D_BAD", "a duration"},
		{"duration empty is unset", func(e *Env) any { return e.Duration("D_EMPTY", time.Second) }, time.Second, "", ""},
		{"int", func(e *Env) any { return e.Int("I", 7) }, -42, "", ""},
		{"int missing", func(e *Env) any { return e.Int("NOPE", 7) }, 7, "", ""},
		{"int malformed", func(e *Env) any { return e.Int("I_BAD", 7) }, 7, "I_BAD", "an integer"},
		{"int out of range", func(e *Env) any { return e.Int("I_RANGE", 7) }, 7, "I_RANGE", "in range"},
		{"int64", func(e *Env) any { return e.Int64("I64", 1) }, int64(8589934592), "", ""},
		{"int64 missing", func(e *Env) any { return e.Int64("NOPE", 1) }, int64(1), "", ""},
		{"int64 malformed", func(e *Env) any { return e.Int64("I64_BAD", 1) }, int64(1), "I64_BAD", "an integer"},
		{"float", func(e *Env) any { return e.Float64("F", 1) }, 2.5, "", ""},
		{"float missing", func(e *Env) any { return e.Float64("NOPE", 1) }, 1.0, "", ""},
		{"float malformed", func(e *Env) any { return e.Float64("F_BAD", 1) }, 1.0, "F_BAD", "a number"},
		{"bool", func(e *Env) any { return e.Bool("B", false) }, true, "", ""},
		{"bool zero", func(e *Env) any { return e.Bool("B0", true) }, false, "", ""},
		{"bool missing", func(e *Env) any { return e.Bool("NOPE", true) }, true, "", ""},
		{"bool malformed", func(e *Env) any { return e.Bool("B_BAD", false) }, false, "B_BAD", "a boolean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := New(mapLookup(vars))
			if got := tc.get(e); got != tc.want {
				t.Errorf("got %v (%T), want %v (%T)", got, got, tc.want, tc.want)
			}
			err := e.Err()
			if tc.badVar == "" {
				if err != nil {
					t.Errorf("Err = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Err = %v, want one wrapping ErrMalformed", err)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.badVar+"=") || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("Err = %q, want it to name %s and say %q", msg, tc.badVar, tc.wantMsg)
			}
		})
	}
}

// TestErrCollectsAll checks that every malformed variable is reported, not only the first, and
// that the good ones around them still take effect.
func TestErrCollectsAll(t *testing.T) {
	e := New(mapLookup(map[string]string{"A": "x", "B": "3", "C": "y"}))
	a, b, c := e.Int("A", 1), e.Int("B", 2), e.Duration("C", time.Second)
	if a != 1 || b != 3 || c != time.Second {
		t.Errorf("values %d %d %v, want 1 3 1s", a, b, c)
	}
	err := e.Err()
	if err == nil || !strings.Contains(err.Error(), `A="x"`) || !strings.Contains(err.Error(), `C="y"`) {
		t.Errorf("Err = %v, want both A and C named", err)
	}
}

// TestWithFlagSet is the way the commands use it: the environment gives the default, the
// command line wins, and a malformed variable is reported even though parsing succeeds.
func TestWithFlagSet(t *testing.T) {
	e := New(mapLookup(map[string]string{"X_PORT": "9000", "X_WAIT": "soon"}))
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	port := fs.Int("port", e.Int("X_PORT", 80), "port (X_PORT)")
	host := fs.String("host", e.String("X_HOST", "localhost"), "host (X_HOST)")
	wait := fs.Duration("wait", e.Duration("X_WAIT", time.Second), "wait (X_WAIT)")
	if err := fs.Parse([]string{"-host", "example.org"}); err != nil {
		t.Fatal(err)
	}
	if *port != 9000 || *host != "example.org" || *wait != time.Second {
		t.Errorf("port %d host %q wait %v, want 9000 example.org 1s", *port, *host, *wait)
	}
	if err := e.Err(); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "X_WAIT") {
		t.Errorf("Err = %v, want X_WAIT reported", err)
	}
}

// TestProcessEnvironment checks that New(nil) reads the real environment.
func TestProcessEnvironment(t *testing.T) {
	t.Setenv("ENVFLAG_TEST_INT", "12")
	t.Setenv("ENVFLAG_TEST_BAD", "twelve")
	e := New(nil)
	if got := e.Int("ENVFLAG_TEST_INT", 0); got != 12 {
		t.Errorf("Int = %d, want 12", got)
	}
	if got := e.String("ENVFLAG_TEST_UNSET_VARIABLE", "def"); got != "def" {
		t.Errorf("String of an unset variable = %q, want def", got)
	}
	if e.Err() != nil {
		t.Fatalf("Err = %v before any malformed read", e.Err())
	}
	e.Int("ENVFLAG_TEST_BAD", 0)
	if !errors.Is(e.Err(), ErrMalformed) {
		t.Errorf("Err = %v, want ErrMalformed", e.Err())
	}
}
