package history

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// sample is a history with every kind and outcome, every field set somewhere.
func sample() History {
	return History{
		Header: Header{Format: FormatV1, Seed: 42, Faults: []string{"kill router us-east", "partition eu-west"}},
		Ops: []Op{
			{ID: 1, Process: 0, Region: "us-east", Tenant: "acme", Kind: Write, Coll: "regs", Rec: "a", Value: "x", Version: 1, Invoke: ms(1), Complete: ms(5), Due: ms(105), Outcome: OK, Status: 201},
			{ID: 2, Process: 1, Tenant: "acme", Kind: Write, Coll: "regs", Rec: "a", Value: "y", IfMatch: 1, Invoke: ms(2), Complete: ms(900), Outcome: Unknown, Error: "context deadline exceeded"},
			{ID: 3, Process: 2, Tenant: "acme", Kind: Write, Coll: "regs", Rec: "a", Value: "z", IfMatch: 7, Invoke: ms(3), Complete: ms(6), Outcome: Fail, Status: 412, Problem: "precondition-failed"},
			{ID: 4, Process: 0, Tenant: "acme", Kind: StrongRead, Coll: "regs", Rec: "a", Value: "x", Version: 1, Invoke: ms(6), Complete: ms(7), Outcome: OK, Status: 200},
			{ID: 5, Process: 0, Tenant: "acme", Kind: PlainRead, Coll: "regs", Rec: "b", Invoke: ms(8), Complete: ms(9), Outcome: OK, Status: 404},
			{ID: 6, Process: 0, Tenant: "acme", Kind: TokenRead, Coll: "regs", Rec: "a", Value: "x", Version: 1, TokenOf: 1, Invoke: ms(10), Complete: ms(11), Outcome: OK, Status: 200},
			{ID: 7, Process: 3, Tenant: "acme", Kind: CachedRead, Coll: "regs", Rec: "a", Value: "x", Version: 1, Invoke: ms(10), Complete: ms(11), Outcome: OK, Status: 200},
			{ID: 8, Process: 4, Tenant: "acme", Kind: Create, Coll: "set", Value: "e1", IdemKey: "k1", Invoke: ms(12), Complete: ms(20), Outcome: Unknown, Status: 504, Problem: "gateway-timeout"},
			{ID: 9, Process: 4, Tenant: "acme", Kind: Create, Coll: "set", Rec: "0190-aa", Value: "e1", IdemKey: "k1", Version: 1, Invoke: ms(21), Complete: ms(25), Outcome: OK, Status: 201},
			{ID: 10, Process: 5, Tenant: "acme", Kind: SetRead, Coll: "set", Elements: []Element{{Rec: "0190-aa", Value: "e1"}}, Invoke: ms(30), Complete: ms(31), Outcome: OK, Status: 200},
			{ID: 11, Process: 6, Region: "eu-west", Tenant: "acme", Kind: Changes, From: 0, Due: ms(40), Events: []Event{
				{Seq: 1, Coll: "regs", Rec: "a", Op: "put", Version: 1},
				{Seq: 2, Coll: "set", Rec: "0190-aa", Op: "create", Version: 1},
			}, Invoke: 0, Complete: ms(50), Outcome: OK, Status: 200},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	h := sample()
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Encode(&buf, h); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != len(h.Ops)+1 {
		t.Fatalf("%d lines, want %d:\n%s", n, len(h.Ops)+1, buf.String())
	}
	got, err := Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip changed the history:\n got %+v\nwant %+v", got, h)
	}
}

func TestEncoderAppends(t *testing.T) {
	var buf bytes.Buffer
	e, err := NewEncoder(&buf, Header{Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	h := sample()
	for _, o := range h.Ops[:3] {
		if err := e.Encode(o); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Decode(strings.NewReader(strings.TrimSuffix(buf.String(), "\n"))) // no final newline
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Seed != 7 || got.Header.Format != FormatV1 || len(got.Ops) != 3 {
		t.Fatalf("got %+v", got)
	}
}

func TestDecodeRejects(t *testing.T) {
	head := `{"format":"meridian-history/1"}` + "\n"
	op := `{"id":1,"p":0,"t":"acme","k":"read","col":"c","rec":"a","i":1,"c":2,"o":"ok"}`
	cases := []struct {
		name, file string
		want       error
	}{
		{"empty", "", ErrFormat},
		{"no header", op + "\n", ErrFormat},
		{"other format", `{"format":"x"}` + "\n", ErrFormat},
		{"unknown member", head + strings.Replace(op, `"p":0`, `"p":0,"zz":1`, 1), ErrFormat},
		{"repeated member", head + strings.Replace(op, `"p":0`, `"p":0,"p":1`, 1), ErrFormat},
		{"blank line", head + "\n" + op, ErrFormat},
		{"two values on a line", head + op + op, ErrFormat},
		{"unknown kind", head + strings.Replace(op, `"read"`, `"delete"`, 1), ErrInvalid},
		{"unknown outcome", head + strings.Replace(op, `"ok"`, `"maybe"`, 1), ErrInvalid},
		{"completes before invoked", head + strings.Replace(op, `"c":2`, `"c":0`, 1), ErrInvalid},
		{"id 0", head + strings.Replace(op, `"id":1`, `"id":0`, 1), ErrInvalid},
		{"duplicate id", head + op + "\n" + op, ErrInvalid},
		{"token of nothing", head + `{"id":1,"p":0,"t":"acme","k":"token-read","col":"c","rec":"a","tok":9,"i":1,"c":2,"o":"ok"}`, ErrInvalid},
		{"ok write without version", head + `{"id":1,"p":0,"t":"acme","k":"write","col":"c","rec":"a","v":"x","i":1,"c":2,"o":"ok"}`, ErrInvalid},
		{"cas that skipped a version", head + `{"id":1,"p":0,"t":"acme","k":"write","col":"c","rec":"a","v":"x","if":2,"ver":5,"i":1,"c":2,"o":"ok"}`, ErrInvalid},
		{"create without key", head + `{"id":1,"p":0,"t":"acme","k":"create","col":"c","v":"e","i":1,"c":2,"o":"unknown"}`, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(c.file))
			if !errors.Is(err, c.want) {
				t.Fatalf("Decode = %v, want %v", err, c.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	cases := []struct {
		status  int
		problem string
		want    Outcome
	}{
		{0, "", Unknown},
		{200, "", OK},
		{201, "", OK},
		{204, "", OK},
		{304, "", OK},
		{400, "invalid-body", Fail},
		{404, "record-not-found", Fail},
		{408, "request-timeout", Fail},
		{409, "conflict", Fail},
		{412, "precondition-failed", Fail},
		{421, "misdirected-request", Fail},
		{422, "idempotency-key-reused", Fail},
		{429, "rate-limited", Fail},
		{499, "client-closed-request", Unknown},
		{500, "internal-error", Unknown},
		{502, "bad-gateway", Unknown},
		{503, "service-unavailable", Unknown},
		{503, "", Unknown},
		{503, "tenant-fenced", Fail},
		{503, "overloaded", Fail},
		{504, "gateway-timeout", Unknown},
	}
	for _, c := range cases {
		if got := Classify(c.status, c.problem); got != c.want {
			t.Errorf("Classify(%d, %q) = %s, want %s", c.status, c.problem, got, c.want)
		}
	}
}

func TestOpString(t *testing.T) {
	h := sample()
	got := h.Ops[1].String()
	want := `#2 p1 acme write regs/a="y" if v1 → unknown [2ms,900ms]`
	if got != want {
		t.Fatalf("String() = %s, want %s", got, want)
	}
	if got := h.Ops[4].String(); !strings.Contains(got, "not found") {
		t.Fatalf("a read of no record says %q", got)
	}
}

// FuzzDecode checks that Decode never panics, that its errors wrap a sentinel and that whatever
// it accepts encodes to a file that decodes to the same encoding (an empty list and an absent
// one are the same history).
func FuzzDecode(f *testing.F) {
	var buf bytes.Buffer
	if err := Encode(&buf, sample()); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte(`{"format":"meridian-history/1"}`))
	f.Add([]byte("{\"format\":\"meridian-history/1\"}\n{\"id\":1,\"p\":0,\"t\":\"x\",\"k\":\"changes\",\"ev\":[{\"seq\":1,\"col\":\"c\",\"rec\":\"r\",\"ver\":1}],\"i\":0,\"c\":0,\"o\":\"ok\"}\n"))
	f.Add([]byte("{\"format\":\"meridian-history/1\",\"faults\":[]}\n{\"id\":1,\"p\":0,\"t\":\"x\",\"k\":\"set-read\",\"col\":\"c\",\"els\":[],\"i\":0,\"c\":0,\"o\":\"ok\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := Decode(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode error wraps no sentinel: %v", err)
			}
			return
		}
		var out bytes.Buffer
		if err := Encode(&out, h); err != nil {
			t.Fatal(err)
		}
		first := out.String()
		again, err := Decode(&out)
		if err != nil {
			t.Fatalf("re-decoding an accepted history: %v", err)
		}
		out.Reset()
		if err := Encode(&out, again); err != nil {
			t.Fatal(err)
		}
		if out.String() != first {
			t.Fatalf("round trip changed an accepted history:\n%s\n%s", first, out.String())
		}
	})
}
