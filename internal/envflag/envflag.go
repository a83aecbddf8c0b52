// Package envflag gives command-line flags defaults from the environment: a flag's default is
// the value of the environment variable named in its help text, and a flag given on the command
// line still wins.
//
// A set but malformed variable (MERIDIAN_POOL_MAX_CONNS=ten) is never silently replaced by the
// built-in default: the lookup returns the default so flag registration can go on, and records
// the error; the command checks Env.Err after parsing its flags and exits with it. An unset
// variable means the default. A variable set to the empty string is the empty string for
// String and, for the typed lookups, the same as unset (VAR= in a compose file or shell clears
// a setting; it cannot be a mistyped value).
//
// The package only reads the environment: it never exits, logs or touches the flag set. Tests
// pass a map lookup to New instead of setting process environment variables.
package envflag

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// ErrMalformed is wrapped by every error Env.Err reports: a variable was set to a value its
// flag's type cannot hold.
var ErrMalformed = errors.New("malformed environment variable")

// Env reads flag defaults from environment variables and remembers the malformed ones. The zero
// value is not usable: use New. An Env is not safe for concurrent use; flags are registered from
// one goroutine.
type Env struct {
	lookup func(string) (string, bool)
	errs   []error
}

// New returns an Env that reads variables through lookup; nil means os.LookupEnv.
func New(lookup func(name string) (string, bool)) *Env {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	return &Env{lookup: lookup}
}

// String returns the value of name, or def when name is unset.
func (e *Env) String(name, def string) string {
	if v, ok := e.lookup(name); ok {
		return v
	}
	return def
}

// Duration returns the value of name parsed by time.ParseDuration ("250ms", "5s"), or def
// when name is unset, empty or malformed (a malformed value is recorded for Err).
func (e *Env) Duration(name string, def time.Duration) time.Duration {
	return parse(e, name, def, "a duration such as 250ms or 5s", time.ParseDuration)
}

// Int returns the value of name as a decimal int, or def when name is unset, empty or
// malformed.
func (e *Env) Int(name string, def int) int {
	return parse(e, name, def, "an integer", strconv.Atoi)
}

// Int64 returns the value of name as a decimal int64, or def when name is unset, empty or
// malformed.
func (e *Env) Int64(name string, def int64) int64 {
	return parse(e, name, def, "an integer", func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) })
}

// Float64 returns the value of name as a float64, or def when name is unset, empty or
// malformed.
func (e *Env) Float64(name string, def float64) float64 {
	return parse(e, name, def, "a number", func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
}

// Bool returns the value of name as strconv.ParseBool reads it (1, t, true, 0, f, false, …),
// or def when name is unset, empty or malformed.
func (e *Env) Bool(name string, def bool) bool {
	return parse(e, name, def, "a boolean (true or false)", strconv.ParseBool)
}

// Err returns one error naming every malformed variable read so far, each wrapping
// ErrMalformed, or nil.
func (e *Env) Err() error { return errors.Join(e.errs...) }

// parse looks name up and converts it with conv; want describes a good value in the error.
func parse[T any](e *Env, name string, def T, want string, conv func(string) (T, error)) T {
	s, ok := e.lookup(name)
	if !ok || s == "" {
		return def
	}
	v, err := conv(s)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			want += " in range"
		}
		e.errs = append(e.errs, fmt.Errorf("%w %s=%q: want %s", ErrMalformed, name, s, want))
		return def
	}
	return v
}
