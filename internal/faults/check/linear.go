package check

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/meridian-dev/meridian/internal/faults/history"
)

// KeyResult is the linearizability verdict of one register.
type KeyResult string

// The results of a register's check.
const (
	KeyOK      KeyResult = "ok"
	KeyIllegal KeyResult = "illegal"
	KeyTimeout KeyResult = "unknown-timeout"
)

// KeyVerdict is one register's linearizability verdict.
type KeyVerdict struct {
	Tenant string
	Key    string
	// Ops counts the operations checked (writes of every outcome but a plain failure, and ok
	// strong reads).
	Ops    int
	Result KeyResult
}

// regState is the versioned register: Version 0 is "no such record".
type regState struct {
	Value   string
	Version int64
}

// regInput is what a client asked of the register.
type regInput struct {
	Write   bool
	Value   string
	IfMatch int64
}

// regOutput is what it got back. Outcome is history.Fail only for a compare-and-set refused
// with 412.
type regOutput struct {
	Outcome history.Outcome
	Value   string
	Version int64
}

// registerModel is a record under PUT (unconditional, or compare-and-set with If-Match) and
// strong GET: a write sets the value and bumps the version; a compare-and-set succeeds only if
// the version is the expected one and otherwise fails with no effect; a read returns (value,
// version). An operation of unknown outcome has an open-ended return time (porcupine may place
// it after everything, i.e. "never happened"); where it is placed it takes effect if it could.
var registerModel = porcupine.Model{
	Init: func() any { return regState{} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(regState), input.(regInput), output.(regOutput)
		if !in.Write {
			if out.Version == 0 {
				return s.Version == 0, s
			}
			return s == regState{Value: out.Value, Version: out.Version}, s
		}
		matches := in.IfMatch == 0 || s.Version == in.IfMatch
		next := regState{Value: in.Value, Version: s.Version + 1}
		switch out.Outcome {
		case history.OK:
			return matches && out.Version == next.Version, next
		case history.Fail:
			return !matches, s
		default:
			if matches {
				return true, next
			}
			return true, s
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		if !in.Write {
			return fmt.Sprintf("read → %q v%d", out.Value, out.Version)
		}
		return fmt.Sprintf("write %q if v%d → %s v%d", in.Value, in.IfMatch, out.Outcome, out.Version)
	},
	DescribeState: func(state any) string {
		s := state.(regState)
		return fmt.Sprintf("%q v%d", s.Value, s.Version)
	},
}

// registerOps returns the operations of h the register model judges, per register: writes
// that succeeded or may have, compare-and-sets refused with 412 (they show the version was
// another), and ok strong reads. Other failures did not happen and say nothing.
func registerOps(h history.History) map[regKey][]history.Op {
	m := make(map[regKey][]history.Op)
	for _, o := range h.Ops {
		switch {
		case o.Kind == history.StrongRead && o.Outcome == history.OK,
			o.Kind == history.Write && o.Outcome != history.Fail,
			o.Kind == history.Write && o.Outcome == history.Fail && o.IfMatch > 0 && o.Status == 412:
			k := regKey{o.Tenant, o.Key()}
			m[k] = append(m[k], o)
		}
	}
	return m
}

func toPorcupine(ops []history.Op) []porcupine.Operation {
	out := make([]porcupine.Operation, len(ops))
	for i, o := range ops {
		ret := int64(o.Complete)
		if o.Outcome == history.Unknown {
			ret = math.MaxInt64 // it may take effect at any time after its invocation, or never
		}
		out[i] = porcupine.Operation{
			ClientId: o.Process,
			Input:    regInput{Write: o.Kind == history.Write, Value: o.Value, IfMatch: o.IfMatch},
			Call:     int64(o.Invoke),
			Output:   regOutput{Outcome: o.Outcome, Value: o.Value, Version: o.Version},
			Return:   ret,
			Metadata: i,
		}
	}
	return out
}

// Linearizable checks every register's strong reads and writes with porcupine, each register
// alone with its own timeout. A register that is not linearizable is a violation naming the
// operation that no order can place and the write that set the state it contradicts; one
// whose check runs out of time is Inconclusive.
func Linearizable(h history.History, timeout time.Duration) Verdict {
	v := Verdict{Checker: "linearizable registers"}
	byKey := registerOps(h)
	keys := make([]regKey, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareRegKeys)
	for _, k := range keys {
		ops := byKey[k]
		v.Checked++
		kv := KeyVerdict{Tenant: k.tenant, Key: k.key, Ops: len(ops)}
		res, viol := checkRegister(registerModel, ops, timeout)
		kv.Result = res
		switch res {
		case KeyIllegal:
			viol.Tenant, viol.Key = k.tenant, k.key
			v.Violations = append(v.Violations, viol)
		case KeyTimeout:
			v.Inconclusive = append(v.Inconclusive, fmt.Sprintf("tenant %s %s: linearizability check of %d operations ran out of its %v budget", k.tenant, k.key, len(ops), timeout))
		}
		v.Keys = append(v.Keys, kv)
	}
	return v
}

// checkRegister checks one register's operations against model. If they are not
// linearizable it explains why, as far as a second (verbose) check within the same budget
// allows.
func checkRegister(model porcupine.Model, ops []history.Op, timeout time.Duration) (KeyResult, Violation) {
	pops := toPorcupine(ops)
	switch porcupine.CheckOperationsTimeout(model, pops, timeout) {
	case porcupine.Ok:
		return KeyOK, Violation{}
	case porcupine.Unknown:
		return KeyTimeout, Violation{}
	}
	viol := Violation{Kind: NotLinearizable, Ops: ops,
		Detail: fmt.Sprintf("no order of these %d operations is consistent with their times and a versioned register", len(ops))}
	res, info := porcupine.CheckOperationsVerbose(model, pops, timeout)
	if res != porcupine.Illegal {
		return KeyIllegal, viol
	}
	var longest []int
	for _, part := range info.PartialLinearizations() {
		for _, p := range part {
			if len(p) > len(longest) || (len(p) == len(longest) && slices.Compare(p, longest) < 0) {
				longest = p
			}
		}
	}
	// The culprit is the operation outside the longest linearizable prefix that had to take
	// effect first (the earliest to return); the prefix's last state change is what it
	// contradicts.
	in := make(map[int]bool, len(longest))
	for _, i := range longest {
		in[i] = true
	}
	culprit := -1
	for i, o := range pops {
		if in[i] {
			continue
		}
		if culprit < 0 || o.Return < pops[culprit].Return || (o.Return == pops[culprit].Return && o.Call < pops[culprit].Call) {
			culprit = i
		}
	}
	if culprit < 0 {
		return KeyIllegal, viol
	}
	state, writer := model.Init(), -1
	for _, i := range longest {
		_, next := model.Step(state, pops[i].Input, pops[i].Output)
		if next != state {
			writer = i
		}
		state = next
	}
	s := state.(regState)
	viol.Ops = []history.Op{ops[culprit]}
	detail := fmt.Sprintf("#%d cannot take effect: the longest linearizable prefix (%d of %d operations) leaves the record at %q v%d", ops[culprit].ID, len(longest), len(ops), s.Value, s.Version)
	if s.Version == 0 {
		detail = fmt.Sprintf("#%d cannot take effect: the longest linearizable prefix (%d of %d operations) leaves no record", ops[culprit].ID, len(longest), len(ops))
	}
	if writer >= 0 {
		viol.Ops = append(viol.Ops, ops[writer])
		detail += fmt.Sprintf(", set by #%d", ops[writer].ID)
	}
	viol.Detail = detail
	return KeyIllegal, viol
}
