package check

import (
	"fmt"
	"io"
	"strings"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// Summary is the table the fault suite prints after a run (issue 15).
type Summary struct {
	// Operations counts every operation; Acknowledged, Failed and Unknown split them by
	// outcome.
	Operations, Acknowledged, Failed, Unknown int
	// Lost counts acknowledged creates missing from their final read or answered by another
	// record; Duplicated counts elements present more than once plus Idempotency-Keys that
	// answered two records.
	Lost, Duplicated int
	// StaleReads counts stale reads by kind (read, token-read, cached-read).
	StaleReads map[history.Kind]int
	// ChangeStream counts change-stream violations by violation kind.
	ChangeStream map[string]int
	// CachedReads counts the acknowledged reads a cache answered (the reads check.CachedReads
	// judges); ChangeReaders the `/v1/changes` readers, ChangeReadersOK those that ended ok
	// (the others' completeness is unproven), ChangeEvents the events they received.
	CachedReads, ChangeReaders, ChangeReadersOK, ChangeEvents int
	// ChangesVerdict is the change-stream checker's verdict: "FAIL" on any violation, else
	// "unproven (…)" when a reader did not end ok (its completeness was not checked), "not
	// run" when the history has no reader, and "ok".
	ChangesVerdict string
	// Keys is the linearizability verdict per register.
	Keys []KeyVerdict
	// Faults are the faults injected, as the caller named them.
	Faults []string
	// Violations counts every violation of every checker; Inconclusive everything left
	// undecided.
	Violations, Inconclusive int
}

// Summarize counts h's operations and r's findings.
func Summarize(h history.History, r Report, faults []string) Summary {
	s := Summary{
		Operations:   len(h.Ops),
		StaleReads:   map[history.Kind]int{history.PlainRead: 0, history.TokenRead: 0, history.CachedRead: 0},
		ChangeStream: make(map[string]int),
		Faults:       faults,
	}
	for _, o := range h.Ops {
		switch o.Outcome {
		case history.OK:
			s.Acknowledged++
		case history.Fail:
			s.Failed++
		default:
			s.Unknown++
		}
		switch {
		case o.Kind == history.CachedRead && o.Outcome == history.OK:
			s.CachedReads++
		case o.Kind == history.Changes:
			s.ChangeReaders++
			s.ChangeEvents += len(o.Events)
			if o.Outcome == history.OK {
				s.ChangeReadersOK++
			}
		}
	}
	switch {
	case s.ChangeReaders == 0:
		s.ChangesVerdict = "not run"
	case s.ChangeReadersOK < s.ChangeReaders:
		// The checker judged their order, but the completeness of a reader that did not end
		// ok is unproven: not "ok".
		s.ChangesVerdict = fmt.Sprintf("unproven (%d of %d readers did not end ok)", s.ChangeReaders-s.ChangeReadersOK, s.ChangeReaders)
	default:
		s.ChangesVerdict = "ok"
	}
	for _, v := range r.Verdicts {
		s.Keys = append(s.Keys, v.Keys...)
		s.Inconclusive += len(v.Inconclusive)
		for _, x := range v.Violations {
			s.Violations++
			switch x.Kind {
			case LostCreate:
				s.Lost++
			case DuplicateCreate, IdempotencySplit:
				s.Duplicated++
			case StaleRead:
				s.StaleReads[history.PlainRead]++
			case StaleTokenRead:
				s.StaleReads[history.TokenRead]++
			case StaleCachedRead:
				s.StaleReads[history.CachedRead]++
			case ChangesGap, ChangesRepeat, ChangesMissing, ChangesOrder, ChangesPhantom:
				s.ChangeStream[x.Kind]++
				s.ChangesVerdict = "FAIL"
			}
		}
	}
	return s
}

// rows is the summary as label/value pairs, in the order printed.
func (s Summary) rows() [][2]string {
	ok, illegal, timeout := 0, 0, 0
	for _, k := range s.Keys {
		switch k.Result {
		case KeyOK:
			ok++
		case KeyIllegal:
			illegal++
		default:
			timeout++
		}
	}
	faults := "none"
	if len(s.Faults) > 0 {
		faults = strings.Join(s.Faults, "; ")
	}
	n := func(i int) string { return fmt.Sprint(i) }
	return [][2]string{
		{"operations", n(s.Operations)},
		{"acknowledged", n(s.Acknowledged)},
		{"failed (not applied)", n(s.Failed)},
		{"unknown outcome", n(s.Unknown)},
		{"lost acknowledged creates", n(s.Lost)},
		{"duplicated creates", n(s.Duplicated)},
		{"stale plain reads", n(s.StaleReads[history.PlainRead])},
		{"stale token reads", n(s.StaleReads[history.TokenRead])},
		{"cached reads (answered by a cache)", n(s.CachedReads)},
		{"stale cached reads", n(s.StaleReads[history.CachedRead])},
		{"change-stream readers ok / all", fmt.Sprintf("%d / %d", s.ChangeReadersOK, s.ChangeReaders)},
		{"change-stream events received", n(s.ChangeEvents)},
		{"change-stream gaps", n(s.ChangeStream[ChangesGap])},
		{"change-stream repeats", n(s.ChangeStream[ChangesRepeat])},
		{"change-stream missing writes", n(s.ChangeStream[ChangesMissing])},
		{"change-stream out of order", n(s.ChangeStream[ChangesOrder])},
		{"change-stream phantoms", n(s.ChangeStream[ChangesPhantom])},
		{"change streams", s.ChangesVerdict},
		{"registers linearizable / illegal / timed out", fmt.Sprintf("%d / %d / %d", ok, illegal, timeout)},
		{"violations (all checkers)", n(s.Violations)},
		{"undecided", n(s.Inconclusive)},
		{"faults injected", faults},
	}
}

// Markdown writes the summary as two Markdown tables: the totals, then one row per register.
func (s Summary) Markdown(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| measure | value |\n|---|---|\n")
	for _, r := range s.rows() {
		fmt.Fprintf(&b, "| %s | %s |\n", r[0], mdEscape(r[1]))
	}
	if len(s.Keys) > 0 {
		b.WriteString("\n| tenant | register | operations | linearizability |\n|---|---|---|---|\n")
		for _, k := range s.Keys {
			fmt.Fprintf(&b, "| %s | %s | %d | %s |\n", mdEscape(k.Tenant), mdEscape(k.Key), k.Ops, k.Result)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// Text writes the summary as aligned plain text: the totals, then the registers that were not
// ok (every register is in Markdown's table).
func (s Summary) Text(w io.Writer) error {
	rows := s.rows()
	width := 0
	for _, r := range rows {
		width = max(width, len(r[0]))
	}
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "%-*s  %s\n", width, r[0], r[1])
	}
	for _, k := range s.Keys {
		if k.Result != KeyOK {
			fmt.Fprintf(&b, "register %s %s (%d operations): %s\n", k.Tenant, k.Key, k.Ops, k.Result)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
