// Package gnetlog passes gnet's log lines to slog: its warnings and errors (a Fatalf as an
// error: gnet logs it as it gives up, and its caller sees the failure), and drops its debug and
// info lines (its start-up banner among them). The router's event-loop front and the load
// generator's event-loop engine log through it.
package gnetlog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/panjf2000/gnet/v2/pkg/logging"
)

// Logger is a gnet logging.Logger writing to L (nil: slog.Default()) with Prefix before each
// message.
type Logger struct {
	L      *slog.Logger
	Prefix string
}

var _ logging.Logger = Logger{}

func (Logger) Debugf(string, ...any)       {}
func (Logger) Infof(string, ...any)        {}
func (g Logger) Warnf(f string, a ...any)  { g.log(slog.LevelWarn, f, a) }
func (g Logger) Errorf(f string, a ...any) { g.log(slog.LevelError, f, a) }
func (g Logger) Fatalf(f string, a ...any) { g.log(slog.LevelError, f, a) }

func (g Logger) log(level slog.Level, f string, a []any) {
	l := g.L
	if l == nil {
		l = slog.Default()
	}
	l.Log(context.Background(), level, g.Prefix+fmt.Sprintf(f, a...))
}
