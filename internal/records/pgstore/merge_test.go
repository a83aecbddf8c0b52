package pgstore

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestMergePatch(t *testing.T) {
	// Cases from RFC 7396 Appendix A.
	tests := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
		{`{"n":12345678901234567890}`, `{"m":1}`, `{"m":1,"n":12345678901234567890}`},
	}
	for _, tt := range tests {
		var target, patch, want any
		dec := func(s string, v *any) {
			d := json.NewDecoder(strings.NewReader(s))
			d.UseNumber()
			if err := d.Decode(v); err != nil {
				t.Fatal(err)
			}
		}
		dec(tt.target, &target)
		dec(tt.patch, &patch)
		dec(tt.want, &want)
		got := mergePatch(target, patch)
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if string(gb) != string(wb) {
			t.Errorf("merge(%s, %s) = %s, want %s", tt.target, tt.patch, gb, wb)
		}
	}
}

// TestApplyPatch: a patch of the stored data object keeps numbers exact and removes members
// patched to null.
func TestApplyPatch(t *testing.T) {
	got, err := applyPatch([]byte(`{"a":1,"big":12345678901234567890,"x":{"y":1}}`), []byte(`{"a":null,"x":{"z":2}}`))
	if err != nil || string(got) != `{"big":12345678901234567890,"x":{"y":1,"z":2}}` {
		t.Fatalf("applyPatch: %s %v", got, err)
	}
}
